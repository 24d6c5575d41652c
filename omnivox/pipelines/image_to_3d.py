"""Image -> 3D asset: `ImageTo3DPipeline` (spec models.md 9.3), for the released TRELLIS.2 weights.

Stages (all noise drawn on one CPU `torch.Generator` seeded with ``seed``, in the reference's order, so a seed gives
the reference's noise): DINOv3 condition tokens -> sparse structure (dense flow + SS decoder) -> shape latent (one
flow, or the cascade: 512 flow, decoder upsampling, 1024 flow) -> material latent (texture flow with the shape
latent as ``concat_cond``) -> decoding (shape decoder, material decoder guided by its subdivisions) -> `OVoxel`.

Differences from the reference, all deliberate:

* **num_samples > 1 works** (spec 12.5): the condition is repeated per sample and all samples run as one
  batch; each sample's noise is drawn in the same order as a single run would draw it, batch first.
* **Token limit per sample.** The cascade lowers the high-resolution grid (1536 -> 1408 -> ... -> 1024) until
  the largest sample has fewer than ``max_num_tokens`` tokens (the reference counts the whole batch, which it
  only ever runs at size 1).
* **Intermediates and resume.** ``save_intermediates=DIR`` writes the condition tokens, the sparse structure,
  the shape and material latents (safetensors, with the generator state at that point) and one ``.vxz`` per
  sample; ``resume_from=DIR`` (or one of those files) restarts after the latest stage found there and gives
  the same result as the uninterrupted run. Nothing is ever unpickled.
* **Memory.** A `MemoryPlan` (``max_memory``) decides placement and chunking instead of a ``low_vram`` flag;
  ``pipeline.plan(...)`` shows it, and ``run`` returns the one it used with the assets (``output.plan``).
* **No global RNG.** ``torch.manual_seed`` is never called; a private generator is (or the caller's
  ``generator=``).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from omnivox.ovoxel.asset import PBR_SLICES, OVoxel, orient_mesh, unoriented_mesh
from omnivox.pipelines.base import (DEFAULT_SAMPLERS, MultiView, PipelineBase, StageCallback, StageConditions,
                                    ViewVelocities, canonical_view_order, views_of)
from omnivox.pipelines.intermediates import IntermediateWriter, RunState, load_intermediates
from omnivox.pipelines.memory import (MemoryPlan, decoder_stage, flow_stage, image_encoder_stage,
                                      parse_memory, ss_decoder_stage)
from omnivox.pipelines.placement import capped_device_memory, memory_held_outside
from omnivox.pipelines.preprocess import BackgroundRemover
from omnivox.pipelines.samplers import SamplerParams, check_multiview_mode
from omnivox.pipelines.types import TYPES, PipelineType, pipeline_type as type_named
from omnivox.sparse.tensor import SparseTensor

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

MAX_NUM_TOKENS = 49152
# Read from the `omnivox.pipelines.types` table (kept as dicts for callers of these module names).
SS_RESOLUTION = {name: kind.ss_resolution for name, kind in TYPES.items()}
TARGET_RESOLUTION = {name: kind.resolution for name, kind in TYPES.items()}
LATENT_DOWNSAMPLING = 16


@dataclass
class ShapeDecoding:
    """`ImageTo3DPipeline.decode_shape`'s result: the latent coordinates (device), the shape decoder's output,
    each sample's rows in it, and the future of each sample's oriented ``(vertices, faces)``."""

    latent_coords: torch.Tensor
    shape: object
    rows: list
    meshes: Future
    resolution: int


class ImageTo3DOutput(list):
    """What `ImageTo3DPipeline.run` returns: the assets, one `OVoxel` per sample (it is that list, so
    ``run(...)[0]`` is the first asset), and ``plan``, the `MemoryPlan` the run used (None when it only read a
    finished ``.vxz`` back)."""

    def __init__(self, assets, plan: Optional[MemoryPlan]) -> None:
        super().__init__(assets)
        self.plan = plan

    @property
    def assets(self) -> list:
        return list(self)


class ImageTo3DPipeline(PipelineBase):
    """TRELLIS.2 image-to-3D. Build with `from_pretrained`; call `run`.

    Example:
        >>> pipe = ImageTo3DPipeline.from_pretrained("TRELLIS.2-4B", max_memory="16GB")   # doctest: +SKIP
        >>> asset = pipe.run(Image.open("chair.png"), seed=1)[0]                          # doctest: +SKIP
        >>> asset.to_glb("chair.glb")                                                     # doctest: +SKIP
    """

    @classmethod
    def from_pretrained(cls, path: PathLike, *, device=None, dtype: Optional[torch.dtype] = None, max_memory=None,
                        background_model: Union[PathLike, BackgroundRemover, None] = None,
                        image_encoder: Optional[PathLike] = None, model_paths: Optional[dict] = None,
                        weights_dtype: Optional[str] = None) -> "ImageTo3DPipeline":
        """Open a weights folder holding ``pipeline.json`` (e.g. a download of ``microsoft/TRELLIS.2-4B``).

        Args:
            path: the folder.
            device: compute device (default CUDA when available).
            dtype: run every model in this dtype (default: the released dtypes on GPUs, float32 on the CPU).
            max_memory: device memory budget of the pipeline (``"16GB"``, bytes, or None for unlimited); what the
                process already holds on the device for other things is not counted; see `plan`.
            background_model: an ``.onnx`` BiRefNet/RMBG export or a `BackgroundRemover`, for RGB inputs
                (default: the ``rembg_model`` of ``pipeline.json``, ``RMBG-2.0/onnx/model.onnx``, when it was
                downloaded beside the weights; else RGB inputs raise an error listing the options).
            image_encoder: the DINOv3 folder, if not found beside the weights (`config` explains where it looks).
            model_paths: role -> checkpoint path overrides.
            weights_dtype: ``"int8"`` or ``"fp8"`` (GPUs with fp8 matrix units): the flow models' block weights
                and DINOv3's layer weights in 8 bits, half (flows) and a quarter (DINOv3, float32) of their memory
                (`omnivox.models.quantize`; flows read from ``NAME.int8.safetensors`` when saved beside the
                checkpoint, else quantized on the device when loaded). None: the released dtypes.

        Models are loaded when first used (memory-mapped where possible).
        """
        return cls._open_folder(path, "pipeline.json", device=device, dtype=dtype, max_memory=max_memory,
                                background_model=background_model, image_encoder=image_encoder,
                                model_paths=model_paths, weights_dtype=weights_dtype)

    def stage_needs(self, pipeline_type: str, num_samples: int, ss_tokens: int, latent_tokens: int,
                    lr_tokens: Optional[int] = None, *, num_views: int = 1, multiview_mode: str = "stochastic",
                    batch_views: Optional[bool] = None) -> list:
        """The stages of a run with the given token counts (all samples together), for `plan_memory`.

        With ``num_views > 1`` each flow stage holds every view's prepared condition (``num_views`` condition
        sets), and multidiffusion with ``batch_views`` (default: `batch_guidance`) runs the views as one batch:
        ``num_views + 1`` copies of the tokens on the guided stages (the views and the shared unconditional
        pass) and ``num_views`` on the texture stage, instead of 2 and 1. Looped multidiffusion and stochastic
        runs hold one call's rows at a time, as a single-image run does."""
        kind = type_named(pipeline_type)
        if not isinstance(num_views, int) or num_views < 1:
            raise ValueError(f"num_views must be a positive int, got {num_views!r}")
        check_multiview_mode(multiview_mode)
        width = self._flow_width()
        dec_width = self._decoder_width()
        cond_tokens = kind.condition_tokens
        guided = 2 if self.batch_guidance else 1  # guided flows run cond + uncond as one batch
        plain = 1
        if batch_views is None:
            batch_views = self.batch_guidance
        if num_views > 1 and multiview_mode == "multidiffusion":
            guided, plain = (num_views + 1, num_views) if batch_views else (1, 1)
        conds = num_views * num_samples  # condition sets held during a flow stage
        needs = [image_encoder_stage(("image_cond_model",), cond_tokens, self._encoder_width()),
                 flow_stage("sparse_structure", ("sparse_structure_flow_model",), guided * num_samples * ss_tokens,
                            width, conds * 1029),
                 ss_decoder_stage(("sparse_structure_decoder",), dec_width / 1024)]
        if kind.cascade:
            lr = lr_tokens if lr_tokens is not None else latent_tokens
            needs.append(flow_stage("shape_slat_lr", ("shape_slat_flow_model_512",), guided * lr, width,
                                    conds * 1029))
            needs.append(decoder_stage("upsample", ("shape_slat_decoder",), lr, dec_width))
        needs.append(flow_stage("shape_slat", (kind.shape_flow,), guided * latent_tokens, width,
                                conds * cond_tokens))
        needs.append(flow_stage("tex_slat", (kind.tex_flow,), plain * latent_tokens, width, conds * cond_tokens))
        needs.append(decoder_stage("decode", ("shape_slat_decoder", "tex_slat_decoder"), latent_tokens, dec_width))
        return needs

    def _flow_width(self) -> int:
        config = self._config_of("sparse_structure_flow_model")
        return config.model_channels if config is not None else 1536

    def _decoder_width(self) -> int:
        config = self._config_of("shape_slat_decoder")
        return config.model_channels[0] if config is not None else 1024

    def _encoder_width(self) -> int:
        config = self._config_of("image_cond_model")
        return config.hidden_size if config is not None else 1024

    def plan(self, pipeline_type: Optional[str] = None, num_samples: int = 1, *, latent_tokens: int = 9600,
             ss_tokens: int = 4096, lr_tokens: Optional[int] = None, max_memory=None, num_views: int = 1,
             multiview_mode: str = "stochastic") -> MemoryPlan:
        """The memory plan for a run with these token counts (``latent_tokens`` for all samples together;
        ~2.2K per sample at 512, ~9.6K at 1024 are typical) and ``num_views`` views (`stage_needs`; for
        multidiffusion, the plan of the batched views where it fits without offloading or chunking, else that
        of one call per view, as `run` chooses).

        Example:
            >>> print(pipe.plan("1024_cascade", max_memory="16GB"))        # doctest: +SKIP
        """
        kind = self._check_type(pipeline_type)
        budget = parse_memory(max_memory) if max_memory is not None else self.max_memory
        return self._views_plan(kind.name, num_samples, ss_tokens, latent_tokens, lr_tokens, budget, num_views,
                                multiview_mode)[0]

    def _views_plan(self, pipeline_type: str, num_samples: int, ss_tokens: int, latent_tokens: int,
                    lr_tokens: Optional[int], budget: Optional[int], num_views: int, mode: str
                    ) -> tuple[MemoryPlan, MultiView]:
        """The plan and the `MultiView` of a stage: multidiffusion batches the views where that plan needs no
        offloading and no token chunking (both cost more than one call per view), else it loops over them."""
        def planned(batch_views: bool) -> MemoryPlan:
            return self._plan(self.stage_needs(pipeline_type, num_samples, ss_tokens, latent_tokens, lr_tokens,
                                               num_views=num_views, multiview_mode=mode, batch_views=batch_views),
                              budget)

        if num_views > 1 and mode == "multidiffusion" and self.batch_guidance:
            plan = planned(True)
            if not plan.offload and all(stage.token_chunk is None for stage in plan.stages):
                return plan, MultiView(mode, batched=True)
            return planned(False), MultiView(mode, batched=False)
        return planned(False), MultiView(mode, batched=False)

    def _check_type(self, pipeline_type: Optional[str]) -> PipelineType:
        return type_named(pipeline_type or self.config.default_pipeline_type)

    # ------------------------------------------------------------------------------------------ stages
    @torch.no_grad()
    def sample_sparse_structure(self, cond: torch.Tensor, ss_resolution: int, num_samples: int,
                                generator: torch.Generator, params: SamplerParams, plan: MemoryPlan,
                                callback: Optional[StageCallback] = None, views: Optional[MultiView] = None
                                ) -> torch.Tensor:
        """Sparse structure: ``(N, 4) int32`` voxels ``(b, x, y, z)`` on the ``ss_resolution`` grid (spec 9.3).
        ``cond`` is ``(V, T, C)``; several views sample as ``views`` says (`MultiView`)."""
        roles = ("sparse_structure_flow_model", "sparse_structure_decoder")
        flow = self.models.get(roles[0])
        r, c = flow.config.resolution, flow.config.in_channels
        noise = torch.randn(num_samples, c, r, r, r, generator=generator).to(self.device)
        if cond.shape[0] > 1:
            latent = self._sample_structure_views(noise, cond, params, plan, views or MultiView(), callback)
        else:
            latent = self._sample_structure_latent(noise, cond.expand(num_samples, -1, -1), params, plan, callback)
        with self.models.on_device(roles[1:], plan.offload) as models:
            decoder = models[roles[1]]
            occupancy = decoder(latent) > 0
        if ss_resolution != occupancy.shape[-1]:
            factor = occupancy.shape[-1] // ss_resolution
            occupancy = F.max_pool3d(occupancy.float(), factor, factor) > 0.5
        coords = torch.argwhere(occupancy[:, 0]).to(torch.int32)
        self._check_nonempty(coords, num_samples, "sparse structure")
        return coords.cpu()

    def _sample_structure_views(self, noise: torch.Tensor, cond: torch.Tensor, params: SamplerParams,
                                plan: MemoryPlan, views: MultiView, callback) -> torch.Tensor:
        role, token_chunk = "sparse_structure_flow_model", plan.stage("sparse_structure").token_chunk
        with self.models.on_device([role], plan.offload) as models:
            model = models[role]

            def run(copies, x, tvec, condition):
                return model(x, tvec, condition, token_chunk=token_chunk)

            velocities = ViewVelocities(model, run, cond, noise.shape[0], views, pair=self.batch_guidance,
                                        prepare=token_chunk is None)
            return self.sampler.sample_views(velocities, noise, cond.shape[0], params, views.mode,
                                             callback=self._progress(callback, "sparse_structure"))

    def _sample_structure_latent(self, noise: torch.Tensor, cond: torch.Tensor, params: SamplerParams,
                                 plan: MemoryPlan, callback) -> torch.Tensor:
        roles = ("sparse_structure_flow_model",)
        num_samples = noise.shape[0]
        stage = plan.stage("sparse_structure")
        with self.models.on_device(roles[:1], plan.offload) as models:
            model = models[roles[0]]

            conditions = StageConditions(model, cond, prepare=stage.token_chunk is None)

            def velocity(x, t, condition):
                tvec = torch.full((num_samples,), 1000.0 * t, device=self.device)
                return model(x, tvec, conditions.single if condition is cond else conditions.null,
                             token_chunk=stage.token_chunk)

            def pair(x, t, condition, negative):  # both CFG passes in one batch (see PipelineBase.batch_guidance)
                out = model(torch.cat([x, x]), torch.full((2 * num_samples,), 1000.0 * t, device=self.device),
                            conditions.pair, token_chunk=stage.token_chunk)
                return out[:num_samples], out[num_samples:]

            return self.sampler.sample(velocity, noise, cond, conditions.zeros, params,
                                       callback=self._progress(callback, "sparse_structure"),
                                       velocity_pair=pair if self.batch_guidance else None)

    @staticmethod
    def _check_nonempty(coords: torch.Tensor, num_samples: int, what: str) -> None:
        counts = torch.bincount(coords[:, 0].long().cpu(), minlength=num_samples)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            raise RuntimeError(f"the {what} of sample(s) {empty} is empty: nothing to generate (try another seed)")

    @torch.no_grad()
    def cascade_coords(self, lr_coords: torch.Tensor, lr_feats: torch.Tensor, target: int, max_num_tokens: int,
                       plan: MemoryPlan) -> tuple[torch.Tensor, int]:
        """Upsample a low-resolution shape latent 4 times with the shape decoder and re-quantise its voxels
        onto the ``hr_res / 16`` latent grid, lowering ``hr_res`` by 128 until every sample has fewer than
        ``max_num_tokens`` tokens or it reaches 1024 (spec 9.3 cascade steps 2-3)."""
        num_samples = int(lr_coords[:, 0].max()) + 1
        with self.models.on_device(["shape_slat_decoder"], plan.offload) as models:
            decoder = models["shape_slat_decoder"]
            latent = SparseTensor.from_coords(lr_coords.to(self.device), lr_feats.to(self.device), num_samples)
            fine = decoder.upsample(latent, decoder.num_upsamplings)
        fine_size = 32 * (1 << decoder.num_upsamplings)  # the cascade's low-resolution latent grid is 32^3 (512^3)
        hr_res, first = target, None
        while True:
            q = ((fine[:, 1:].float() + 0.5) / fine_size * (hr_res // LATENT_DOWNSAMPLING)).int()
            coords = torch.unique(torch.cat([fine[:, :1], q], dim=1), dim=0)
            largest = int(torch.bincount(coords[:, 0].long(), minlength=num_samples).max())
            first = largest if first is None else first
            if largest < max_num_tokens or hr_res <= 1024:
                break
            hr_res -= 128
        if hr_res != target:
            logger.warning("cascade: %d tokens at %d would exceed max_num_tokens=%d; using resolution %d (%d tokens)",
                           first, target, max_num_tokens, hr_res, largest)
        return coords.to(torch.int32).cpu(), hr_res

    @torch.no_grad()
    def decode_shape(self, shape_coords: torch.Tensor, shape_feats: torch.Tensor, resolution: int,
                     plan: MemoryPlan) -> "ShapeDecoding":
        """The first half of decoding (spec 9.3 "Decoding"): the shape decoder, then each sample's mesh,
        extracted on the device at once and oriented on a worker thread. The orientation is CPU work, so it
        overlaps whatever the GPU runs next (in `run`, the texture stage); `decode_material` collects it."""
        stage = plan.stage("decode")
        num_samples = int(shape_coords[:, 0].max()) + 1
        latent = SparseTensor.from_coords(shape_coords.to(self.device), shape_feats.to(self.device), num_samples)
        with self.models.on_device(["shape_slat_decoder"], plan.offload) as models:
            decoder = models["shape_slat_decoder"]
            shape = decoder(latent, chunk_voxels=stage.chunk_voxels, resolution=int(resolution))
        counts = torch.bincount(shape.coords[:, 0].long(), minlength=num_samples).tolist()
        starts = np.cumsum([0] + counts)
        rows = [slice(int(starts[b]), int(starts[b + 1])) for b in range(num_samples)]  # batch-major blocks
        unoriented = [unoriented_mesh(shape.coords[r, 1:], shape.vertices[r], shape.intersected[r], int(resolution),
                                      shape.split_weights[r]) for r in rows]
        meshes = self.runtime.worker().submit(lambda: [orient_mesh(*mesh) for mesh in unoriented])
        return ShapeDecoding(latent.coords, shape, rows, meshes, int(resolution))

    @torch.no_grad()
    def decode_material(self, decoded: "ShapeDecoding", tex_feats: torch.Tensor, plan: MemoryPlan) -> list:
        """The second half: the material decoder on the shape decoder's voxels; one `OVoxel` per sample."""
        shape = decoded.shape
        with self.models.on_device(["tex_slat_decoder"], plan.offload) as models:
            material = models["tex_slat_decoder"](
                SparseTensor.from_coords(decoded.latent_coords, tex_feats.to(self.device), len(decoded.rows)),
                guide_subdivisions=shape.subdivision_logits, chunk_voxels=plan.stage("decode").chunk_voxels)
        if not torch.equal(material.voxels.coords, shape.coords):
            raise RuntimeError("internal: the material decoder did not follow the shape decoder's voxels")
        pbr = (material.voxels.feats.float() * 0.5 + 0.5).clamp(0, 1)
        results = []
        for rows, mesh in zip(decoded.rows, decoded.meshes.result()):
            item = pbr[rows]
            attributes = {name: item[:, columns] for name, columns in PBR_SLICES.items()}
            results.append(OVoxel.from_dual_grid(shape.coords[rows, 1:], shape.vertices[rows],
                                                    shape.intersected[rows], attributes, decoded.resolution,
                                                    shape.split_weights[rows], mesh=mesh))
        return results

    # ------------------------------------------------------------------------------------------ run
    def run(self, image=None, *, images: Optional[Sequence] = None, multiview_mode: Optional[str] = None,
            seed: int = 0, generator: Optional[torch.Generator] = None,
            pipeline_type: Optional[str] = None, num_samples: int = 1,
            sampler_params: Optional[dict] = None, sparse_structure=None,
            callback: Optional[StageCallback] = None, save_intermediates: Optional[PathLike] = None,
            resume_from: Optional[PathLike] = None, preprocess: bool = True,
            max_num_tokens: int = MAX_NUM_TOKENS, max_memory=None) -> ImageTo3DOutput:
        """Generate ``num_samples`` assets from one image, or from several views of one object.

        Args:
            image: PIL image or image path (RGBA with alpha, or RGB with a background remover); may be None
                when resuming from a stage after the condition.
            images: instead of ``image``, several views of one object (a list of images or paths; passing both
                is an error). Each is preprocessed on its own; every sampling stage is conditioned on all of
                them as ``multiview_mode`` says (docs/multiview.md). One view gives exactly the ``image`` result.
            multiview_mode: ``"stochastic"`` (default): the views condition the steps in turn, step ``i`` of
                every stage on view ``i mod V`` (the cost of one image); ``"multidiffusion"``: every step
                averages the guided predictions of all views (V conditional passes per step, batched in one
                call where the memory plan allows), and the views' order does not matter.
            seed: seeds the private CPU generator that draws all noise (when no ``generator`` is given).
            generator: a CPU ``torch.Generator`` to draw all noise from instead (``seed`` is then only recorded
                in saved intermediates).
            pipeline_type: ``'512'``, ``'1024'``, ``'1024_cascade'`` (default of the released JSON) or
                ``'1536_cascade'`` (`omnivox.pipelines.types`).
            num_samples: independent samples of the same image (one batch).
            sampler_params: per-stage overrides, e.g. ``{"shape_slat": {"steps": 20}}`` (stages:
                ``sparse_structure``, ``shape_slat``, ``tex_slat``; any other key is an error).
            sparse_structure: skip stage 1 with these voxels: ``(N, 3)`` (replicated per sample) or ``(N, 4)``
                ``(b, x, y, z)`` ints on the sparse-structure grid (32^3 for '512' and the cascades, 64^3
                for '1024').
            callback: ``callback(stage, step, total)`` after every sampler step.
            save_intermediates: folder to write the intermediates to (module docstring).
            resume_from: folder (or one intermediate file, or a ``.vxz``) to resume from.
            preprocess: crop/premultiply the image (spec 9.1); False feeds it to DINOv3 as it is.
            max_num_tokens: cascade token limit per sample.
            max_memory: overrides the pipeline's budget for this run.

        Returns:
            `ImageTo3DOutput`: one `OVoxel` per sample (a list), and ``.plan``, the memory plan used.
        """
        # 1. Check the inputs that need no model.
        self._check_inputs(num_samples, sampler_params, generator)
        views = views_of(image, images)
        if multiview_mode is not None:
            check_multiview_mode(multiview_mode)
        # 2. The run's state: fresh, or what ``resume_from`` holds.
        state = None
        if resume_from is not None:
            state = load_intermediates(resume_from)
            if pipeline_type is not None and pipeline_type != state.pipeline_type and state.shape_coords is not None:
                raise ValueError(f"{resume_from} holds a {state.pipeline_type!r} run; cannot continue it as "
                                 f"{pipeline_type!r}")
            if multiview_mode is not None and state.multiview_mode is not None \
                    and multiview_mode != state.multiview_mode:
                raise ValueError(f"{resume_from} holds a {state.multiview_mode!r} multi-view run; cannot continue "
                                 f"it as {multiview_mode!r}")
            if state.generated is not None:
                return ImageTo3DOutput(state.generated, None)
            pipeline_type, num_samples = state.pipeline_type, state.num_samples
            multiview_mode = multiview_mode or state.multiview_mode
        kind = self._check_type(pipeline_type)
        if state is None:
            state = RunState(kind.name, int(seed), num_samples)
        state.pipeline_type = kind.name
        mode = multiview_mode or "stochastic"
        if generator is None:
            generator = torch.Generator().manual_seed(state.seed)
        if state.rng_state is not None:
            generator.set_state(state.rng_state)
        budget = parse_memory(max_memory) if max_memory is not None else self.max_memory
        writer = IntermediateWriter(save_intermediates, state) if save_intermediates is not None else None

        # 3. A first plan from typical counts decides placement for the condition and sparse-structure stages;
        # each later stage is re-planned with its real token counts.
        num_views = state.cond_512.shape[0] if state.cond_512 is not None else max(1, len(views))
        if num_views > 1:
            state.multiview_mode = mode
            if mode == "stochastic":
                for name in DEFAULT_SAMPLERS:
                    steps = self.sampler_params(name, sampler_params).steps
                    if steps < num_views:
                        logger.warning("stochastic multi-view: %s has %d steps for %d views; views %s never "
                                       "condition it", name, steps, num_views, list(range(steps, num_views)))

        def replan(latent_tokens: int, lr_tokens: Optional[int]) -> tuple[MemoryPlan, MultiView]:
            return self._views_plan(kind.name, num_samples, 4096, latent_tokens, lr_tokens, budget, num_views, mode)

        plan, multiview = replan(kind.typical_tokens * num_samples, 2200 * num_samples)
        plan.check_budget()  # a budget no plan meets: BudgetError (what it would need) before any work
        self.runtime.last_plan = plan

        # The allocator holds to the budget, reserved memory included (it returns cached blocks before it would
        # pass it), so the plan is a promise rather than an estimate.
        with capped_device_memory(self.device, budget, memory_held_outside(self.models)):
            # 4. Condition tokens (one row per view).
            if state.cond_512 is None:
                if not views:
                    raise ValueError("run() needs an image (or resume_from a folder with the condition tokens)")
                pictures = self.prepare_views(views, preprocess)
                if mode == "multidiffusion" and len(pictures) > 1:
                    pictures = [pictures[k] for k in canonical_view_order(pictures)]
                state.cond_512 = self._encode_views(pictures, 512, plan.offload)
                if kind.condition_size == 1024:
                    state.cond_1024 = self._encode_views(pictures, 1024, plan.offload)
                if writer:
                    writer.condition(generator)
            elif kind.condition_size == 1024 and state.cond_1024 is None:
                raise ValueError(f"the saved condition has no 1024-pixel tokens; {kind.name!r} needs them")
            conditions = {512: state.cond_512.to(self.device),
                          1024: state.cond_1024.to(self.device) if state.cond_1024 is not None else None}

            # 5. Sparse structure.
            if state.ss_coords is None:
                if sparse_structure is not None:
                    state.ss_coords = self._given_structure(sparse_structure, kind.ss_resolution, num_samples)
                else:
                    state.ss_coords = self.sample_sparse_structure(
                        conditions[512], kind.ss_resolution, num_samples, generator,
                        self.sampler_params("sparse_structure", sampler_params), plan, callback, multiview)
                state.ss_resolution = kind.ss_resolution
                if writer:
                    writer.sparse_structure(generator)

            # 6. Shape latent (for a cascade: at 512, upsampled, then at the target resolution).
            if state.shape_coords is None:
                shape_params = self.sampler_params("shape_slat", sampler_params)
                norm = self._normalization("shape")
                coords = state.ss_coords
                if kind.cascade:
                    plan, multiview = replan(len(coords), len(coords))
                    lr = self.sample_latent("shape_slat_flow_model_512", coords, conditions[512], generator,
                                            shape_params, plan, "shape_slat_lr", callback=callback,
                                            views=multiview)
                    lr = norm.denormalize(lr)
                    coords, resolution = self.cascade_coords(coords, lr, kind.resolution, max_num_tokens, plan)
                    plan, multiview = replan(len(coords), len(state.ss_coords))
                else:
                    resolution = kind.resolution
                    plan, multiview = replan(len(coords), None)
                feats = self.sample_latent(kind.shape_flow, coords, conditions[kind.condition_size], generator,
                                           shape_params, plan, "shape_slat", callback=callback, views=multiview)
                state.shape_coords, state.shape_feats = coords, norm.denormalize(feats)
                state.resolution = int(resolution)
                if writer:
                    writer.shape_latent(generator)

            # 7. Material latent, and decoding.
            plan, multiview = replan(len(state.shape_coords), None)
            self.runtime.last_plan = plan
            decoded = []

            def decode_shape() -> None:
                decoded.append(self.decode_shape(state.shape_coords, state.shape_feats, state.resolution, plan))

            if state.tex_feats is None:
                shape_norm, tex_norm = self._normalization("shape"), self._normalization("tex")
                # Shape decoding runs inside the texture stage, once its first step is queued: the stage's set-up
                # and graph capture then overlap the shape stage's last kernels, and the mesh orientation (CPU,
                # worker thread) overlaps the remaining texture steps. Not with offloading, which holds one stage's
                # models on the device at a time.
                overlap = self.overlap_decoding and not plan.offload
                feats = self.sample_latent(kind.tex_flow, state.shape_coords, conditions[kind.condition_size],
                                           generator, self.sampler_params("tex_slat", sampler_params), plan,
                                           "tex_slat",
                                           concat_cond=shape_norm.normalize(state.shape_feats), callback=callback,
                                           after_first_step=decode_shape if overlap else None, views=multiview)
                state.tex_feats = tex_norm.denormalize(feats)
                if writer:
                    writer.material_latent(generator)
            if not decoded:
                decode_shape()
            results = self.decode_material(decoded[0], state.tex_feats, plan)
            if writer:
                writer.generated(results)
            # No gc.collect() here: a run leaves no tensors in reference cycles (tests/pipelines/test_image_to_3d.py),
            # and a full collection costs ~0.15 s per run in a process holding the models.
            return ImageTo3DOutput(results, plan)

    @staticmethod
    def _check_inputs(num_samples, sampler_params: Optional[dict], generator: Optional[torch.Generator]) -> None:
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        PipelineBase.check_sampler_params(sampler_params, tuple(DEFAULT_SAMPLERS))
        if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
            raise ValueError(f"generator must be a CPU torch.Generator (all noise is drawn on the CPU), got "
                             f"{generator!r}")

    def _encode_views(self, pictures: list, size: int, offload: bool) -> torch.Tensor:
        """``(V, T, C)`` condition tokens of the views at ``size`` pixels (one view: `encode_image`'s own result)."""
        tokens = [self.encode_image(picture, size, offload) for picture in pictures]
        return tokens[0] if len(tokens) == 1 else torch.cat(tokens)

    @staticmethod
    def _given_structure(structure, ss_res: int, num_samples: int) -> torch.Tensor:
        coords = torch.as_tensor(np.asarray(structure)).to(torch.int64)
        if coords.dim() != 2 or coords.shape[1] not in (3, 4) or coords.shape[0] == 0:
            raise ValueError(f"sparse_structure must be a non-empty (N, 3) or (N, 4) int array, got "
                             f"{tuple(coords.shape)}")
        if coords.shape[1] == 3:
            coords = torch.cat([torch.cat([torch.full((len(coords), 1), b), coords], 1) for b in range(num_samples)])
        xyz = coords[:, 1:]
        if xyz.min() < 0 or xyz.max() >= ss_res:
            raise ValueError(f"sparse_structure voxels must lie in [0, {ss_res}) for this pipeline type, got "
                             f"[{int(xyz.min())}, {int(xyz.max())}]")
        if int(coords[:, 0].max()) + 1 != num_samples or coords[:, 0].min() < 0:
            raise ValueError(f"sparse_structure batch column must cover samples 0..{num_samples - 1}")
        return torch.unique(coords, dim=0).to(torch.int32)
