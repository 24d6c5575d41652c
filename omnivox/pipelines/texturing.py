"""Mesh + image -> PBR material: `TexturingPipeline` (spec models.md 9.6, ``texturing_pipeline.json``).

1. The mesh is brought into the Z-up data frame the models were trained in (``omnivox.assets.frames``: a Y-up
   mesh is turned ``(x, y, z) -> (x, -z, y)``) and fitted into the unit box (centre, ``0.99999 / longest side``).
2. It is converted to an O-Voxel dual grid at ``resolution`` and encoded by the shape SC-VAE encoder.
3. The material latent is sampled by the texture flow (512 model iff ``resolution == 512``) with the normalised
   shape latent as ``concat_cond``, conditioned on the image (DINOv3 at 512 or 1024 pixels).
4. The material decoder upsamples through the encoder's own downsampling maps, so it ends on exactly the
   converted voxels (spec 9.6), and the PBR voxels are baked into textures.

Unlike the reference, which always re-meshes and unwraps, the user's geometry is kept: with UVs (and
``keep_uvs``), the material is baked into the mesh's own UV layout through
``omnivox.ovoxel.uv_layout.bake_to_uv_layout``, so vertices, faces and UVs are the user's; without UVs the mesh goes
through the O-Voxel exporter's clean-up and unwrap (``to_glb``). Either way the result is returned in the
user's original coordinates (the normalisation and the turn are undone: a Y-up mesh's Z-up -> Y-up turn is the
GLB writer's own).

With a game profile (``run(..., profile=GameProfile(...))``, ``omnivox texture --profile game``) the result is a
game-ready ``omnivox.ovoxel.game.GameAsset`` made by the same code as a generated asset's game export
(`omnivox.ovoxel.game.export_game`): the user's mesh is cleaned and decimated to the triangle budget, unwrapped,
baked from the PBR voxels, given a tangent-space normal map baked from the user's full-resolution surface (and
ambient occlusion), levels of detail and, if asked, a watertight surface rebuilt from its voxels; the user's UVs
cannot survive decimation, so ``keep_uvs`` does not apply. It too comes back in the user's units and frame, and
``GameAsset.save(path)`` writes the GLB with its validity report beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch

from omnivox.pipelines.base import MultiView, PipelineBase, StageCallback, canonical_view_order, views_of
from omnivox.pipelines.memory import decoder_stage, encoder_stage, flow_stage, image_encoder_stage, parse_memory
from omnivox.pipelines.preprocess import BackgroundRemover
from omnivox.pipelines.samplers import check_multiview_mode
from omnivox.pipelines.types import TYPES
from omnivox.sparse.tensor import SparseTensor

if TYPE_CHECKING:
    import trimesh

    from omnivox.ovoxel.game import GameAsset, GameProfile

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
RESOLUTIONS = (256, 512, 1024, 1536)


def _mesh_arrays(mesh, up_axis: Optional[str]) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], str]:
    """``(vertices (V, 3) Z-up, faces (F, 3), per-corner uvs (F, 3, 2) or None, the mesh's own up axis)`` from a
    path, Scene, trimesh or tuple (arrays and trimeshes are Y-up unless ``up_axis`` says otherwise)."""
    from omnivox.assets import load_asset
    from omnivox.assets.frames import check_up_axis, to_data_frame
    from omnivox.assets.scene import Scene

    if isinstance(mesh, (str, Path)):
        mesh = load_asset(mesh, up_axis=up_axis)
    if isinstance(mesh, Scene):  # Z-up already (load_asset), remembering its file's up axis
        uvs = mesh.uvs[0] if mesh.uvs else None
        if uvs is not None and not np.any(uvs):
            uvs = None  # no primitive has UVs (the loader fills zeros)
        return mesh.vertices.astype(np.float32), mesh.faces.astype(np.int64), uvs, mesh.source_up_axis
    source_up = check_up_axis("y" if up_axis is None else up_axis)
    if isinstance(mesh, tuple) and len(mesh) in (2, 3):
        vertices = np.asarray(mesh[0], np.float32)
        faces = np.asarray(mesh[1], np.int64)
        uvs = None
        if len(mesh) == 3 and mesh[2] is not None:
            uv = np.asarray(mesh[2], np.float32)
            uvs = uv[faces] if uv.shape == (len(vertices), 2) else uv
        return to_data_frame(vertices, source_up), faces, uvs, source_up
    if hasattr(mesh, "vertices") and hasattr(mesh, "faces"):  # trimesh.Trimesh
        vertices = np.asarray(mesh.vertices, np.float32)
        faces = np.asarray(mesh.faces, np.int64)
        uv = getattr(getattr(mesh, "visual", None), "uv", None)
        uvs = np.asarray(uv, np.float32)[faces] if uv is not None and len(uv) == len(vertices) else None
        return to_data_frame(vertices, source_up), faces, uvs, source_up
    raise TypeError("mesh must be a file path, an omnivox Scene, a trimesh.Trimesh or (vertices, faces[, uvs])")


def _weld_corners(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray):
    """Per-vertex arrays for a mesh with per-corner UVs: one vertex per distinct (position index, uv) pair."""
    corner_vertex = faces.reshape(-1)
    corner_uv = uvs.reshape(-1, 2)
    keys = np.concatenate([corner_vertex[:, None].astype(np.float64), corner_uv.astype(np.float64)], axis=1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    return vertices[unique[:, 0].astype(np.int64)], inverse.reshape(-1, 3).astype(np.int64), \
        unique[:, 1:].astype(np.float32)


class TexturingPipeline(PipelineBase):
    """TRELLIS.2 texturing: a PBR material for the user's mesh from one image.

    Example:
        >>> pipe = TexturingPipeline.from_pretrained("TRELLIS.2-4B")                      # doctest: +SKIP
        >>> mesh = pipe.run("chair.obj", "chair.png", seed=1)                             # doctest: +SKIP
        >>> from omnivox.ovoxel.export import save_glb; save_glb(mesh, "chair.glb")      # doctest: +SKIP
    """

    @classmethod
    def from_pretrained(cls, path: PathLike, *, device=None, dtype: Optional[torch.dtype] = None, max_memory=None,
                        background_model: Union[PathLike, BackgroundRemover, None] = None,
                        image_encoder: Optional[PathLike] = None, model_paths: Optional[dict] = None,
                        weights_dtype: Optional[str] = None) -> "TexturingPipeline":
        """Open a weights folder holding ``texturing_pipeline.json`` (arguments as
        `ImageTo3DPipeline.from_pretrained`)."""
        return cls._open_folder(path, "texturing_pipeline.json", device=device, dtype=dtype, max_memory=max_memory,
                                background_model=background_model, image_encoder=image_encoder,
                                model_paths=model_paths, weights_dtype=weights_dtype)

    @torch.no_grad()
    def texture_voxels(self, vertices: np.ndarray, faces: np.ndarray, image=None, *,
                       images: Optional[Sequence] = None, multiview_mode: Optional[str] = None, seed: int = 0,
                       generator: Optional[torch.Generator] = None, resolution: int = 1024,
                       sampler_params: Optional[dict] = None,
                       callback: Optional[StageCallback] = None, preprocess: bool = True, max_memory=None):
        """The PBR voxels of an already normalised, Z-up mesh (``image`` or ``images``: see `run`).

        Returns:
            ``(coords (N, 3) int32, attributes (N, 6) float32 in [0, 1], plan)`` on the ``resolution^3`` grid.
        """
        from omnivox.ovoxel.dual_grid import mesh_to_dual_grid, to_local

        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed))
        elif not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator (all noise is drawn on the CPU), got "
                             f"{generator!r}")
        views = views_of(image, images, "texturing")
        if not views:
            raise ValueError("texturing needs a reference image (image=) or several (images=)")
        mode = check_multiview_mode(multiview_mode or "stochastic")
        pictures = self.prepare_views(views, preprocess)
        if mode == "multidiffusion" and len(pictures) > 1:
            pictures = [pictures[k] for k in canonical_view_order(pictures)]
        coords, dual, intersected = mesh_to_dual_grid(vertices, faces, resolution)
        if len(coords) == 0:
            raise ValueError("the mesh produced no voxels (is it empty or degenerate?)")
        kind = TYPES["512"] if resolution == 512 else TYPES["1024"]  # the texture flow and condition of that type
        flow_role, cond_size = kind.tex_flow, kind.condition_size
        latent_estimate = max(1, len(coords) // 256)
        budget = parse_memory(max_memory) if max_memory is not None else self.max_memory
        width = self._config_of(flow_role).model_channels
        dec_width = self._config_of("tex_slat_decoder").model_channels[0]

        def planned(copies: int):
            # Several views: every view's condition stays prepared; batched multidiffusion runs `copies` copies.
            return self._plan([image_encoder_stage(("image_cond_model",), kind.condition_tokens,
                                                   self._config_of("image_cond_model").hidden_size),
                               encoder_stage("encode", ("shape_slat_encoder",), latent_estimate, dec_width),
                               flow_stage("tex_slat", (flow_role,), copies * latent_estimate, width,
                                          len(pictures) * kind.condition_tokens),
                               decoder_stage("decode", ("tex_slat_decoder",), latent_estimate, dec_width)], budget)

        plan, multiview = planned(1), MultiView(mode, batched=False)
        if len(pictures) > 1 and mode == "multidiffusion" and self.batch_guidance:
            batched = planned(len(pictures))
            if not batched.offload and all(stage.token_chunk is None for stage in batched.stages):
                plan, multiview = batched, MultiView(mode, batched=True)
        plan.check_budget()  # a budget no plan meets: BudgetError (what it would need) before any work
        self.runtime.last_plan = plan
        tokens = [self.encode_image(picture, cond_size, plan.offload) for picture in pictures]
        cond = tokens[0] if len(tokens) == 1 else torch.cat(tokens)

        voxel_coords = torch.as_tensor(np.asarray(coords), dtype=torch.int32)
        batch_coords = torch.cat([torch.zeros(len(voxel_coords), 1, dtype=torch.int32), voxel_coords], 1)
        local = torch.as_tensor(np.asarray(to_local(coords, dual, 1.0 / resolution)), dtype=torch.float32)
        flags = torch.as_tensor(np.asarray(intersected), dtype=torch.bool)
        with self.models.on_device(["shape_slat_encoder"], plan.offload) as models:
            encoder = models["shape_slat_encoder"]
            device_coords = batch_coords.to(self.device)
            encoded = encoder(SparseTensor.from_coords(device_coords, local.to(self.device)),
                              SparseTensor.from_coords(device_coords, flags.to(self.device)))
        shape_norm, tex_norm = self._normalization("shape"), self._normalization("tex")
        latent_coords = encoded.mean.coords.cpu()
        feats = self.sample_latent(flow_role, latent_coords, cond, generator,
                                   self.sampler_params("tex_slat", sampler_params), plan, "tex_slat",
                                   concat_cond=shape_norm.normalize(encoded.mean.feats.cpu()), callback=callback,
                                   views=multiview)
        tex = tex_norm.denormalize(feats)
        with self.models.on_device(["tex_slat_decoder"], plan.offload) as models:
            decoder = models["tex_slat_decoder"]
            out = decoder(SparseTensor.from_coords(latent_coords.to(self.device), tex.to(self.device)),
                          downsample_maps=encoded.downsample_maps, chunk_voxels=plan.stage("decode").chunk_voxels)
        if not torch.equal(out.voxels.coords.cpu(), batch_coords):
            raise RuntimeError("internal: the material decoder did not return the encoder's voxels")
        pbr = (out.voxels.feats.float() * 0.5 + 0.5).clamp(0, 1).cpu().numpy()
        return voxel_coords, pbr, plan

    def run(self, mesh, image=None, *, images: Optional[Sequence] = None, multiview_mode: Optional[str] = None,
            seed: int = 0, generator: Optional[torch.Generator] = None, resolution: int = 1024,
            texture_size: int = 2048,
            keep_uvs: bool = True, decimation_target: Optional[int] = None, up_axis: Optional[str] = None,
            sampler_params: Optional[dict] = None, callback: Optional[StageCallback] = None, preprocess: bool = True,
            max_memory=None, profile: Optional["GameProfile"] = None) -> Union["trimesh.Trimesh", "GameAsset"]:
        """Texture ``mesh`` after ``image`` (or after several reference ``images`` of it).

        Args:
            mesh: a mesh file (GLB/glTF/OBJ/PLY/STL), an omnivox ``Scene``, a ``trimesh.Trimesh`` or
                ``(vertices, faces[, uvs])`` (uvs per vertex ``(V, 2)`` or per corner ``(F, 3, 2)``).
            image: the reference image (see `ImageTo3DPipeline.run`).
            images: instead of ``image``, several reference images of the object (each preprocessed on its
                own); the texture flow is conditioned on them as ``multiview_mode`` says (``"stochastic"``, the
                default, or ``"multidiffusion"``; see `ImageTo3DPipeline.run` and docs/multiview.md).
            seed: noise seed (of a private CPU generator).
            generator: a CPU ``torch.Generator`` to draw the noise from instead of ``seed``'s.
            resolution: O-Voxel grid of the shape encoding (the reference's default 1024; 512 selects the 512
                texture flow).
            texture_size: side of the baked textures.
            keep_uvs: bake into the mesh's own UVs when it has them (else unwrap).
            decimation_target: only for the unwrap path (None keeps every face).
            up_axis: the mesh's up axis, ``"y"`` or ``"z"``: for a file, None takes its format's (as
                `omnivox.assets.load_asset`); a Scene is Z-up already (this is ignored); arrays and trimeshes
                are Y-up unless told ``"z"``. The model sees the mesh Z-up, as it was trained.
            profile: an ``omnivox.ovoxel.game.GameProfile`` for a game-ready result (module docstring): its
                ``faces``, ``texture_size``, levels, maps and watertight option apply; ``texture_size``,
                ``keep_uvs`` and ``decimation_target`` do not.

        Returns:
            A textured ``trimesh.Trimesh`` in the user's own coordinates and frame (a Y-up mesh comes back as it
            was; a Z-up one keeps its Z-up coordinates) with a PBR material; write it with
            ``omnivox.ovoxel.export.save_glb``. With ``profile``, a ``GameAsset`` whose file has the same
            coordinates; write it with its ``save(path)``.
        """
        from omnivox.assets.scene import normalize_vertices
        from omnivox.ovoxel import export
        from omnivox.ovoxel.uv_layout import bake_to_uv_layout

        from omnivox.assets.frames import check_up_axis, from_data_frame, y_up_to_z_up

        if up_axis is not None:
            check_up_axis(up_axis)
        if profile is not None:
            from omnivox.ovoxel.game import GameProfile

            if not isinstance(profile, GameProfile):
                raise TypeError(f"profile must be an omnivox.ovoxel.game.GameProfile, got {type(profile).__name__}")
            if decimation_target is not None:
                raise ValueError("decimation_target does not apply with a game profile (its budget is "
                                 "profile.faces)")
        views = views_of(image, images, "texturing")  # checked before the mesh is loaded
        if not views:
            raise ValueError("texturing needs a reference image (image=) or several (images=)")
        vertices, faces, uvs, source_up = _mesh_arrays(mesh, up_axis)
        model_frame, center, scale = normalize_vertices(vertices, source="mesh")  # Z-up, in the unit box
        coords, attributes, _ = self.texture_voxels(model_frame, faces, images=views, multiview_mode=multiview_mode,
                                                    seed=seed, generator=generator,
                                                    resolution=resolution,
                                                    sampler_params=sampler_params, callback=callback,
                                                    preprocess=preprocess, max_memory=max_memory)
        if profile is not None:
            return self._game_asset(model_frame, faces, coords.numpy(), attributes, resolution, profile, center,
                                    scale, source_up, callback)
        if keep_uvs and uvs is not None:
            if callback is not None:
                callback("export", 0, 1)
            welded_vertices, welded_faces, welded_uvs = _weld_corners(model_frame, faces, uvs)
            result = bake_to_uv_layout(welded_vertices, welded_faces, welded_uvs, coords.numpy(), attributes,
                                       resolution, texture_size=texture_size, device=self.device)
            if callback is not None:
                callback("export", 1, 1)
        else:
            result = export.to_glb(model_frame, faces, coords.numpy(), attributes, resolution,
                                   decimation_target=decimation_target, texture_size=texture_size,
                                   device=self.device, progress=callback)
        # Back to the user's units, place and frame (the writer turned the data frame Y-up: undo that first).
        data_frame = y_up_to_z_up(np.asarray(result.vertices, np.float64)) / float(scale) + center.astype(np.float64)
        result.vertices = from_data_frame(data_frame, source_up).astype(np.float32)
        return result

    def _game_asset(self, model_frame: np.ndarray, faces: np.ndarray, coords: np.ndarray, attributes: np.ndarray,
                    resolution: int, profile: "GameProfile", center: np.ndarray, scale: float, source_up: str,
                    callback: Optional[StageCallback]) -> "GameAsset":
        """The game export of the normalised mesh and its PBR voxels, moved back to the user's units and frame.

        The file of a plain result holds ``from_data_frame(data, source_up)`` (``data``: the data-frame points in
        the user's units); the game writer turns its Z-up levels to Y-up itself, so the levels must hold
        ``y_up_to_z_up`` of that: the data-frame points for a Y-up mesh, those points turned for a Z-up one.
        """
        from omnivox.assets.frames import y_up_to_z_up
        from omnivox.ovoxel.dual_grid import weld_vertices
        from omnivox.ovoxel.game import export_game

        # Files split vertices along UV seams (and STL stores every triangle apart): welded, the surface is one
        # sheet again, so decimation can collapse across the old seams and the export's checks see its true holes.
        vertices, welded_faces = weld_vertices(model_frame, faces)
        game = export_game(vertices, welded_faces, coords, attributes, resolution, profile=profile,
                           device=self.device, progress=callback)
        turn = np.eye(3) if source_up == "y" else y_up_to_z_up(np.eye(3)).T  # columns: the turned axes
        return game.transformed(1.0 / float(scale), turn @ np.asarray(center, np.float64), turn)
