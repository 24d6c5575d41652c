"""The gradio app in a real browser: `omnivox app` in its own process, driven by headless Chromium (Playwright).

Needs Node.js with npm (the test runs `npm ci` in tests/app/browser for playwright-core) and Chromium
(/usr/bin/chromium, or $CHROMIUM); skipped locally without them, a failure under CI (`.ci/run` installs Chromium).
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import trimesh
from PIL import Image

from tests.app.conftest import CROWN, Process
from tests.conftest import HANG_GUARD_S, node_with

HARNESS = Path(__file__).parent / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# The game-ready texturing flow: a closed CAD part of 3,476 faces, so a budget of 1,000 binds and leaves a level
# coarse enough (at most 0.3 of the full surface's faces) for the normal map to be baked.
GAME_MESH = "mesh/featuretype.STL"
GAME_FACES = 1_000
GAME_LODS = 1


def _browser_or_skip() -> str:
    """`node` with playwright-core (`npm ci` in tests/app/browser on first use), once Chromium is known present."""
    if not Path(CHROMIUM).exists():
        reason = f"no Chromium at {CHROMIUM} (Debian/Ubuntu: apt-get install chromium; or set CHROMIUM=path)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but there is {reason}")
        pytest.skip(reason)
    return node_with(HARNESS, "playwright-core")


def _assert_viewer_drew(screenshot: Path) -> None:
    """The viewer canvas (white background) shows the model. The random-weight test pipeline makes hundreds of
    small fragments spread over the unit box, so look for drawn pixels spread over many places of the canvas, in
    many colours (lit and textured), rather than for one large blob. A blank viewer has none."""
    viewer = np.asarray(Image.open(screenshot).convert("RGB")).astype(np.int16)
    viewer = viewer[40:]  # below the label and the buttons that gradio lays over the canvas
    drawn = np.abs(viewer - 255).max(axis=2) > 40
    assert drawn.sum() > 100, f"{screenshot.name}: viewer looks blank ({drawn.sum()} drawn pixels)"
    tiles = {(y // 32, x // 32) for y, x in zip(*np.nonzero(drawn), strict=True)}
    assert len(tiles) > 8, f"{screenshot.name}: drawn pixels sit in only {len(tiles)} 32x32 tiles"
    assert len(np.unique(viewer[drawn], axis=0)) > 20, f"{screenshot.name}: one flat colour"


def _assert_glb(path: str, min_faces: int = 100) -> trimesh.Trimesh:
    assert Path(path).read_bytes()[:4] == b"glTF"
    mesh = trimesh.load(Path(path), force="mesh")
    assert len(mesh.faces) >= min_faces and mesh.visual.material.baseColorTexture is not None
    return mesh


def _accessor(gltf: pygltflib.GLTF2, index: int) -> np.ndarray:
    """A float32 accessor of a GLB's binary chunk, one row per element (read with pygltflib and numpy only)."""
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    assert accessor.componentType == pygltflib.FLOAT and not view.byteStride
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[accessor.type]
    start = (view.byteOffset or 0) + (accessor.byteOffset or 0)
    return np.frombuffer(gltf.binary_blob(), np.float32, accessor.count * width, start).reshape(-1, width)


def _assert_game_glb(path: str, source: trimesh.Trimesh, faces: int, lods: int) -> None:
    """The game-ready file, read with pygltflib: ``MSFT_lod`` with ``lods`` coarser levels on the scene's node,
    each level within its budget, normal map and occlusion on every material, and level 0's ``TANGENT``s unit
    length, perpendicular to its normals, with handedness +-1; trimesh finds the user's mesh in place."""
    gltf = pygltflib.GLTF2.load_binary(path)
    assert "MSFT_lod" in gltf.extensionsUsed
    root = gltf.nodes[gltf.scenes[gltf.scene or 0].nodes[0]]
    levels = [root] + [gltf.nodes[k] for k in root.extensions["MSFT_lod"]["ids"]]
    assert len(levels) == 1 + lods
    level_faces = [gltf.accessors[gltf.meshes[node.mesh].primitives[0].indices].count // 3 for node in levels]
    assert 0 < level_faces[0] <= faces < len(source.faces), level_faces  # the budget bound and held
    assert all(coarse < fine for fine, coarse in zip(level_faces, level_faces[1:])), level_faces
    for material in gltf.materials:
        assert material.normalTexture is not None and material.occlusionTexture is not None
    attributes = gltf.meshes[root.mesh].primitives[0].attributes
    assert attributes.TANGENT is not None, "a normal-mapped level needs TANGENT"
    tangents, normals = _accessor(gltf, attributes.TANGENT), _accessor(gltf, attributes.NORMAL)
    assert len(tangents) == len(normals) == gltf.accessors[attributes.POSITION].count
    np.testing.assert_allclose(np.linalg.norm(tangents[:, :3], axis=1), 1.0, atol=1e-3)
    assert np.abs((tangents[:, :3] * normals).sum(axis=1)).max() < 1e-2
    assert set(np.unique(tangents[:, 3])) <= {-1.0, 1.0}
    scene = trimesh.load(Path(path), file_type="glb")
    level0 = max(scene.geometry.values(), key=lambda g: len(g.faces))
    assert abs(level0.bounds - source.bounds).max() < 2e-2 * source.scale


def test_app_in_the_browser(test_weights, assets, tmp_path):
    """Image to 3D, then texturing (plain, then game-ready with its budget and levels set on the page), through
    the page: upload, choose options, run, watch progress, see the model in the 3D viewer, download the GLB."""
    node = _browser_or_skip()
    app = Process(["app", "--weights", str(test_weights), "--device", "cpu", "--preview-frames", "4",
                   "--preview-size", "96"], tmp_path / "app.log", "/")
    try:
        result = subprocess.run([node, str(HARNESS / "app_flow.js"), app.url, str(assets / CROWN),
                                 str(assets / "mesh/wallhole.obj"), str(assets / GAME_MESH), str(GAME_FACES),
                                 str(GAME_LODS), str(tmp_path)],
                                capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=HARNESS)
    finally:
        app.stop()
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["errors"] == [], (summary, app.log_text())

    statuses = summary["statuses"]
    assert statuses[-1].startswith("Done"), statuses
    assert any(s.startswith("Running: stage ") for s in statuses), statuses  # progress per stage was shown
    assert summary["video"] == 1 and summary["panel"] == 1  # turntable and PBR panel appeared
    _assert_glb(summary["download"])
    _assert_viewer_drew(tmp_path / "generate_viewer.png")
    page = np.asarray(Image.open(tmp_path / "generate.png").convert("L"))
    assert page.std() > 10  # the page rendered (not a blank or error screen)

    assert summary["texture_statuses"][-1].startswith("Done"), summary["texture_statuses"]
    source = trimesh.load(assets / "mesh/wallhole.obj", force="mesh")
    textured = _assert_glb(summary["texture_download"], min_faces=len(source.faces))
    assert abs(textured.bounds - source.bounds).max() < 1e-3 * source.scale  # the user's mesh, in place
    _assert_viewer_drew(tmp_path / "texture_viewer.png")

    assert (summary["game_faces_set"], summary["game_lods_set"]) == (GAME_FACES, GAME_LODS)
    assert summary["game_statuses"][-1].startswith("Done"), summary["game_statuses"]
    assert any("game export" in s for s in summary["game_statuses"]), summary["game_statuses"]
    _assert_game_glb(summary["game_download"], trimesh.load(assets / GAME_MESH, force="mesh"), GAME_FACES, GAME_LODS)
    _assert_viewer_drew(tmp_path / "texture_game_viewer.png")
