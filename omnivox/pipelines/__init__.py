"""TRELLIS.2 pipelines: image -> textured 3D asset, and mesh + image -> PBR material.

    samplers      rectified-flow Euler sampling, CFG with rescale and interval (spec models.md 8)
    preprocess    image preprocessing and background removal (spec 9.1)
    types         the pipeline types ("512", "1024", "1024_cascade", "1536_cascade") as one table
    image_to_3d   `ImageTo3DPipeline` (spec 9.3) returning `omnivox.ovoxel.asset.OVoxel` assets
    texturing     `TexturingPipeline` (spec 9.6)
    memory        the memory planner (`plan_memory`, `MemoryPlan`)
    intermediates a run's state (`RunState`), saving / resuming its stages
    testing       `make_test_pipeline`: tiny random-weight pipelines in the official layout

Example:
    >>> from omnivox.pipelines import ImageTo3DPipeline                              # doctest: +SKIP
    >>> pipe = ImageTo3DPipeline.from_pretrained("TRELLIS.2-4B", max_memory="16GB")   # doctest: +SKIP
    >>> pipe.run("chair.png", seed=1)[0].to_glb("chair.glb")                          # doctest: +SKIP
"""

from typing import TYPE_CHECKING

from omnivox._lazy import lazy_exports

# Public name -> submodule, imported on first use (see omnivox._lazy), so that a light submodule (or a command
# line that only checks its arguments) does not load every model.
_EXPORTS = {
    "Generated": "generated",  # deprecated alias of omnivox.ovoxel.asset.OVoxel
    "ImageTo3DPipeline": "image_to_3d",
    "MemoryPlan": "memory",
    "StagePlan": "memory",
    "parse_memory": "memory",
    "plan_memory": "memory",
    "BackgroundRemover": "preprocess",
    "BiRefNetOnnx": "preprocess",
    "preprocess_image": "preprocess",
    "FlowEulerSampler": "samplers",
    "Guidance": "samplers",
    "SamplerParams": "samplers",
    "euler_timesteps": "samplers",
    "make_test_pipeline": "testing",
    "TexturingPipeline": "texturing",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from omnivox.ovoxel.asset import OVoxel as Generated
    from omnivox.pipelines.image_to_3d import ImageTo3DPipeline
    from omnivox.pipelines.memory import MemoryPlan, StagePlan, parse_memory, plan_memory
    from omnivox.pipelines.preprocess import BackgroundRemover, BiRefNetOnnx, preprocess_image
    from omnivox.pipelines.samplers import FlowEulerSampler, Guidance, SamplerParams, euler_timesteps
    from omnivox.pipelines.testing import make_test_pipeline
    from omnivox.pipelines.texturing import TexturingPipeline
