"""SC-VAE losses: teacher-forced encode/decode and the shape and material VAE losses (spec training.md 2).

The networks (`omnivox.models.sc_vae`) decode at inference from predicted (or guided) subdivisions. Training
needs the decoder *teacher-forced* (spec 2.2): every upsampling step follows the encoder's recorded
`DownsampleMap`, so the output voxels are exactly the input voxels in input row order, while each shape
upsampling block still predicts its 8 child logits, supervised by the true child mask. `decode_teacher_forced`
is the decoder's own forward with ``downsample_maps=`` (and `encode` the encoder's), both with ``checkpoint=``
(activation checkpointing of the ConvNeXt blocks: recompute in backward, lower peak memory). The networks run
their blocks in their config's dtype (``use_fp16``); the trainers build them with the blocks' weights in that
dtype (`omnivox.train.build`), which is the dtype the former training copy of this loop took from the weights
(tests/train/test_vae_forward_equality.py compares the two, bit for bit).

Batches (what the trainers read):

* shape: ``{"vertices": SparseTensor (N, 3) float in [0, 1] (dual vertex inside its voxel),
  "intersected": SparseTensor (N, 3) bool on the same coords, "mesh": per sample the normalised ground-truth
  mesh ``{"vertices": (V, 3), "faces": (F, 3)}`` (only for the render terms)}`` (spec 2.1), as
  `omnivox.data.datasets.FlexiDualGridDataset` collates them;
* material: ``{"x": SparseTensor (N, 6) float in [-1, 1]}`` = base colour, metallic, roughness, alpha (spec 2.5)
  (+ ``"mesh"`` for the render terms), as `omnivox.data.datasets.SparseVoxelPbrDataset` collates them.

The trainers that use them: `omnivox.train.vae_trainers`.

Quirk decisions:

* The reference's extraction during training takes topology from the ground-truth flags and positions from
  the prediction (spec 2.2). We do the same (`predicted_training_meshes`).
* The material VAE's render term (spec 2.5, the 512 stage) compares images of attributes sampled from the
  predicted and the ground-truth *voxels* on the ground-truth geometry, not the textured mesh
  (`material_render_losses` says why).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from omnivox.models.sc_vae import (
    EncoderOutput,
    FlexiDualGridVaeDecoder,
    SparseUnetVaeDecoder,
    SparseUnetVaeEncoder,
)
from omnivox.sparse.maps import DownsampleMap
from omnivox.sparse.tensor import SparseTensor
from omnivox.train.losses import (
    LPIPS,
    RenderFn,
    RenderLossWeights,
    flag_loss,
    kl_divergence,
    reconstruction_loss,
    sample_loss_cameras,
    shape_render_losses,
    ssim,
    subdivision_losses,
    vertex_loss,
)


# ------------------------------------------------------------------------------------ encode / decode
def encode(encoder: SparseUnetVaeEncoder, x: SparseTensor, checkpointed: bool = False) -> EncoderOutput:
    """The encoder's own forward on built features ``x`` (`SparseUnetVaeEncoder.forward`, ``checkpoint=``).

    Args:
        encoder: `SparseUnetVaeEncoder` or `FlexiDualGridVaeEncoder` (pass the shape encoder its 6 built
            features, see `shape_encoder_input`).
        x: ``(N, in_channels)`` float features at full resolution.
        checkpointed: recompute the ConvNeXt blocks in backward instead of storing their activations.

    Returns:
        `EncoderOutput` (mean, logvar, the four downsampling maps, finest first).
    """
    return SparseUnetVaeEncoder.forward(encoder, x, checkpoint=checkpointed)


def child_mask(downsample_map: DownsampleMap) -> torch.Tensor:
    """``(N_coarse, 8) bool``: which children of each coarse voxel exist (the true subdivision, spec 2.2)."""
    mask = torch.zeros(downsample_map.coarse_coords.shape[0], 8, dtype=torch.bool,
                       device=downsample_map.parent.device)
    mask[downsample_map.parent, downsample_map.child] = True
    return mask


@dataclass
class TeacherForcedOutput:
    """What `decode_teacher_forced` returns.

    Attributes:
        voxels: ``(N, out_channels) float32`` raw head output on the encoder input's coords, in its row order.
        subdivisions: per upsampling level, coarsest first, ``(logits (N_i, 8), target (N_i, 8) bool)``; empty
            for decoders without ``pred_subdiv``.
    """

    voxels: SparseTensor
    subdivisions: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def decode_teacher_forced(decoder: SparseUnetVaeDecoder, z: SparseTensor, downsample_maps: Sequence[DownsampleMap],
                          checkpointed: bool = False) -> TeacherForcedOutput:
    """Decode ``z`` following the encoder's downsampling maps, with the true subdivision beside each predicted one.

    The decoder's own forward (`SparseUnetVaeDecoder.forward` with ``downsample_maps=`` and ``checkpoint=``; the
    raw head output, for the shape decoder too), plus `child_mask` of each map as the target of its logits.

    Args:
        decoder: an SC-VAE decoder (shape or material).
        z: ``(N', latent_channels)`` latent on the encoder's latent coords (same rows as the encoder mean).
        downsample_maps: `EncoderOutput.downsample_maps` (finest first).
        checkpointed: recompute the ConvNeXt blocks in backward.
    """
    maps = list(downsample_maps)
    if len(maps) != decoder.num_upsamplings:
        raise ValueError(f"need {decoder.num_upsamplings} downsample maps, got {len(maps)}")
    out = SparseUnetVaeDecoder.forward(decoder, z, downsample_maps=maps, checkpoint=checkpointed)
    targets = [child_mask(m) for m in maps[::-1]]  # coarsest first, as the logits
    return TeacherForcedOutput(voxels=out.voxels,
                               subdivisions=[(lg.feats, t) for lg, t in zip(out.subdivision_logits, targets)])


# ----------------------------------------------------------------------------------------- shape VAE
def shape_encoder_input(vertices: SparseTensor, intersected: SparseTensor) -> SparseTensor:
    """The shape encoder's 6 input features ``[v - 0.5, flags - 0.5]`` (spec 2.2)."""
    if vertices.feats.shape[1:] != (3,) or intersected.feats.shape[1:] != (3,):
        raise ValueError(f"vertices and intersected must be (N, 3), got {tuple(vertices.feats.shape)} and "
                         f"{tuple(intersected.feats.shape)}")
    if vertices.coords is not intersected.coords and not torch.equal(vertices.coords, intersected.coords):
        raise ValueError("vertices and intersected must have the same coords in the same row order")
    return vertices.replace(torch.cat([vertices.feats.float() - 0.5, intersected.feats.float() - 0.5], dim=1))


@dataclass
class ShapeHead:
    """The shape decoder head split into its meanings (spec 2.2), on the input voxels.

    Attributes:
        vertices: ``(N, 3)`` dual vertex in voxel units, ``(1 + 2m) sigmoid(h) - m``.
        flag_logits: ``(N, 3)``.
        split_weights: ``(N,)`` positive, ``softplus``.
    """

    vertices: torch.Tensor
    flag_logits: torch.Tensor
    split_weights: torch.Tensor


def shape_head(raw: torch.Tensor, voxel_margin: float) -> ShapeHead:
    """Split the shape decoder's ``(N, 7)`` raw output (as `FlexiDualGridVaeDecoder.forward` does)."""
    return ShapeHead(vertices=(1 + 2 * voxel_margin) * torch.sigmoid(raw[:, 0:3]) - voxel_margin,
                     flag_logits=raw[:, 3:6], split_weights=F.softplus(raw[:, 6]))


def predicted_training_meshes(coords: torch.Tensor, head: ShapeHead, intersected: torch.Tensor, batch_size: int,
                              resolution: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Differentiable per-sample meshes: ground-truth topology, predicted vertices and split weights (spec 2.2).

    Each flagged edge's quad becomes 4 triangles around a split-weighted mid-point
    (`omnivox.ovoxel.dual_grid_to_mesh` with ``train=True``), so gradients reach vertices and weights.

    Args:
        coords: ``(N, 4) int32`` ``(b, x, y, z)`` at ``resolution``.
        head: decoder head on those rows.
        intersected: ``(N, 3) bool`` ground-truth flags.
        batch_size: number of samples.
        resolution: grid size (world position ``(xyz + v) / R - 0.5``).

    Returns:
        Per sample ``(vertices (V, 3) float32 world, faces (F, 3) int64)``.
    """
    from omnivox.ovoxel.extract import dual_grid_to_mesh

    meshes = []
    batch = coords[:, 0]
    for b in range(batch_size):
        rows = torch.nonzero(batch == b).flatten()
        v, f = dual_grid_to_mesh(coords[rows, 1:], head.vertices[rows].float(), intersected[rows].bool(),
                                 resolution, split_weight=head.split_weights[rows].float(), train=True,
                                 orient=False)
        meshes.append((v, f))
    return meshes


@dataclass(kw_only=True)
class ShapeVaeLossConfig:
    """Weights and options of the shape VAE loss (spec 2.3-2.4; names and defaults = the released config).

    ``lambda_render = 0`` (or ``render=None`` at call time) drops the render terms; the direct and KL terms are
    always on. ``radius_range`` and ``sample_posterior`` are omnivox keys (the reference hard-codes them).
    """

    lambda_intersected: float = 0.1
    lambda_vertice: float = 0.01
    lambda_subdiv: float = 0.1
    lambda_kl: float = 1e-6
    lambda_mask: float = 1.0
    lambda_depth: float = 10.0
    lambda_normal: float = 1.0
    lambda_ssim: float = 0.2
    lambda_lpips: float = 0.2
    lambda_render: float = 1.0
    render_resolution: int = 1024
    radius_range: tuple[float, float] = (2.0, 100.0)
    sample_posterior: bool = True


def shape_vae_losses(encoder: SparseUnetVaeEncoder, decoder: FlexiDualGridVaeDecoder, batch: dict,
                     config: ShapeVaeLossConfig | None = None, render: RenderFn | None = None,
                     lpips: LPIPS | None = None, generator: torch.Generator | None = None,
                     checkpointed: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The shape SC-VAE training loss of one (micro-)batch (spec 2.3).

    Args:
        encoder, decoder: the shape SC-VAE (`FlexiDualGridVaeEncoder`, `FlexiDualGridVaeDecoder`).
        batch: ``vertices``, ``intersected`` (and ``mesh`` for the render terms); see the module docstring.
        config: weights and options (default: the released ones).
        render: `omnivox.train.losses.RenderFn`; None (or ``lambda_render == 0``) drops the render terms.
        lpips: optional LPIPS network for the normal images.
        generator: CPU generator for the posterior noise and the cameras.
        checkpointed: activation checkpointing of the ConvNeXt blocks.

    Returns:
        ``(loss, terms)``: the weighted total and every unweighted term under its log key (``direct/intersected``,
        ``direct/vertice``, ``bce_sub{i}``, ``kl``, ``render/...``).
    """
    config = config or ShapeVaeLossConfig()
    vertices, intersected = batch["vertices"], batch["intersected"]
    posterior = call_as_forward(encoder, encode, shape_encoder_input(vertices, intersected), checkpointed)
    z = posterior.sample(generator) if config.sample_posterior else posterior.mean
    decoded = call_as_forward(decoder, decode_teacher_forced, z, posterior.downsample_maps, checkpointed)
    decoder = getattr(decoder, "module", decoder)
    head = shape_head(decoded.voxels.feats, decoder.config.voxel_margin)

    terms = {
        "direct/intersected": flag_loss(head.flag_logits, intersected.feats),
        "direct/vertice": vertex_loss(head.vertices, vertices.feats),
    }
    for i, term in enumerate(subdivision_losses(decoded.subdivisions)):
        terms[f"bce_sub{i}"] = term
    terms["kl"] = kl_divergence(posterior.mean.feats, posterior.logvar)
    loss = (config.lambda_intersected * terms["direct/intersected"] + config.lambda_vertice * terms["direct/vertice"]
            + config.lambda_subdiv * sum(terms[f"bce_sub{i}"] for i in range(len(decoded.subdivisions)))
            + config.lambda_kl * terms["kl"])

    if render is not None and config.lambda_render > 0:
        resolution = decoder.resolution
        if resolution is None:
            raise ValueError("the decoder needs a resolution (its config's resolution) for the render terms")
        if "mesh" not in batch:
            raise ValueError("the shape render terms need the ground-truth meshes: batch has no 'mesh' (set the "
                             "dataset's with_mesh=true, or lambda_render=0)")
        predicted = predicted_training_meshes(vertices.coords, head, intersected.feats, vertices.batch_size,
                                              resolution)
        cameras = sample_loss_cameras(vertices.batch_size, generator, config.radius_range, vertices.device)
        weights = RenderLossWeights(config.lambda_mask, config.lambda_depth, config.lambda_normal,
                                    config.lambda_ssim, config.lambda_lpips)
        ground_truth = [mesh_arrays(m, vertices.device) for m in batch["mesh"]]
        render_total, render_terms = shape_render_losses(predicted, ground_truth, cameras, config.render_resolution,
                                                         render, weights, lpips)
        terms.update(render_terms)
        loss = loss + config.lambda_render * render_total
    terms["loss"] = loss
    return loss, terms


# -------------------------------------------------------------------------------------- material VAE
@dataclass(kw_only=True)
class MaterialVaeLossConfig:
    """Weights and options of the material (PBR) VAE loss (spec 2.5; defaults = the released 256 stage).

    ``lambda_render > 0`` adds the render term (needs ``mesh`` in the batch and a renderer), see
    `material_render_losses`.
    """

    loss_type: str = "l1"
    lambda_kl: float = 1e-6
    lambda_render: float = 0.0
    lambda_ssim: float = 0.2
    lambda_lpips: float = 0.2
    render_resolution: int = 512
    radius_range: tuple[float, float] = (2.0, 100.0)
    sample_posterior: bool = True


def material_vae_losses(encoder: SparseUnetVaeEncoder, decoder: SparseUnetVaeDecoder, batch: dict,
                        config: MaterialVaeLossConfig | None = None, resolution: int | None = None,
                        render: AttributeRenderFn | None = None, lpips: LPIPS | None = None,
                        generator: torch.Generator | None = None,
                        checkpointed: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The material SC-VAE loss ``L1(y_hat, x) + lambda_kl KL [+ lambda_render render]`` (spec 2.5).

    The decoder follows the encoder's structure (``pred_subdiv = False``), so ``y_hat`` lies on ``x``'s rows.

    Args:
        encoder, decoder: the material SC-VAE.
        batch: ``x`` (and ``mesh`` for the render term).
        config: weights and options (default: the released 256 stage).
        resolution: O-Voxel grid size of ``x`` (needed by the render term only).
        render: `AttributeRenderFn` (default `render_surface_attributes` when ``lambda_render > 0``).
        lpips: optional LPIPS network.
        generator: CPU generator for the posterior noise and the cameras.
        checkpointed: activation checkpointing of the ConvNeXt blocks.

    Returns:
        ``(loss, {"rec", "kl"[, "render/bc/ssim", "render/mra/ssim", ...], "loss"})``.
    """
    config = config or MaterialVaeLossConfig()
    x = batch["x"]
    posterior = call_as_forward(encoder, encode, x, checkpointed)
    z = posterior.sample(generator) if config.sample_posterior else posterior.mean
    decoded = call_as_forward(decoder, decode_teacher_forced, z, posterior.downsample_maps, checkpointed)
    terms = {"rec": reconstruction_loss(decoded.voxels.feats, x.feats, config.loss_type),
             "kl": kl_divergence(posterior.mean.feats, posterior.logvar)}
    loss = terms["rec"] + config.lambda_kl * terms["kl"]
    if config.lambda_render > 0:
        if resolution is None or "mesh" not in batch:
            raise ValueError("the material render term needs the grid resolution and 'mesh' in the batch")
        cameras = sample_loss_cameras(x.batch_size, generator, config.radius_range, x.device)
        meshes = [mesh_arrays(m, x.device) for m in batch["mesh"]]
        render_total, render_terms = material_render_losses(
            x.coords, decoded.voxels.feats, x.feats, meshes, cameras, resolution, config, render, lpips)
        terms.update(render_terms)
        loss = loss + config.lambda_render * render_total
    terms["loss"] = loss
    return loss, terms


# An attribute render function: (vertices, faces, camera, image size, sample) -> (image (H, W, C), mask (H, W)),
# where ``sample(points (..., 3)) -> (..., C)`` gives the attributes at world positions.
AttributeRenderFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def render_surface_attributes(vertices: torch.Tensor, faces: torch.Tensor, camera, size: int,
                              sample: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Attributes sampled at the visible surface points of a mesh (the default `AttributeRenderFn`).

    The mesh is rasterised without gradients (only the attribute lookup needs them, spec 5.5); each covered
    pixel reads ``sample`` at its world position; uncovered pixels are 0.
    """
    from omnivox.render import render_mesh

    if faces.shape[0] == 0:
        return vertices.new_zeros(size, size, 1), vertices.new_zeros(size, size)
    with torch.no_grad():
        out = render_mesh(vertices, faces, camera.extrinsics, camera.intrinsics, size, near=float(camera.near[0]),
                          far=float(camera.far[0]), antialias_edges=False)
    covered = out["triangle_id"][0] >= 0
    image = sample(out["position"][0]) * covered.unsqueeze(-1)
    return image, covered.float()


def material_render_losses(coords: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor,
                           meshes: Sequence[tuple[torch.Tensor, torch.Tensor]], cameras, resolution: int,
                           config: MaterialVaeLossConfig, render: AttributeRenderFn | None = None,
                           lpips: LPIPS | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Render term of the material VAE: SSIM (+ LPIPS) of base colour and metallic/roughness/alpha images.

    ``0.2 (1 - SSIM(bc)) + 0.2 LPIPS(bc) + 0.2 (1 - SSIM(mra)) + 0.2 LPIPS(mra)`` (spec 2.5; no L1 term, as the
    reference's code). Both images show the ground-truth geometry from the same random camera, with attributes
    sampled trilinearly from the voxels (``value * 0.5 + 0.5``).

    Decision: the reference's ground-truth image samples the mesh's textures; ours samples the ground-truth
    *voxels*, so both sides go through the same voxel lookup and the term measures what the VAE can represent
    (a multi-material texture renderer is not needed). Texture detail finer than a voxel is not supervised.

    Args:
        coords: ``(N, 4) int32`` voxels ``(b, x, y, z)`` at ``resolution``.
        predicted, target: ``(N, 6)`` decoder output and input, in ``[-1, 1]``.
        meshes: per sample ``(vertices, faces)``, the ground-truth geometry (world units, unit box).
        cameras: `omnivox.train.losses.LossCameras`, one per sample.
        config: weights (``lambda_ssim``, ``lambda_lpips``) and ``render_resolution``.
        render: `AttributeRenderFn` (default `render_surface_attributes`).
        lpips: optional LPIPS network.
    """
    from omnivox.render import sample_sparse_volume

    render = render or render_surface_attributes
    pred_images, gt_images = [], []
    batch = coords[:, 0]
    for b, (v, f) in enumerate(meshes):
        rows = torch.nonzero(batch == b).flatten()
        xyz = coords[rows, 1:]
        both = torch.cat([predicted[rows], target[rows]], dim=1) * 0.5 + 0.5

        def sample(points, xyz=xyz, both=both):
            return sample_sparse_volume(points, xyz, both, resolution)

        image, _ = render(v, f, cameras[b], config.render_resolution, sample)
        if image.shape[-1] != 12:  # an empty mesh: nothing to compare
            image = image.new_zeros(config.render_resolution, config.render_resolution, 12)
        pred_images.append(image[..., :6])
        gt_images.append(image[..., 6:].detach())
    pred = torch.stack(pred_images).permute(0, 3, 1, 2).float()
    gt = torch.stack(gt_images).permute(0, 3, 1, 2).float()
    terms, total = {}, pred.new_zeros(())
    for name, channels in (("bc", slice(0, 3)), ("mra", slice(3, 6))):
        terms[f"render/{name}/ssim"] = 1 - ssim(pred[:, channels], gt[:, channels])
        total = total + config.lambda_ssim * terms[f"render/{name}/ssim"]
        if lpips is not None:
            terms[f"render/{name}/lpips"] = lpips(pred[:, channels] * 2 - 1, gt[:, channels] * 2 - 1)
            total = total + config.lambda_lpips * terms[f"render/{name}/lpips"]
    return total, terms


# ------------------------------------------------------------------------------------------- helpers
def mesh_arrays(mesh, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(vertices (V, 3) float32, faces (F, 3) int64)`` on ``device`` from a dataset's ``mesh`` entry.

    Accepts ``{"vertices", "faces"}`` dicts (`FlexiDualGridDataset`), objects with ``vertices`` / ``faces``
    attributes (an `omnivox.assets.Scene`) and ``(vertices, faces)`` pairs; numpy or torch.
    """
    if isinstance(mesh, dict):
        vertices, faces = mesh["vertices"], mesh["faces"]
    elif isinstance(mesh, (tuple, list)) and len(mesh) == 2:
        vertices, faces = mesh
    elif hasattr(mesh, "vertices") and hasattr(mesh, "faces"):
        vertices, faces = mesh.vertices, mesh.faces
    else:
        raise TypeError(f"mesh must be a dict with vertices/faces, a (vertices, faces) pair or a Scene, got "
                        f"{type(mesh).__name__}")
    return (torch.as_tensor(vertices).to(device=device, dtype=torch.float32),
            torch.as_tensor(faces).to(device=device, dtype=torch.int64))


def cpu_generator(generator: torch.Generator) -> torch.Generator:
    """A CPU generator seeded by one draw from ``generator`` (the trainer's per-micro-batch generator may live
    on the GPU; the losses draw their noise and cameras on the CPU so results do not depend on the device)."""
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
    return torch.Generator().manual_seed(int(seed))


def call_as_forward(model: torch.nn.Module, fn: Callable, *args):
    """Run ``fn(module, *args)`` as ``model``'s forward pass, through ``model.__call__``.

    Training runs the networks in a way their ``forward`` does not offer (teacher-forced decoding, checkpointed
    blocks). Going through ``__call__`` keeps a DDP wrapper's gradient synchronisation and any module hooks
    working: the wrapped module's ``forward`` is shadowed by an instance attribute for this one call.
    """
    module = getattr(model, "module", model)  # the DDP wrapper holds the network as .module
    module.forward = functools.partial(fn, module)
    try:
        return model(*args)
    finally:
        del module.forward
