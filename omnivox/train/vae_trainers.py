"""SC-VAE trainers: `ShapeVaeTrainer` and `PbrVaeTrainer` (spec training.md 2.3, 2.5; the reference's names; models
``encoder`` and ``decoder``).

Their losses, the teacher-forced encode/decode and the batch layout are in `omnivox.train.vae_losses` (the names
stay importable from here). The sparse-structure VAE is not retrained (spec 2.7: TRELLIS v1's is reused), so
there is no trainer for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from omnivox.train.config import TrainerConfig
from omnivox.train.losses import LossCameras, load_lpips, render_loss_maps
from omnivox.train.trainer import Trainer
from omnivox.train.vae_losses import (  # noqa: F401  (the losses' names, also importable from here)
    MaterialVaeLossConfig,
    ShapeHead,
    ShapeVaeLossConfig,
    TeacherForcedOutput,
    call_as_forward,
    child_mask,
    cpu_generator,
    decode_teacher_forced,
    encode,
    material_render_losses,
    material_vae_losses,
    mesh_arrays,
    predicted_training_meshes,
    render_surface_attributes,
    shape_encoder_input,
    shape_head,
    shape_vae_losses,
)


# ------------------------------------------------------------------------------------------- trainers
@dataclass(kw_only=True)
class ShapeVaeTrainerConfig(TrainerConfig, ShapeVaeLossConfig):
    """``trainer.args`` of `ShapeVaeTrainer`: the base keys plus the loss keys (`ShapeVaeLossConfig`).

    ``lpips_vgg_weights`` / ``lpips_lin_weights`` (omnivox keys): local LPIPS weight files; without them the
    LPIPS term is dropped with a log line.
    """

    lpips_vgg_weights: str | None = None
    lpips_lin_weights: str | None = None


class _VaeTrainer(Trainer):
    """What both SC-VAE trainers share: models ``encoder`` and ``decoder``, and the LPIPS network of the render
    terms (loaded only when ``lambda_render > 0``; None without local weights)."""

    def __init__(self, models: dict, dataset, config, output_dir, **kwargs) -> None:
        for key in ("encoder", "decoder"):
            if key not in models:
                raise ValueError(f"{type(self).__name__} needs models 'encoder' and 'decoder', got {sorted(models)}")
        super().__init__(models, dataset, config, output_dir, **kwargs)
        self.lpips = None
        if config.lambda_render > 0:
            self.lpips = load_lpips(config.lpips_vgg_weights, config.lpips_lin_weights)
            self.lpips = self.lpips.to(self.device) if self.lpips is not None else None

    @property
    def checkpointed(self) -> bool:
        return bool(self.config.activation_checkpointing)


class ShapeVaeTrainer(_VaeTrainer):
    """Shape SC-VAE trainer (reference ``ShapeVaeTrainer``, spec 2.3): models ``encoder`` and ``decoder``.

    Activation checkpointing (``activation_checkpointing``: any true value or fraction > 0) recomputes every
    ConvNeXt block of both networks in backward; the elastic memory controller is not used by the VAEs.
    """

    config_class = ShapeVaeTrainerConfig

    def training_losses(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss, terms = shape_vae_losses(self.models["encoder"], self.models["decoder"], batch, self.config,
                                       render=render_loss_maps if self.config.lambda_render > 0 else None,
                                       lpips=self.lpips, generator=cpu_generator(self.rng),
                                       checkpointed=self.checkpointed)
        return loss, {name: float(value.detach()) for name, value in terms.items()}


    @torch.no_grad()
    def snapshot(self, step: int) -> dict:
        """Normal maps (spec 1.13) of the first ``snapshot_batch_size`` samples from one fixed camera.

        Rows: ground truth, reconstruction with ground-truth structure (teacher forced, posterior mean), and the
        free reconstruction (predicted subdivisions and flags, as at inference). Columns: samples.
        """
        return {"normals": shape_snapshot(self.unwrap("encoder"), self.unwrap("decoder"), self.dataset,
                                          self.config.snapshot_batch_size, self.device)}


def shape_snapshot(encoder, decoder, dataset, count: int, device, size: int = 256) -> np.ndarray:
    """``(3 size, count size, 3) uint8`` grid of normal maps, see `ShapeVaeTrainer.snapshot`."""
    from omnivox.ovoxel.extract import dual_grid_to_mesh
    from omnivox.render import orbit_cameras
    from omnivox.train.data_stream import first_samples_batch

    batch = first_samples_batch(dataset, count, device)
    vertices, intersected = batch["vertices"], batch["intersected"]
    extrinsics, intrinsics = orbit_cameras(1, radius=2.0, fov=math.radians(36.0), yaw_offset=math.radians(-16.0))
    camera = LossCameras(extrinsics, intrinsics, torch.tensor([0.5]), torch.tensor([4.0]), torch.tensor([2.0]),
                         torch.tensor([math.radians(36.0)]))
    was_training = decoder.training
    decoder.eval()
    try:
        posterior = encode(encoder, shape_encoder_input(vertices, intersected))
        forced = decode_teacher_forced(decoder, posterior.mean, posterior.downsample_maps)
        head = shape_head(forced.voxels.feats, decoder.config.voxel_margin)
        rows = [[mesh_arrays(m, device) for m in batch["mesh"]] if "mesh" in batch else [None] * vertices.batch_size,
                predicted_training_meshes(vertices.coords, head, intersected.feats, vertices.batch_size,
                                          decoder.resolution)]
        free = decoder(posterior.mean)
        meshes = []
        for b in range(vertices.batch_size):
            keep = free.coords[:, 0] == b
            meshes.append(dual_grid_to_mesh(free.coords[keep, 1:], free.vertices[keep], free.intersected[keep],
                                            decoder.resolution, split_weight=free.split_weights[keep]))
        rows.append(meshes)
    finally:
        decoder.train(was_training)
    def normals(mesh):
        if mesh is None:  # no ground-truth mesh in the dataset (with_mesh off)
            return torch.full((size, size, 3), 0.5)
        return render_loss_maps(mesh[0].float(), mesh[1], camera, size)["normal"].cpu()

    grid = torch.cat([torch.cat([normals(m) for m in row], dim=1) for row in rows], dim=0)
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@dataclass(kw_only=True)
class PbrVaeTrainerConfig(TrainerConfig, MaterialVaeLossConfig):
    """``trainer.args`` of `PbrVaeTrainer`: the base keys plus `MaterialVaeLossConfig`'s, the grid
    ``resolution`` of the data (for the render term) and the LPIPS weight paths (omnivox keys)."""

    resolution: int | None = None
    lpips_vgg_weights: str | None = None
    lpips_lin_weights: str | None = None


class PbrVaeTrainer(_VaeTrainer):
    """Material (PBR) SC-VAE trainer (reference ``PbrVaeTrainer``, spec 2.5): models ``encoder``, ``decoder``."""

    config_class = PbrVaeTrainerConfig

    def __init__(self, models: dict, dataset, config: PbrVaeTrainerConfig, output_dir, **kwargs) -> None:
        super().__init__(models, dataset, config, output_dir, **kwargs)
        self.resolution = config.resolution or getattr(dataset, "resolution", None)

    def training_losses(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss, terms = material_vae_losses(self.models["encoder"], self.models["decoder"], batch, self.config,
                                          resolution=self.resolution, lpips=self.lpips,
                                          generator=cpu_generator(self.rng),
                                          checkpointed=self.checkpointed)
        return loss, {name: float(value.detach()) for name, value in terms.items()}
