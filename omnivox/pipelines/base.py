"""What the image-to-3D and texturing pipelines share: model loading by role, placement, conditioning, sampling.

`PipelineBase` owns a `ModelStore` (lazy loading, per-stage placement from a `MemoryPlan`), the DINOv3
conditioning of spec 9.2 and the structured-latent flow sampling of spec 9.3, so both pipelines run the same code.
"""

from __future__ import annotations

import warnings
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from omnivox.pipelines.config import (PipelineConfig, find_background_model, image_encoder_error,
                                      load_pipeline_config)
from omnivox.pipelines.memory import MemoryPlan, StageNeed, parse_memory, plan_memory
from omnivox.pipelines.placement import ModelStore
from omnivox.pipelines.preprocess import BackgroundRemover, BiRefNetOnnx, load_image, preprocess_image
from omnivox.pipelines.runtime import GraphedCall, RunContext
from omnivox.pipelines.samplers import FlowEulerSampler, SamplerParams
from omnivox.sparse.tensor import SparseTensor

StageCallback = Callable[[str, int, int], None]

# Default sampler settings of the released pipeline.json (spec 8.4), used where a JSON lacks an entry.
DEFAULT_SAMPLERS = {
    "sparse_structure": SamplerParams(12, 7.5, 0.7, (0.6, 1.0), 5.0),
    "shape_slat": SamplerParams(12, 7.5, 0.5, (0.6, 1.0), 3.0),
    "tex_slat": SamplerParams(12, 1.0, 0.0, (0.6, 0.9), 3.0),
}


def cpu_default_overrides(device: torch.device, dtype: Optional[torch.dtype]) -> tuple[dict, dict]:
    """Checkpoint ``args`` overrides for (flows, VAEs): float32 on the CPU (16-bit kernels are slow there)
    unless ``dtype`` is given; the released dtypes on GPUs unless ``dtype`` is given."""
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else None
    if dtype is None:
        return {}, {}
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    return {"dtype": name}, {"use_fp16": dtype == torch.float16}


class StageConditions:
    """The condition inputs of one sampling stage for ``model``: ``single`` (the image tokens ``cond``), ``null``
    (the all-zero condition of CFG's unconditional pass) and ``pair`` (both as one batch, conditional first).

    With ``prepare`` they are `PreparedCondition` objects: every block's keys and values are computed once per
    stage instead of once per network call, and zero-condition samples skip cross-attention (a constant per
    block). Without (the memory planner chunks this stage's tokens) they are plain tensors.
    """

    def __init__(self, model, cond: torch.Tensor, prepare: bool) -> None:
        self.model, self.cond, self.prepare = model, cond, prepare
        self.zeros = torch.zeros_like(cond)  # what the sampler passes as neg_cond (spec 8.3)

    @cached_property
    def single(self):
        return self.model.prepare_condition(self.cond) if self.prepare else self.cond

    @cached_property
    def null(self):
        return self.model.prepare_condition(None, num_null=self.cond.shape[0]) if self.prepare else self.zeros

    @cached_property
    def pair(self):
        return self.single.with_null(self.cond.shape[0]) if self.prepare else torch.cat([self.cond, self.zeros])


def on_device(tokens: SparseTensor, device: torch.device) -> SparseTensor:
    """``tokens`` moved to ``device`` with its per-item row layout computed first, where that needs no GPU sync."""
    tokens.layout  # noqa: B018 (fills the cache that `SparseTensor.to` carries over)
    return tokens.to(device)


class PipelineBase:
    """Models by role, their placement, and the conditioning and latent-sampling stages."""

    def __init__(self, config: PipelineConfig, *, device: Union[str, torch.device, None] = None,
                 dtype: Optional[torch.dtype] = None, max_memory=None,
                 background_remover: Optional[BackgroundRemover] = None) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.max_memory = parse_memory(max_memory)
        self.background_remover = background_remover
        self._flow_overrides, self._vae_overrides = cpu_default_overrides(self.device, dtype)
        self.models = ModelStore(self._load_role, self.device)
        self.sampler = FlowEulerSampler()
        # Guided steps run the conditional and unconditional passes as one batch on GPUs, where small token
        # counts leave the flows bound by kernel launches; on CPUs two calls cost the same and need less memory.
        self.batch_guidance = self.device.type == "cuda"
        # Structured-latent flow calls of at most `cuda_graph_max_tokens` rows replay a CUDA graph after the first
        # two calls per batch shape (`GraphedCall`): same values, without the host launch overhead that dominates
        # at a few thousand tokens (H100, 2,776 tokens: 66 -> 28 ms per call, batched CFG 100 -> 59 ms). Larger
        # calls (11K+ tokens, the dense 16^3 structure flow with batched CFG) are compute-bound there, so the
        # capture would only cost time. Not used when a stage offloads or chunks tokens (memory plans), since the
        # graphs' memory pool holds about one forward's working set; the pipeline keeps that pool (and the last
        # stage's graphs) between stages and runs (`runtime`), so no capture has to allocate device memory.
        self.cuda_graphs = self.device.type == "cuda"
        self.cuda_graph_max_tokens = 8192
        # Work of a later stage that needs no GPU sync with the current one runs inside it (image-to-3D: shape
        # decoding during texture sampling). False runs stages strictly one after another (per-stage timing).
        self.overlap_decoding = True
        # Graphs, their pool, the worker thread and the latest plan, kept between stages and runs.
        self.runtime = RunContext()

    @property
    def last_plan(self) -> Optional[MemoryPlan]:
        """Deprecated (kept for one release): the memory plan of the latest run. ``ImageTo3DPipeline.run``
        returns it with its assets (``output.plan``); `TexturingPipeline.texture_voxels` returns it too."""
        warnings.warn("pipeline.last_plan is deprecated; use the plan that run() returns (output.plan)",
                      DeprecationWarning, stacklevel=2)
        return self.runtime.last_plan

    @classmethod
    def _open_folder(cls, path, filename: str, *, device, dtype, max_memory, background_model, image_encoder,
                     model_paths):
        """The body of the pipelines' ``from_pretrained``: read ``path / filename`` and pick the background
        remover (the given one, an ``.onnx`` path, or the JSON's ``rembg_model`` found beside the weights)."""
        config = load_pipeline_config(path, filename, model_paths, image_encoder)
        if background_model is None:
            background_model = find_background_model(config)  # e.g. RMBG-2.0/onnx/model.onnx beside the weights
        remover = BiRefNetOnnx(background_model) if isinstance(background_model, (str, Path)) else background_model
        return cls(config, device=device, dtype=dtype, max_memory=max_memory, background_remover=remover)

    # ------------------------------------------------------------------------------------------ loading
    def _load_role(self, role: str) -> torch.nn.Module:
        from omnivox.models.loading import from_pretrained

        if role == "image_cond_model":
            if self.config.image_encoder is None:
                raise image_encoder_error(self.config)
            return from_pretrained(self.config.image_encoder)
        path = self.config.model_path(role)
        overrides = self._flow_overrides if "flow" in role else self._vae_overrides
        return from_pretrained(path, config_overrides=overrides or None)

    # ------------------------------------------------------------------------------------------ planning
    def _config_of(self, role: str):
        try:
            return self.models.get(role).config
        except (FileNotFoundError, KeyError):
            return None

    def _plan(self, needs: Sequence[StageNeed], budget: Optional[int]) -> MemoryPlan:
        weights = {}
        for need in needs:
            for role in need.roles:
                weights[role] = self.models.weights_bytes(role)
        return plan_memory(needs, weights, budget, str(self.device))

    @staticmethod
    def check_sampler_params(overrides: Optional[dict], stages: Sequence[str]) -> None:
        """Refuse ``sampler_params`` keys that name no sampling stage of this run (a misspelt stage was
        silently ignored before)."""
        unknown = sorted(set(overrides or {}) - set(stages))
        if unknown:
            raise ValueError(f"sampler_params: no sampling stage {unknown}; the stages are {list(stages)}")

    def sampler_params(self, stage: str, overrides: Optional[dict] = None) -> SamplerParams:
        """Defaults of ``stage`` from ``pipeline.json`` with ``overrides[stage]`` merged over them."""
        params = self.config.samplers.get(stage, DEFAULT_SAMPLERS[stage])
        extra = (overrides or {}).get(stage) or {}
        return params.replace(**extra) if extra else params

    def prepare_image(self, image, preprocess: bool) -> Image.Image:
        """The RGB picture DINOv3 sees: cropped and premultiplied (spec 9.1), or as given when not ``preprocess``."""
        if preprocess:
            return preprocess_image(image, self.background_remover)
        return (image if isinstance(image, Image.Image) else load_image(image)).convert("RGB")

    @torch.no_grad()
    def encode_image(self, image: Image.Image, size: int, offload: bool = False) -> torch.Tensor:
        """DINOv3 condition tokens ``(1, T, C) float32`` of a preprocessed RGB image at ``size`` pixels."""
        from omnivox.models.dinov3 import normalize_images

        resized = image.convert("RGB").resize((size, size), Image.LANCZOS)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with self.models.on_device(["image_cond_model"], offload) as models:
            model = models["image_cond_model"]
            dtype = next(model.parameters()).dtype
            images = normalize_images(pixels.to(self.device)).to(dtype)
            if self.cuda_graphs and self.device.type == "cuda" and not offload:
                # The input shape never changes, so one graph per size serves every run of the process (its
                # 24 layers are launch-bound at 1,029 tokens: ~47 ms eager against ~27 ms of GPU work on an H100).
                tokens = self.runtime.image_encoder_call(model)(images)
            else:
                tokens = model(images)
        return tokens.float()

    def _progress(self, callback: Optional[StageCallback], stage: str,
                  after_first_step: Optional[Callable[[], None]] = None):
        if callback is None and after_first_step is None:
            return None

        def progress(step: int, total: int) -> None:
            if step == 1 and after_first_step is not None:
                after_first_step()
            if callback is not None:
                callback(stage, step, total)
        return progress

    @torch.no_grad()
    def sample_latent(self, role: str, coords: torch.Tensor, cond: torch.Tensor, generator: torch.Generator,
                      params: SamplerParams, plan: MemoryPlan, stage: str,
                      concat_cond: Optional[torch.Tensor] = None, callback: Optional[StageCallback] = None,
                      after_first_step: Optional[Callable[[], None]] = None) -> torch.Tensor:
        """Sample a (normalised) structured latent on ``coords`` with the flow of ``role``; ``(N, C)`` float32.

        ``plan`` decides placement (``plan.offload``) and the token chunking of ``stage`` (``plan.stage(stage)``).
        ``after_first_step()`` runs once the first step's work is queued (other work to overlap the rest)."""
        token_chunk, offload = plan.stage(stage).token_chunk, plan.offload
        flow = self.models.get(role)
        channels = flow.config.in_channels - (concat_cond.shape[1] if concat_cond is not None else 0)
        coords = coords.cpu()
        num_samples = int(coords[:, 0].max()) + 1
        noise = torch.randn(coords.shape[0], channels, generator=generator)
        cond = cond.expand(num_samples, -1, -1)
        # Token sets are checked and laid out on the CPU, then moved: nothing here waits for the GPU, so this stage
        # (and a CUDA-graph capture) proceeds while the previous stage's kernels still run.
        template = on_device(SparseTensor.from_coords(coords, noise, num_samples), self.device)
        noise = template.feats
        # The same coordinate object as the tokens: the flow model then skips comparing them, a host sync that
        # would make the texture stage's CUDA-graph capture fail.
        extra = None if concat_cond is None else template.replace(concat_cond.to(self.device))
        with self.models.on_device([role], offload) as models:
            model = models[role]
            rows = len(coords)
            doubled = doubled_extra = None
            if self.batch_guidance:
                # Both CFG passes as one batch of 2 * num_samples items: the unconditional copies are items
                # num_samples .. 2 * num_samples - 1 (coords batch-major, so the order stays valid).
                shifted = coords + torch.tensor([num_samples, 0, 0, 0], dtype=coords.dtype)
                doubled = on_device(SparseTensor.from_coords(torch.cat([coords, shifted]),
                                                             torch.zeros(2 * rows, 0), 2 * num_samples), self.device)
                doubled = doubled.replace(torch.cat([noise, noise]))
                doubled_extra = None if extra is None else doubled.replace(torch.cat([extra.feats, extra.feats]))

            conditions = StageConditions(model, cond, prepare=token_chunk is None)

            def forward(feats, tvec):  # conditional samples, or both CFG passes (told apart by the row count)
                if feats.shape[0] == rows:
                    return model(template.replace(feats), tvec, conditions.single, concat_cond=extra,
                                 token_chunk=token_chunk).feats
                return model(doubled.replace(feats), tvec, conditions.pair, concat_cond=doubled_extra,
                             token_chunk=token_chunk).feats

            largest_call = rows * (2 if doubled is not None else 1)
            # A flow already captured in this process has its kernels compiled and its libraries initialised,
            # so its graphs are captured on the first call instead of after an eager warm-up call.
            graphed = (self.cuda_graphs and self.device.type == "cuda" and not offload and token_chunk is None
                       and largest_call <= self.cuda_graph_max_tokens)
            network = GraphedCall(forward, enabled=graphed, warmup=role not in self.runtime.captured_roles,
                                  pool=self.runtime.shared_graph_pool() if graphed else None)

            def velocity(x, t, condition):
                tvec = torch.full((num_samples,), 1000.0 * t, device=self.device)
                if condition is cond:
                    return network(x, tvec)
                # The unconditional pass on its own (CPU runs, where batch_guidance is off).
                return model(template.replace(x), tvec, conditions.null, concat_cond=extra,
                             token_chunk=token_chunk).feats

            pair = None
            if self.batch_guidance:
                def pair(x, t, condition, negative):
                    out = network(torch.cat([x, x]), torch.full((2 * num_samples,), 1000.0 * t, device=self.device))
                    return out[:rows], out[rows:]

            latent = self.sampler.sample(velocity, noise, cond, conditions.zeros, params,
                                         batch_index=template.batch_index, batch_size=num_samples,
                                         callback=self._progress(callback, stage, after_first_step),
                                         velocity_pair=pair)
            if network.replays:
                self.runtime.keep_graphs(role, network)
            return latent

    def _normalization(self, which: str):
        norm = self.config.shape_normalization if which == "shape" else self.config.tex_normalization
        if norm is None:
            raise ValueError(f"{self.config.root}: pipeline.json has no {which}_slat_normalization")
        return norm
