"""What the image-to-3D and texturing pipelines share: model loading by role, placement, conditioning, sampling.

`PipelineBase` owns a `ModelStore` (lazy loading, per-stage placement from a `MemoryPlan`), the DINOv3
conditioning of spec 9.2 and the structured-latent flow sampling of spec 9.3, so both pipelines run the same code.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
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
from omnivox.pipelines.preprocess import (BackgroundRemover, BiRefNetOnnx, has_transparency, load_image,
                                          preprocess_image)
from omnivox.pipelines.runtime import GraphedCall, RunContext
from omnivox.pipelines.samplers import FlowEulerSampler, SamplerParams, check_multiview_mode
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


@dataclass(frozen=True)
class MultiView:
    """How a sampling stage uses several views (see `FlowEulerSampler.sample_views`).

    Attributes:
        mode: ``"stochastic"`` or ``"multidiffusion"``.
        batched: multidiffusion evaluates every view (and, on guided steps, the shared unconditional pass) in one
            network call of ``views (+ 1)`` copies of the latent; False calls the network once per view (the
            memory plan decides: `ImageTo3DPipeline.stage_needs`).
    """

    mode: str = "stochastic"
    batched: bool = False

    def __post_init__(self) -> None:
        check_multiview_mode(self.mode)


def views_of(image, images, what: str = "run()") -> list:
    """The views of a call taking ``image`` (one) or ``images`` (several), as a list; one of them must be given."""
    if images is None:
        return [] if image is None else [image]
    if image is not None:
        raise ValueError(f"{what}: pass either image or images, not both")
    if isinstance(images, (str, Path, Image.Image)):
        raise TypeError(f"{what}: images must be a list of images or paths, got one {type(images).__name__}")
    views = list(images)
    if not views:
        raise ValueError(f"{what}: images is empty; give at least one view")
    return views


def canonical_view_order(pictures: Sequence[Image.Image]) -> list:
    """The indices of ``pictures`` sorted by their content (SHA-256 of size and pixels): multidiffusion averages
    over the views in this order, so its result does not depend on the order the user listed them in."""
    def key(index: int) -> tuple:
        picture = pictures[index]
        digest = hashlib.sha256(repr((picture.mode, picture.size)).encode() + picture.tobytes()).hexdigest()
        return digest, index
    return sorted(range(len(pictures)), key=key)


class ViewVelocities:
    """``views_velocity`` of `FlowEulerSampler.sample_views` for one stage's network.

    A call asks for the conditional predictions of some views and maybe the unconditional one. They are
    computed as one network call over stacked copies of the latent (views first, in the order asked, then the
    null condition) where `MultiView.batched` (multidiffusion) or for a guided stochastic step under batched
    guidance (``pair``: that view and the null condition, as the single-view pipeline does); otherwise one call
    per view plus one for the null condition. Each distinct call (which views, whether the null condition
    follows) gets its condition prepared once per stage and its own `GraphedCall` from ``wrap``.

    Args:
        model: the flow (its ``prepare_condition``).
        run: ``run(copies, x_stacked, tvec, condition) -> prediction`` for ``copies`` copies of the latent
            stacked along dim 0 (dense: the batch; sparse: the rows, each copy batch-major).
        cond: ``(V, T, C)`` condition tokens of the views.
        num_samples: samples per copy.
        views: the stage's `MultiView`.
        pair: batched guidance for stochastic steps.
        prepare: use prepared conditions (`StageConditions`); False when the stage's tokens are chunked.
        wrap: ``wrap(fn, copies) -> callable``, e.g. a `GraphedCall` of ``fn``; None calls ``fn`` directly.
    """

    def __init__(self, model, run: Callable, cond: torch.Tensor, num_samples: int, views: MultiView, *,
                 pair: bool, prepare: bool, wrap: Optional[Callable] = None) -> None:
        self.model, self.run, self.num_samples, self.views = model, run, num_samples, views
        self.pair, self.prepare, self.wrap = pair, prepare, wrap
        self.per_view = [cond[k:k + 1].expand(num_samples, -1, -1) for k in range(cond.shape[0])]
        self.zeros = torch.zeros_like(self.per_view[0])
        self._prepared: dict = {}
        self._conditions: dict = {}
        self.calls: dict = {}

    def condition(self, views: tuple, null: bool):
        key = (views, null)
        if key not in self._conditions:
            nulls = self.num_samples if null else 0
            if not self.prepare:
                self._conditions[key] = torch.cat([self.per_view[k] for k in views] + ([self.zeros] if null else []))
            elif not views:
                self._conditions[key] = self.model.prepare_condition(None, num_null=nulls)
            else:
                if views not in self._prepared:
                    self._prepared[views] = self.model.prepare_condition(torch.cat([self.per_view[k] for k in views]))
                self._conditions[key] = self._prepared[views].with_null(nulls)
        return self._conditions[key]

    def call(self, x: torch.Tensor, t: float, views: tuple, null: bool) -> list:
        """The predictions of ``views`` (then the null condition) for ``x``, one tensor per copy."""
        copies = len(views) + null
        self.condition(views, null)  # prepared here, outside any graph capture
        key = (views, null)
        if key not in self.calls:
            def fn(stacked, tvec, key=key, copies=copies):
                return self.run(copies, stacked, tvec, self._conditions[key])
            self.calls[key] = fn if self.wrap is None else self.wrap(fn, copies)
        stacked = x if copies == 1 else torch.cat([x] * copies)
        tvec = torch.full((copies * self.num_samples,), 1000.0 * t, device=x.device)
        return list(self.calls[key](stacked, tvec).split(x.shape[0]))

    def __call__(self, x: torch.Tensor, t: float, views: Sequence[int], unconditional: bool):
        views = tuple(views)
        batched = self.views.batched if self.views.mode == "multidiffusion" else self.pair and len(views) == 1
        if batched and views:
            out = self.call(x, t, views, unconditional)
            return out[:len(views)], (out[-1] if unconditional else None)
        v_conds = [self.call(x, t, (k,), False)[0] for k in views]
        return v_conds, (self.call(x, t, (), True)[0] if unconditional else None)

    def graphed(self) -> list:
        """The `GraphedCall` wrappers that replayed at least once."""
        return [c for c in self.calls.values() if isinstance(c, GraphedCall) and c.replays]


def on_device(tokens: SparseTensor, device: torch.device) -> SparseTensor:
    """``tokens`` moved to ``device`` with its per-item row layout computed first, where that needs no GPU sync."""
    tokens.layout  # noqa: B018 (fills the cache that `SparseTensor.to` carries over)
    return tokens.to(device)


class PipelineBase:
    """Models by role, their placement, and the conditioning and latent-sampling stages."""

    def __init__(self, config: PipelineConfig, *, device: Union[str, torch.device, None] = None,
                 dtype: Optional[torch.dtype] = None, max_memory=None,
                 background_remover: Optional[BackgroundRemover] = None, weights_dtype: Optional[str] = None) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.max_memory = parse_memory(max_memory)
        self.background_remover = background_remover
        self._flow_overrides, self._vae_overrides = cpu_default_overrides(self.device, dtype)
        self.models = ModelStore(self._load_role, self.device, weights_dtype)  # 8-bit flows: "int8", "fp8"
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
                     model_paths, weights_dtype=None):
        """The body of the pipelines' ``from_pretrained``: read ``path / filename`` and pick the background
        remover (the given one, an ``.onnx`` path, or the JSON's ``rembg_model`` found beside the weights)."""
        config = load_pipeline_config(path, filename, model_paths, image_encoder)
        if background_model is None:
            background_model = find_background_model(config)  # e.g. RMBG-2.0/onnx/model.onnx beside the weights
        remover = BiRefNetOnnx(background_model) if isinstance(background_model, (str, Path)) else background_model
        return cls(config, device=device, dtype=dtype, max_memory=max_memory, background_remover=remover,
                   weights_dtype=weights_dtype)

    # ------------------------------------------------------------------------------------------ loading
    def _load_role(self, role: str) -> torch.nn.Module:
        from omnivox.models.loading import from_pretrained, quantized_weights_path

        if role == "image_cond_model":
            if self.config.image_encoder is None:
                raise image_encoder_error(self.config)
            return from_pretrained(self.config.image_encoder)
        path = self.config.model_path(role)
        overrides = self._flow_overrides if "flow" in role else self._vae_overrides
        # A saved 8-bit copy beside the checkpoint is read as is; otherwise the store quantizes on the device.
        saved = self.models.weights_dtype if "flow" in role else None
        if saved is not None and not quantized_weights_path(path, saved).is_file():
            saved = None
        return from_pretrained(path, config_overrides=overrides or None, weights_dtype=saved)

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
        formats = {role: self.models.weights_format(role) for role in weights}
        return plan_memory(needs, weights, budget, str(self.device), formats)

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

    def prepare_views(self, views: Sequence, preprocess: bool) -> list:
        """`prepare_image` of each view, each on its own (its own background removal and crop). Without a
        background remover, every view that has no transparency is named in one error before any work."""
        if not views:
            raise ValueError("no views: give at least one image")
        if len(views) > 1 and preprocess and self.background_remover is None:
            opened = [v if isinstance(v, Image.Image) else load_image(v) for v in views]
            opaque = [k for k, v in enumerate(opened) if not has_transparency(v)]
            if opaque:
                names = ", ".join(str(k) if isinstance(views[k], Image.Image) else f"{k} ({views[k]})"
                                  for k in opaque)
                raise ValueError(f"view(s) {names} of {len(views)} have no transparent background (RGB or fully "
                                 "opaque) and no background model was given: pass RGBA images for every view, or "
                                 "a background_model (--background-model PATH.onnx)")
            views = opened
        return [self.prepare_image(view, preprocess) for view in views]

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
                      after_first_step: Optional[Callable[[], None]] = None,
                      views: Optional[MultiView] = None) -> torch.Tensor:
        """Sample a (normalised) structured latent on ``coords`` with the flow of ``role``; ``(N, C)`` float32.

        ``plan`` decides placement (``plan.offload``) and the token chunking of ``stage`` (``plan.stage(stage)``).
        ``after_first_step()`` runs once the first step's work is queued (other work to overlap the rest).
        ``cond`` is ``(V, T, C)``: with ``V > 1`` views the stage samples as ``views`` says (`MultiView`); one view
        runs exactly the single-image code."""
        token_chunk, offload = plan.stage(stage).token_chunk, plan.offload
        flow = self.models.get(role)
        channels = flow.config.in_channels - (concat_cond.shape[1] if concat_cond is not None else 0)
        coords = coords.cpu()
        num_samples = int(coords[:, 0].max()) + 1
        noise = torch.randn(coords.shape[0], channels, generator=generator)
        # Token sets are checked and laid out on the CPU, then moved: nothing here waits for the GPU, so this stage
        # (and a CUDA-graph capture) proceeds while the previous stage's kernels still run.
        template = on_device(SparseTensor.from_coords(coords, noise, num_samples), self.device)
        noise = template.feats
        # The same coordinate object as the tokens: the flow model then skips comparing them, a host sync that
        # would make the texture stage's CUDA-graph capture fail.
        extra = None if concat_cond is None else template.replace(concat_cond.to(self.device))
        if cond.shape[0] > 1:
            return self._sample_latent_views(role, coords, template, extra, cond, params, plan, stage,
                                             views or MultiView(), callback, after_first_step)
        cond = cond.expand(num_samples, -1, -1)
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

    def _sample_latent_views(self, role: str, coords: torch.Tensor, template: SparseTensor,
                             extra: Optional[SparseTensor], cond: torch.Tensor, params: SamplerParams,
                             plan: MemoryPlan, stage: str, views: MultiView, callback, after_first_step
                             ) -> torch.Tensor:
        """`sample_latent` for several views: calls over ``copies`` stacked copies of the token set."""
        token_chunk, offload = plan.stage(stage).token_chunk, plan.offload
        num_samples, rows = template.batch_size, len(coords)
        layouts = {1: (template, extra)}

        def layout(copies: int) -> tuple:
            if copies not in layouts:
                shift = torch.tensor([num_samples, 0, 0, 0], dtype=coords.dtype)
                stacked = torch.cat([coords + c * shift for c in range(copies)])
                tokens = on_device(SparseTensor.from_coords(stacked, torch.zeros(copies * rows, 0),
                                                            copies * num_samples), self.device)
                layouts[copies] = (tokens, None if extra is None else tokens.replace(torch.cat([extra.feats] * copies)))
            return layouts[copies]

        with self.models.on_device([role], offload) as models:
            model = models[role]

            def run(copies, feats, tvec, condition):
                tokens, concat = layout(copies)
                return model(tokens.replace(feats), tvec, condition, concat_cond=concat, token_chunk=token_chunk).feats

            graphed = self.cuda_graphs and self.device.type == "cuda" and not offload and token_chunk is None
            made = []

            def wrap(fn, copies):
                if not graphed or copies * rows > self.cuda_graph_max_tokens:
                    return fn
                layout(copies)  # token sets laid out before any capture
                # A later call of this stage captures at once: the first one compiled the kernels.
                warm = role in self.runtime.captured_roles or any(c.replays for c in made)
                network = GraphedCall(fn, warmup=not warm, pool=self.runtime.shared_graph_pool())
                made.append(network)
                return network

            velocities = ViewVelocities(model, run, cond, num_samples, views, pair=self.batch_guidance,
                                        prepare=token_chunk is None, wrap=wrap)
            latent = self.sampler.sample_views(velocities, template.feats, cond.shape[0], params, views.mode,
                                               batch_index=template.batch_index, batch_size=num_samples,
                                               callback=self._progress(callback, stage, after_first_step))
            replayed = velocities.graphed()
            if replayed:
                self.runtime.keep_graphs(role, *replayed)
            return latent

    def _normalization(self, which: str):
        norm = self.config.shape_normalization if which == "shape" else self.config.tex_normalization
        if norm is None:
            raise ValueError(f"{self.config.root}: pipeline.json has no {which}_slat_normalization")
        return norm
