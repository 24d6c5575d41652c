"""The data toolkit: a folder of raw assets -> a dataset root the trainers read (``omnivox data ...``).

Stages (each resumable, idempotent and shardable with ``rank`` / ``world_size``; see `omnivox.data.runner`):
    index    -- `omnivox.data.index.run_index`: hash and describe raw files -> ``<ROOT>/metadata.csv``
    convert  -- `omnivox.data.convert.run_convert`: O-Voxels (geometry + material) and mesh dumps
    render   -- `omnivox.data.render.run_render`: RGBA condition views
    encode   -- `omnivox.data.encode.run_encode`: shape / material latents with a VAE checkpoint
    stats    -- `omnivox.data.stats.dataset_stats`: what was done, what failed and why
    columns  -- `omnivox.data.index.import_columns`: extra per-asset columns (aesthetic_score) for the filters

Datasets for the trainers: `omnivox.data.datasets` (by the class names of the experiment JSONs).
Folder layout: `omnivox.data.layout`; metadata tables: `omnivox.data.metadata`. Engines: `omnivox.data.runner`
(local processes) and `omnivox.data.ray_runner` (a Ray cluster, ``ray=RayCluster(...)`` on each stage).
"""

from omnivox.data.datasets import (DATASET_CLASSES, FlexiDualGridDataset, ImageConditionedSLatPbr,
                                   ImageConditionedSLatShape, ImageConditionedSparseStructureLatent,
                                   SparseVoxelPbrDataset)

__all__ = [
    "DATASET_CLASSES",
    "FlexiDualGridDataset",
    "ImageConditionedSLatPbr",
    "ImageConditionedSLatShape",
    "ImageConditionedSparseStructureLatent",
    "SparseVoxelPbrDataset",
]
