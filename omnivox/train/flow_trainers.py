"""Rectified-flow training of the three generative stages (spec training.md 3).

One trainer, `FlowMatchingTrainer`, serves all three stages; what differs is the data the dataset yields:

=========================  =============================================  ==================================
stage                      ``x_0``                                        extra
=========================  =============================================  ==================================
sparse structure           ``(B, 8, 16, 16, 16)`` tensor                   --
shape latent               `SparseTensor` ``(N, 32)`` normalised latent   --
material latent            `SparseTensor` ``(N, 32)`` normalised latent   ``concat_cond``: shape latent,
                                                                           same coords (never noised/dropped)
=========================  =============================================  ==================================

and ``cond`` is either condition images ``(B, 3, S, S)`` in ``[0, 1]``, encoded on the fly by a frozen DINOv3
(`omnivox.models.DINOv3ViT`, ``image_cond_model``), or precomputed condition tokens ``(B, M, C)``.

The objective (spec 3.1), with ``t`` from the configured schedule and ``eps ~ N(0, I)``::

    x_t    = (1 - t) x_0 + (sigma_min + (1 - sigma_min) t) eps
    target = (1 - sigma_min) eps - x_0                       (= d x_t / d t)
    loss   = mean over all elements of (denoiser(x_t, 1000 t, cond) - target)^2

Classifier-free guidance dropout (spec 3.3): each sample's condition is replaced by zeros with probability
``p_uncond``. The loss is also logged per time bin (``bin_i/mse``, ten equal bins of ``t``).

Decisions: the reference's nine trainer classes (dense / sparse x image / multi-image / text, composed by
mixins) become one class: dense vs sparse is read from the type of ``x_0``, images vs tokens from the rank of
``cond``. Every random draw comes from the per-micro-batch generator of `Trainer`. The default time schedule,
when the config gives none, is the reference trainer's default ``logitNormal(0, 1)``; the released configs set
it explicitly (``logitNormal(1, 1)`` for the SS flow, ``uniform`` for the two latent flows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from omnivox.sparse.tensor import SparseTensor
from omnivox.train.config import ConfigError, TrainerConfig
from omnivox.train.data_stream import first_samples_batch
from omnivox.train.schedules import sample_timesteps
from omnivox.train.trainer import Trainer


@dataclass(kw_only=True)
class FlowTrainerConfig(TrainerConfig):
    """`TrainerConfig` plus the flow keys of ``trainer.args`` (spec 3.1-3.4)."""

    t_schedule: dict = field(default_factory=lambda: {"name": "logitNormal", "args": {"mean": 0.0, "std": 1.0}})
    sigma_min: float = 1e-5
    p_uncond: float = 0.1
    # A local DINOv3 folder (config.json + model.safetensors), or the reference's
    # {"name": "DinoV3FeatureExtractor", "args": {"model_name": <local folder>}}; None: cond holds tokens.
    image_cond_model: Union[None, str, dict] = None
    snapshot_steps: int = 12  # omnivox: Euler steps of snapshot samples (reference: 50 dense / 12 sparse)
    snapshot_cfg: float = 3.0  # omnivox: guidance strength of snapshot samples

    def __post_init__(self) -> None:
        super().__post_init__()
        where = "trainer.args"
        if self.t_schedule.get("name") not in ("uniform", "logitNormal"):
            raise ConfigError(f"{where}.t_schedule.name must be 'uniform' or 'logitNormal', "
                              f"got {self.t_schedule.get('name')!r}")
        if not 0.0 <= self.sigma_min < 1.0:
            raise ConfigError(f"{where}.sigma_min must be in [0, 1), got {self.sigma_min}")
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ConfigError(f"{where}.p_uncond must be in [0, 1], got {self.p_uncond}")
        if isinstance(self.image_cond_model, dict):
            if set(self.image_cond_model) - {"name", "args"} or "name" not in self.image_cond_model:
                raise ConfigError(f"{where}.image_cond_model must be a path or {{name, args}}")


# ------------------------------------------------------------------------------------------ the maths
def noisy_sample(x_0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, sigma_min: float) -> torch.Tensor:
    """``x_t = (1 - t) x_0 + (sigma_min + (1 - sigma_min) t) eps``; ``t`` broadcasts against ``x_0``."""
    return (1 - t) * x_0 + (sigma_min + (1 - sigma_min) * t) * eps


def velocity_target(x_0: torch.Tensor, eps: torch.Tensor, sigma_min: float) -> torch.Tensor:
    """``d x_t / d t = (1 - sigma_min) eps - x_0``."""
    return (1 - sigma_min) * eps - x_0


def drop_condition(cond: torch.Tensor, p_uncond: float, generator: torch.Generator) -> tuple:
    """Replace each sample's condition by zeros with probability ``p_uncond``; returns (cond, (B,) bool mask)."""
    drop = torch.rand(cond.shape[0], generator=generator, device=generator.device) < p_uncond
    drop = drop.to(cond.device)
    keep = (~drop).to(cond.dtype).view(-1, *([1] * (cond.dim() - 1)))
    return cond * keep, drop


def _rows(x: Union[torch.Tensor, SparseTensor]) -> torch.Tensor:
    return x.feats if isinstance(x, SparseTensor) else x


# ---------------------------------------------------------------------------------------- the trainer
class FlowMatchingTrainer(Trainer):
    """Rectified-flow trainer of one ``denoiser`` (any of the three flow stages; see the module docstring).

    Models: ``{"denoiser": SparseStructureFlowModel | SLatFlowModel}``. Batches: ``x_0``, ``cond``, optional
    ``concat_cond``. The image encoder, when configured, is frozen and never saved.
    """

    config_class = FlowTrainerConfig

    def __init__(self, models: dict, dataset, config: FlowTrainerConfig, output_dir, *,
                 image_encoder: Optional[nn.Module] = None, **kwargs) -> None:
        if "denoiser" not in models:
            raise ValueError(f"FlowMatchingTrainer needs a 'denoiser' model, got {sorted(models)}")
        super().__init__(models, dataset, config, output_dir, **kwargs)
        self.image_encoder = image_encoder if image_encoder is not None else _load_image_encoder(config)
        if self.image_encoder is not None:
            self.image_encoder = self.image_encoder.to(self.device).eval().requires_grad_(False)
        self._snapshot_batch = None

    # ------------------------------------------------------------------------------------------- cond
    @torch.no_grad()
    def encode_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, S, S)`` in [0, 1] -> DINOv3 tokens; tokens ``(B, M, C)`` pass through."""
        if cond.dim() == 3:
            return cond
        if cond.dim() != 4:
            raise ValueError(f"cond must be images (B, 3, S, S) or tokens (B, M, C), got {tuple(cond.shape)}")
        if self.image_encoder is None:
            raise ValueError("the batch holds condition images but trainer.args.image_cond_model is not set")
        from omnivox.models.dinov3 import normalize_images
        return self.image_encoder(normalize_images(cond.float()))

    # ------------------------------------------------------------------------------------------- loss
    def training_losses(self, batch: dict) -> tuple:
        cfg = self.config
        x_0 = batch["x_0"]
        sparse = isinstance(x_0, SparseTensor)
        cond = self.encode_condition(batch["cond"])
        n = x_0.batch_size if sparse else x_0.shape[0]
        gen = self.rng
        t = sample_timesteps(cfg.t_schedule, n, gen).to(self.device)
        cond, _ = drop_condition(cond, cfg.p_uncond, gen)
        rows = _rows(x_0).float()
        eps = torch.randn(rows.shape, generator=gen, device=gen.device).to(rows.device)
        t_rows = x_0.broadcast_rows(t[:, None]) if sparse else t.view(-1, *([1] * (rows.dim() - 1)))
        x_t = noisy_sample(rows, eps, t_rows, cfg.sigma_min)
        target = velocity_target(rows, eps, cfg.sigma_min)
        extra = {}
        if batch.get("concat_cond") is not None:
            extra["concat_cond"] = batch["concat_cond"]
        x_in = x_0.replace(x_t) if sparse else x_t
        pred = _rows(self.models["denoiser"](x_in, t * 1000, cond, **extra)).float()
        err = (pred - target).square()
        loss = err.mean()
        logs = {"mse": float(loss.detach())}
        # per-sample MSE by time bin (spec 1.12)
        if sparse:
            per_sample = torch.zeros(n, device=err.device).index_add_(0, x_0.batch_index, err.detach().mean(1))
            per_sample = per_sample / x_0.seq_lens.clamp(min=1).to(per_sample.dtype)
        else:
            per_sample = err.detach().flatten(1).mean(1)
        bins = (t.detach() * 10).long().clamp(max=9)
        for b in bins.unique().tolist():
            logs[f"bin_{b}/mse"] = float(per_sample[bins == b].mean())
        return loss, logs

    # --------------------------------------------------------------------------------------- snapshot
    @torch.no_grad()
    def sample(self, x_like: Union[torch.Tensor, SparseTensor], cond: torch.Tensor, steps: int, cfg_strength: float,
               generator: torch.Generator, concat_cond: Optional[SparseTensor] = None,
               model: Optional[nn.Module] = None) -> Union[torch.Tensor, SparseTensor]:
        """Euler sampling from ``t = 1`` to 0 on ``x_like``'s shape / coords (spec 3.8, ``rescale_t = 1``).

        ``v = w v(cond) + (1 - w) v(zeros)``; ``w = 1`` skips the unconditional pass.
        """
        model = model if model is not None else self.unwrap("denoiser")
        sparse = isinstance(x_like, SparseTensor)
        rows = _rows(x_like)
        x = torch.randn(rows.shape, generator=generator, device=generator.device).to(rows.device)
        n = cond.shape[0]
        extra = {"concat_cond": concat_cond} if concat_cond is not None else {}
        ts = torch.linspace(1.0, 0.0, steps + 1).tolist()
        for t, t_next in zip(ts[:-1], ts[1:]):
            tt = torch.full((n,), 1000.0 * t, device=rows.device)
            wrap = (lambda f: x_like.replace(f)) if sparse else (lambda f: f)
            v = _rows(model(wrap(x), tt, cond, **extra)).float()
            if cfg_strength != 1.0:
                v_u = _rows(model(wrap(x), tt, torch.zeros_like(cond), **extra)).float()
                v = cfg_strength * v + (1 - cfg_strength) * v_u
            x = x + (t_next - t) * v
        return x_like.replace(x) if sparse else x

    def snapshot(self, step: int) -> dict:
        """Ground truth and samples side by side: channel-PCA colours of the latents, projected along z."""
        if self._snapshot_batch is None:
            self._snapshot_batch = first_samples_batch(self.dataset, self.config.snapshot_batch_size, self.device)
        batch = self._snapshot_batch
        model = self.unwrap("denoiser")
        was_training = model.training
        model.eval()
        try:
            with self.precision.autocast():
                cond = self.encode_condition(batch["cond"])
                gen = torch.Generator(device=self.device).manual_seed(self.config.seed)
                samples = self.sample(batch["x_0"], cond, self.config.snapshot_steps, self.config.snapshot_cfg, gen,
                                      batch.get("concat_cond"), model)
        finally:
            model.train(was_training)
        return {"latents": np.concatenate([_latent_image(batch["x_0"]), _latent_image(samples)], axis=0)}


def _latent_image(x: Union[torch.Tensor, SparseTensor], cell: int = 8) -> np.ndarray:
    """A row of tiles, one per sample: the latent's first three PCA components as RGB, max-projected over z."""
    if isinstance(x, SparseTensor):
        feats, coords, batch = x.feats.float().cpu(), x.coords.cpu().long(), x.batch_size
        size = int(coords[:, 1:].max()) + 1 if len(coords) else 1
    else:
        b, c = x.shape[:2]
        size = x.shape[-1]
        grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in x.shape[2:]], indexing="ij"), -1).reshape(-1, 3)
        feats = x.float().cpu().permute(0, 2, 3, 4, 1).reshape(-1, c)
        coords = torch.cat([torch.arange(b).repeat_interleave(len(grid))[:, None], grid.repeat(b, 1)], 1)
        batch = b
    centred = feats - feats.mean(0)
    basis = torch.linalg.svd(centred, full_matrices=False).Vh[:3].T if len(feats) > 1 else torch.eye(feats.shape[1], 3)
    colours = centred @ basis
    colours = (colours - colours.min(0).values) / (colours.max(0).values - colours.min(0).values + 1e-8)
    tiles = []
    for i in range(batch):
        mask = coords[:, 0] == i
        tile = torch.zeros(size, size, 3)
        depth = torch.full((size, size), -1)
        for (xx, yy, zz), rgb in zip(coords[mask, 1:].tolist(), colours[mask]):
            if zz > depth[yy, xx]:
                depth[yy, xx], tile[yy, xx] = zz, rgb
        tiles.append(tile.flip(0))
    image = torch.cat(tiles, dim=1).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return (image.numpy() * 255).astype(np.uint8)


def _load_image_encoder(config: FlowTrainerConfig) -> Optional[nn.Module]:
    spec = config.image_cond_model
    if spec is None:
        return None
    if isinstance(spec, dict):
        if spec["name"] != "DinoV3FeatureExtractor":
            raise ConfigError(f"trainer.args.image_cond_model.name {spec['name']!r} is not supported (only "
                              "DinoV3FeatureExtractor)")
        spec = spec.get("args", {}).get("model_name")
    folder = Path(str(spec))
    if not folder.is_dir():
        raise ConfigError(f"trainer.args.image_cond_model: {spec!r} is not a local folder; download "
                          "facebook/dinov3-vitl16-pretrain-lvd1689m (config.json + model.safetensors) and give its "
                          "path, or feed precomputed condition tokens")
    from omnivox.models import from_pretrained
    return from_pretrained(folder)
