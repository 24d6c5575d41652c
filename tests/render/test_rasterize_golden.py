"""Golden images of real assets (normals, depth, mask at 64 x 64), compared with a tolerance.

Regenerate after a deliberate change with ``python -m tests.render.test_rasterize_golden`` (and look at the
PNGs it writes to /tmp/omnivox-golden before committing the new .npz files).
"""

import math
from pathlib import Path

import numpy as np
import torch

from omnivox.render import orbit_cameras, render_mesh

GOLDEN = Path(__file__).resolve().parent / "golden"
SIZE = 64
# (asset path under shared/assets, file stem); Y-up files, which load_asset turns Z-up for the Z-up cameras.
CASES = [("mesh/spot/spot_triangulated.obj", "spot"), ("gltf/Fox.glb", "fox"),
         ("gltf/SheenChair/SheenChair.gltf", "chair")]


def render_case(assets: Path, relative: str) -> dict:
    from omnivox.assets import load_asset

    scene = load_asset(assets / relative).normalized()
    vertices = torch.from_numpy(scene.vertices).float()  # Z-up (load_asset)
    faces = torch.from_numpy(scene.faces).long()
    extrinsics, intrinsics = orbit_cameras(2, radius=2.0, fov=math.radians(40), elevation=math.radians(20),
                                           yaw_offset=math.radians(30))
    out = render_mesh(vertices, faces, extrinsics, intrinsics, SIZE, backend="torch")
    mask = out["mask"].clamp(0, 1)
    normal = (out["normal"] * 0.5 + 0.5) * mask.unsqueeze(-1)
    depth = out["depth"] / 3.0
    return {"mask": (mask * 255).round().to(torch.uint8).numpy(),
            "normal": (normal.clamp(0, 1) * 255).round().to(torch.uint8).numpy(),
            "depth": (depth.clamp(0, 1) * 255).round().to(torch.uint8).numpy()}


def render_textured_spot(assets: Path) -> np.ndarray:
    """Spot with its texture: per-corner UVs, mipmapped lookups (scene UVs have v up: image_coordinates)."""
    from PIL import Image

    from omnivox.assets import load_asset
    from omnivox.assets.scene import image_coordinates

    folder = assets / "mesh/spot"
    scene = load_asset(folder / "spot_triangulated.obj").normalized()
    vertices = torch.from_numpy(scene.vertices).float()  # Z-up (load_asset)
    faces = torch.from_numpy(scene.faces).long()
    uvs = image_coordinates(torch.from_numpy(scene.uvs[0]).float())
    with Image.open(folder / "spot_texture.png") as image:
        texture = torch.from_numpy(np.array(image.convert("RGB"))).float() / 255
    extrinsics, intrinsics = orbit_cameras(2, radius=2.0, fov=math.radians(40), elevation=math.radians(20),
                                           yaw_offset=math.radians(30))
    out = render_mesh(vertices, faces, extrinsics, intrinsics, SIZE, uvs=uvs, texture=texture, backend="torch")
    return (out["texture"].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def test_golden_textured_render(assets):
    got = render_textured_spot(assets).astype(np.int32)
    ref = np.load(GOLDEN / "spot_textured.npz")["texture"].astype(np.int32)
    diff = np.abs(got - ref)
    assert diff.mean() < 0.5 and (diff > 8).mean() < 0.005
    # The texture really is sampled: the cow shows many distinct colours, not a flat fill.
    assert len(np.unique(got.reshape(-1, 3) // 16, axis=0)) > 20


def test_golden_renders(assets):
    for relative, stem in CASES:
        got = render_case(assets, relative)
        ref = np.load(GOLDEN / f"{stem}.npz")
        for key in ("mask", "normal", "depth"):
            diff = np.abs(got[key].astype(np.int32) - ref[key].astype(np.int32))
            # Tolerance: rounding and summation order may move values by a few levels at silhouette pixels.
            assert diff.mean() < 0.5, f"{stem} {key}: mean difference {diff.mean():.3f} levels"
            assert (diff > 8).mean() < 0.005, f"{stem} {key}: {(diff > 8).mean():.4f} of pixels differ by > 8"
        coverage = got["mask"].astype(np.float64).mean() / 255
        assert 0.05 < coverage < 0.6, f"{stem}: implausible coverage {coverage:.3f}"


def _write_goldens(assets: Path) -> None:
    from PIL import Image

    GOLDEN.mkdir(exist_ok=True)
    preview = Path("/tmp/omnivox-golden")
    preview.mkdir(exist_ok=True)
    for relative, stem in CASES:
        images = render_case(assets, relative)
        np.savez_compressed(GOLDEN / f"{stem}.npz", **images)
        row = np.concatenate([np.concatenate([images["normal"][b], np.repeat(images["depth"][b][..., None], 3, -1),
                                              np.repeat(images["mask"][b][..., None], 3, -1)], 1)
                              for b in range(images["mask"].shape[0])], 0)
        Image.fromarray(row).resize((row.shape[1] * 3, row.shape[0] * 3), Image.NEAREST).save(preview / f"{stem}.png")
    textured = render_textured_spot(assets)
    np.savez_compressed(GOLDEN / "spot_textured.npz", texture=textured)
    row = np.concatenate(list(textured), 1)
    Image.fromarray(row).resize((row.shape[1] * 3, row.shape[0] * 3), Image.NEAREST).save(preview / "spot_textured.png")


if __name__ == "__main__":
    from tests.conftest import ASSETS

    _write_goldens(ASSETS)
