"""Loss terms of the SC-VAE trainers (spec training.md 2.3-2.5): pure functions of tensors.

Shape VAE (spec 2.3), with the released weights::

    L = 0.1 BCE(flags) + 0.01 MSE(vertices) + 0.1 sum_i BCE(subdivision_i)
      + 1 L1(mask) + 10 L1(depth) + 1 (L1(normal) + 0.2 (1 - SSIM(normal)) + 0.2 LPIPS(normal)) + 1e-6 KL

Material VAE (spec 2.5): ``L1(y_hat, x) + 1e-6 KL`` (optionally L2).

Everything here is stateless except `LPIPS`, a frozen network whose weights must be given as local files: this
module never downloads anything. `load_lpips` returns None (and logs one line) when no weights are configured,
so a trainer simply drops the LPIPS term.

Decisions on the reference's quirks:

* The random loss cameras (`sample_loss_cameras`) keep the reference's near plane ``U(r - 1, r)``, which often
  slices through the object: that is deliberate in the reference (interior surfaces get supervision) and we keep
  it.
* SSIM uses zero padding like the reference (a Gaussian-weighted mean over a window that runs off the image
  edge sees zeros); the border pixels therefore score lower than with reflection padding. Kept, so the loss
  values are comparable with the reference's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------- latent
def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) averaged over every element (spec 2.3 ``kl``).

    ``0.5 * mean(mean^2 + exp(logvar) - logvar - 1)``; zero exactly when ``mean = 0`` and ``logvar = 0``.

    Args:
        mean, logvar: ``(N, C)`` float posterior parameters (tokens x channels).

    Returns:
        Scalar tensor (float32 or the inputs' wider dtype).
    """
    if mean.shape != logvar.shape:
        raise ValueError(f"mean and logvar must have the same shape, got {tuple(mean.shape)} and "
                         f"{tuple(logvar.shape)}")
    dtype = torch.float64 if torch.float64 in (mean.dtype, logvar.dtype) else torch.float32
    m, lv = mean.to(dtype), logvar.to(dtype)
    return 0.5 * torch.mean(m.square() + lv.exp() - lv - 1)


# ------------------------------------------------------------------------------------- direct terms
def flag_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits of the edge-intersection flags, mean over voxels x 3 (spec 2.3 ``direct/intersected``).

    Args:
        logits: ``(N, 3)`` float predicted flag logits.
        target: ``(N, 3)`` bool (or 0/1 float) ground-truth flags.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape")
    return F.binary_cross_entropy_with_logits(logits.float(), target.to(torch.float32))


def vertex_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of the dual vertices in voxel-local units, mean over voxels x 3 (spec 2.3 ``direct/vertice``).

    Args:
        predicted: ``(N, 3)`` float decoder vertices (in ``(-margin, 1 + margin)``).
        target: ``(N, 3)`` float ground-truth local vertices in ``[0, 1]``.
    """
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} must have the "
                         "same shape")
    return F.mse_loss(predicted.float(), target.float())


def subdivision_losses(levels: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list:
    """BCE-with-logits of each upsampling level's 8 child logits against the true child mask (``bce_sub{i}``).

    Args:
        levels: one ``(logits (N_i, 8) float, target (N_i, 8) bool)`` pair per level, coarsest first.

    Returns:
        List of scalar tensors, one per level.
    """
    out = []
    for i, (logits, target) in enumerate(levels):
        if logits.shape != target.shape or logits.dim() != 2 or logits.shape[1] != 8:
            raise ValueError(f"level {i}: logits and target must both be (N, 8), got {tuple(logits.shape)} and "
                             f"{tuple(target.shape)}")
        out.append(F.binary_cross_entropy_with_logits(logits.float(), target.to(torch.float32)))
    return out


def reconstruction_loss(predicted: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Material VAE reconstruction term (spec 2.5): ``"l1"`` (released) or ``"l2"``, mean over voxels x channels."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} must have the "
                         "same shape")
    if kind == "l1":
        return F.l1_loss(predicted.float(), target.float())
    if kind == "l2":
        return F.mse_loss(predicted.float(), target.float())
    raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")


# --------------------------------------------------------------------------------------------- SSIM
def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32,
                    device: str | torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian ``(size,)`` centred on the middle tap."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
         c1: float = 0.01 ** 2, c2: float = 0.03 ** 2) -> torch.Tensor:
    """Structural similarity of two image batches, the mean of the SSIM map (spec 2.3).

    Per channel, local statistics use a ``window_size`` Gaussian window (``sigma``) with zero padding::

        SSIM = (2 mu_a mu_b + c1) (2 cov_ab + c2) / ((mu_a^2 + mu_b^2 + c1) (var_a + var_b + c2))

    Args:
        a, b: ``(B, C, H, W)`` float images in ``[0, 1]`` (the constants assume a dynamic range of 1).

    Returns:
        Scalar tensor; 1 for identical images.
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"a and b must be (B, C, H, W) of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    channels = a.shape[1]
    g = gaussian_window(window_size, sigma, a.dtype, a.device)
    window = (g[:, None] * g[None, :]).expand(channels, 1, window_size, window_size).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, padding=window_size // 2, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.square()
    var_b = blur(b * b) - mu_b.square()
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2)
    return (num / den).mean()


# -------------------------------------------------------------------------------------------- LPIPS
# VGG16 "features" convolutions (output channels; "M" = 2x2 max-pool), indexed as torchvision numbers them,
# and the five ReLU outputs LPIPS compares (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_LPIPS_TAPS = (3, 8, 15, 22, 29)
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# Input normalisation of LPIPS (images in [-1, 1]).
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """LPIPS distance with a VGG16 backbone (Zhang et al. 2018), frozen; weights come from local files only.

    ``d(x, y) = sum_l mean_hw( w_l . (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)^2 )`` over five VGG16 ReLU layers,
    inputs in ``[-1, 1]``. Keys: ``features.{i}.weight|bias`` (torchvision's VGG16 numbering) and
    ``lin{l}.model.1.weight`` (the lpips package's linear heads), as in the files those projects publish.
    """

    def __init__(self) -> None:
        super().__init__()
        layers, c_in = [], 3
        for item in _VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, item, 3, padding=1), nn.ReLU(inplace=False)]
                c_in = item
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg_weights: PathLike, lin_weights: PathLike) -> LPIPS:
        """Load the VGG16 backbone and the linear heads (``.safetensors``, or ``.pth`` read with weights_only)."""
        model = cls()
        state = {}
        vgg = _read_state(vgg_weights)
        for i, module in enumerate(model.features):
            if isinstance(module, nn.Conv2d):
                for part in ("weight", "bias"):
                    key = f"features.{i}.{part}"
                    if key not in vgg:
                        raise ValueError(f"{vgg_weights}: missing VGG16 key {key!r}")
                    state[f"features.{i}.{part}"] = vgg[key]
        lin = _read_state(lin_weights)
        for l in range(len(_LPIPS_CHANNELS)):
            key = f"lin{l}.model.1.weight"
            if key not in lin:
                raise ValueError(f"{lin_weights}: missing LPIPS key {key!r}")
            state[f"lins.{l}.weight"] = lin[key]
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"LPIPS weights {vgg_weights} / {lin_weights} do not fit VGG16: {error}") from error
        return model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance over the batch of ``(B, 3, H, W)`` images in ``[-1, 1]``."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x and y must be (B, 3, H, W) of the same shape, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        h = torch.cat([x, y]).float()
        h = (h - self.shift) / self.scale
        total = h.new_zeros(())
        taps = iter(zip(_LPIPS_TAPS, self.lins))
        tap, lin = next(taps)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i == tap:
                f = h / (h.square().sum(1, keepdim=True).sqrt() + 1e-10)
                fx, fy = f.chunk(2)
                total = total + lin((fx - fy).square()).mean()
                nxt = next(taps, None)
                if nxt is None:
                    break
                tap, lin = nxt
        return total


def _read_state(path: PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def load_lpips(vgg_weights: PathLike | None, lin_weights: PathLike | None) -> LPIPS | None:
    """`LPIPS.from_files` when both paths are given; None (with one log line) when either is missing."""
    if vgg_weights is None or lin_weights is None:
        logger.info("LPIPS term disabled: no local weights configured (lpips_vgg_weights / lpips_lin_weights)")
        return None
    return LPIPS.from_files(vgg_weights, lin_weights)


# ------------------------------------------------------------------------------------ loss cameras
@dataclass
class LossCameras:
    """Per-sample random cameras of the render losses (spec 2.4), OpenCV convention (x right, y down, z fwd).

    Attributes:
        extrinsics: ``(B, 4, 4)`` world -> camera.
        intrinsics: ``(B, 3, 3)`` normalised (the image spans [0, 1]): ``fx = fy = 0.5 / tan(fov / 2)``, c = 0.5.
        near, far: ``(B,)`` clip distances (``far = near + 2``).
        radius, fov: ``(B,)`` camera distance to the origin and field of view (radians, both axes).
    """

    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    near: torch.Tensor
    far: torch.Tensor
    radius: torch.Tensor
    fov: torch.Tensor

    def __len__(self) -> int:
        return self.extrinsics.shape[0]

    def __getitem__(self, i: int) -> LossCameras:
        """Camera ``i`` as a batch of one."""
        return LossCameras(*(t[i:i + 1] for t in (self.extrinsics, self.intrinsics, self.near, self.far,
                                                  self.radius, self.fov)))


def sample_loss_cameras(num: int, generator: torch.Generator | None = None,
                        radius_range: tuple[float, float] = (2.0, 100.0),
                        device: str | torch.device | None = None) -> LossCameras:
    """Random cameras of the shape / material render losses (spec 2.4, the reference's ``_randomize_camera``).

    Position, orientation and FoV come from `omnivox.render.random_sphere_cameras` (``1/r^2`` uniform, so radii
    concentrate near 2-4; FoV ``2 asin(0.5 / r)``; +Z up); then the near plane ``U(r - 1, r)`` (it often cuts
    the object; see the module docstring) and ``far = near + 2``.

    Args:
        num: number of cameras.
        generator: CPU random generator (draws are made on the CPU, so results do not depend on the device).
        radius_range: ``(r_min, r_max)``, ``r_min > 0.5``.
        device: where to put the result.
    """
    from omnivox.render import random_sphere_cameras

    r_min, r_max = radius_range
    if not 0.5 < r_min <= r_max:
        raise ValueError(f"radius_range must satisfy 0.5 < r_min <= r_max, got {radius_range}")
    extrinsics, intrinsics = random_sphere_cameras(num, generator, radius_range)
    radius = extrinsics[:, :3, 3].double().norm(dim=-1)
    near = radius - torch.rand(num, generator=generator, dtype=torch.float64)
    fov = 2 * torch.atan(0.5 / intrinsics[:, 0, 0].double())
    return LossCameras(*(t.to(device=device, dtype=torch.float32)
                         for t in (extrinsics, intrinsics, near, near + 2, radius, fov)))


# ------------------------------------------------------------------------------------ render terms
# A render function: (vertices (V, 3), faces (F, 3), camera (one LossCameras), resolution) ->
# {"mask": (H, W), "depth": (H, W), "normal": (H, W, 3) in [0, 1]}.
RenderFn = Callable[[torch.Tensor, torch.Tensor, LossCameras, int], dict[str, torch.Tensor]]


def render_loss_maps(vertices: torch.Tensor, faces: torch.Tensor, camera: LossCameras, resolution: int,
                     backend: str = "auto") -> dict[str, torch.Tensor]:
    """The default `RenderFn`: `omnivox.render.render_mesh` maps as the losses compare them (spec 2.4).

    ``mask`` (H, W) antialiased coverage, ``depth`` (H, W) camera z (0 outside), ``normal`` (H, W, 3) flat
    camera-space normal pointing away from the camera (spec 2.4), mapped ``(n + 1) / 2`` (0.5 outside); the
    camera's own near / far planes clip.
    An empty mesh renders as mask 0, depth 0, normal 0.5.
    """
    from omnivox.render import render_mesh

    if len(camera) != 1:
        raise ValueError(f"render_loss_maps renders one camera, got {len(camera)}")
    if faces.shape[0] == 0:
        zeros = vertices.new_zeros(resolution, resolution)
        return {"mask": zeros, "depth": zeros, "normal": vertices.new_full((resolution, resolution, 3), 0.5)}
    out = render_mesh(vertices, faces, camera.extrinsics, camera.intrinsics, resolution,
                      near=float(camera.near[0]), far=float(camera.far[0]), backend=backend)
    return {"mask": out["mask"][0], "depth": out["depth"][0], "normal": out["normal"][0] * 0.5 + 0.5}


@dataclass
class RenderLossWeights:
    """Weights of the shape render terms (spec 2.3; defaults = released config)."""

    mask: float = 1.0
    depth: float = 10.0
    normal: float = 1.0
    ssim: float = 0.2
    lpips: float = 0.2


def shape_render_losses(predicted: Sequence[tuple[torch.Tensor, torch.Tensor]],
                        ground_truth: Sequence[tuple[torch.Tensor, torch.Tensor]],
                        cameras: LossCameras, resolution: int, render: RenderFn,
                        weights: RenderLossWeights | None = None,
                        lpips: LPIPS | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rendered mask / depth / normal losses of predicted against ground-truth meshes (spec 2.3-2.4).

    Each sample is rendered from its own camera, predicted and ground truth alike; the ground truth is rendered
    without gradients. Images are stacked over the batch and compared over the full image (no masking).

    Args:
        predicted: per sample ``(vertices (V, 3) float, faces (F, 3) int64)`` in world units (gradients flow
            to the vertices through ``render``).
        ground_truth: per sample the target mesh, same frame.
        cameras: one camera per sample (`sample_loss_cameras`).
        resolution: image side in pixels.
        render: see `RenderFn`.
        weights: term weights (default: the released ones).
        lpips: optional `LPIPS` network for the normal images; None drops the term.

    Returns:
        ``(weighted sum, {"render/mask", "render/depth", "render/normal/l1", "render/normal/ssim"
        [, "render/normal/lpips"]: unweighted terms})``.
    """
    if not len(predicted) == len(ground_truth) == len(cameras):
        raise ValueError(f"need one camera and one ground truth per prediction, got {len(predicted)} predictions, "
                         f"{len(ground_truth)} ground truths and {len(cameras)} cameras")
    weights = weights or RenderLossWeights()
    pred_maps, gt_maps = [], []
    for (pv, pf), (gv, gf), i in zip(predicted, ground_truth, range(len(cameras))):
        camera = cameras[i]
        pred_maps.append(render(pv, pf, camera, resolution))
        with torch.no_grad():
            gt_maps.append(render(gv, gf, camera, resolution))

    def stack(maps, key):
        return torch.stack([m[key].float() for m in maps])

    terms = {
        "render/mask": F.l1_loss(stack(pred_maps, "mask"), stack(gt_maps, "mask")),
        "render/depth": F.l1_loss(stack(pred_maps, "depth"), stack(gt_maps, "depth")),
    }
    normal_pred = stack(pred_maps, "normal").permute(0, 3, 1, 2)
    normal_gt = stack(gt_maps, "normal").permute(0, 3, 1, 2)
    terms["render/normal/l1"] = F.l1_loss(normal_pred, normal_gt)
    terms["render/normal/ssim"] = 1 - ssim(normal_pred, normal_gt)
    normal_term = terms["render/normal/l1"] + weights.ssim * terms["render/normal/ssim"]
    if lpips is not None:
        terms["render/normal/lpips"] = lpips(normal_pred * 2 - 1, normal_gt * 2 - 1)
        normal_term = normal_term + weights.lpips * terms["render/normal/lpips"]
    total = weights.mask * terms["render/mask"] + weights.depth * terms["render/depth"] + weights.normal * normal_term
    return total, terms


def psnr(a: torch.Tensor, b: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
    """``20 log10(max / sqrt(MSE))`` (an evaluation utility, spec 2.3)."""
    mse = F.mse_loss(a.float(), b.float())
    return 20 * torch.log10(max_value / mse.clamp_min(1e-20).sqrt())


__all__ = [
    "LPIPS",
    "LossCameras",
    "RenderFn",
    "RenderLossWeights",
    "flag_loss",
    "gaussian_window",
    "kl_divergence",
    "load_lpips",
    "psnr",
    "reconstruction_loss",
    "render_loss_maps",
    "sample_loss_cameras",
    "shape_render_losses",
    "ssim",
    "subdivision_losses",
    "vertex_loss",
]

