"""The image-to-3D pipeline types (``"512"``, ``"1024"``, ``"1024_cascade"``, ``"1536_cascade"``) as one table.

Everything a type decides lives in its `PipelineType` row, so code reads ``kind.cascade`` or ``kind.shape_flow``
instead of decoding the name. Standard library only: the command line checks ``--pipeline`` without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

# Condition tokens of DINOv3 on a 512- and a 1024-pixel image: 1 class + 4 register + (size / 16)^2 patch tokens.
CONDITION_TOKENS = {512: 1029, 1024: 4101}


@dataclass(frozen=True)
class PipelineType:
    """What one pipeline type runs (spec models.md 9.3).

    Attributes:
        name: the type's name in ``pipeline.json`` and on the command line.
        ss_resolution: the sparse-structure grid the structure flow's output is pooled to.
        resolution: the O-Voxel resolution of the result (a cascade may lower it to fit ``max_num_tokens``).
        cascade: the shape latent is sampled at 512 first, upsampled by the shape decoder, then sampled again.
        shape_flow, tex_flow: the roles of the (last) shape flow and of the texture flow.
        condition_size: pixels of the image those flows are conditioned on (the structure flow and a cascade's
            first shape flow always take 512).
        typical_tokens: latent tokens per sample of a typical asset, for the first memory plan of a run.
    """

    name: str
    ss_resolution: int
    resolution: int
    cascade: bool
    shape_flow: str
    tex_flow: str
    condition_size: int
    typical_tokens: int

    @property
    def condition_tokens(self) -> int:
        """Condition tokens per sample of the shape and texture flows."""
        return CONDITION_TOKENS[self.condition_size]

    @property
    def stages(self) -> tuple:
        """The sampling stages a run reports progress for, in order."""
        shape = ("shape_slat_lr", "shape_slat") if self.cascade else ("shape_slat",)
        return ("sparse_structure", *shape, "tex_slat")


_FLOWS_512 = dict(shape_flow="shape_slat_flow_model_512", tex_flow="tex_slat_flow_model_512", condition_size=512)
_FLOWS_1024 = dict(shape_flow="shape_slat_flow_model_1024", tex_flow="tex_slat_flow_model_1024", condition_size=1024)

TYPES = {kind.name: kind for kind in (
    PipelineType("512", ss_resolution=32, resolution=512, cascade=False, typical_tokens=2200, **_FLOWS_512),
    PipelineType("1024", ss_resolution=64, resolution=1024, cascade=False, typical_tokens=9600, **_FLOWS_1024),
    PipelineType("1024_cascade", ss_resolution=32, resolution=1024, cascade=True, typical_tokens=9600, **_FLOWS_1024),
    PipelineType("1536_cascade", ss_resolution=32, resolution=1536, cascade=True, typical_tokens=21000,
                 **_FLOWS_1024),
)}
PIPELINE_TYPES = tuple(TYPES)


def pipeline_type(name: str) -> PipelineType:
    """The row of ``name``; a ValueError naming the choices for anything else."""
    if name not in TYPES:
        raise ValueError(f"pipeline_type must be one of {PIPELINE_TYPES}, got {name!r}")
    return TYPES[name]
