"""The validity report of a game export: mesh hygiene per level of detail, UV statistics, textures, and the Khronos
glTF validator's verdict.

Mesh counts are taken on the welded surface (UV-seam copies of a vertex merged by index before the atlas split
them), which is what "closed" and "manifold" mean for a renderer or a physics engine; vertex counts are those of
the file. The validator is the Khronos ``gltf-validator`` npm package run through Node.js
(`find_gltf_validator`); without Node or the package the report says "validator not available".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import numba
import numpy as np

from omnivox.ovoxel import meshops
from omnivox.ovoxel.bake import texel_barycentrics
from omnivox.ovoxel.game_watertight import closed_manifold_problems

# Seconds the validator may take (a 20k-face file with 2048^2 textures takes about 2 s).
VALIDATOR_TIMEOUT_S = 300
# The validator script: the package's `validateBytes`, the same options as the test suite's validate.js.
_VALIDATE_SCRIPT = r"""
const fs = require("fs"), path = require("path");
const validator = require("gltf-validator");
const file = process.argv[1];
validator.validateBytes(new Uint8Array(fs.readFileSync(file)), {
  uri: path.basename(file), maxIssues: 1000,
  externalResourceFunction: (uri) => Promise.reject(new Error(`external resource requested: ${uri}`)),
}).then((report) => process.stdout.write(JSON.stringify(report)))
  .catch((error) => { console.error(String(error)); process.exit(1); });
"""


@dataclass
class LevelReport:
    """Counts for one level of detail.

    Attributes:
        triangles, vertices: in the file (vertices include UV-seam copies).
        surface_vertices: of the welded surface.
        manifold: no edge with more than two faces and no vertex with more than one fan of faces.
        watertight: manifold, no boundary edge, consistently wound (closed and orientable).
        non_manifold_edges, non_manifold_vertices, boundary_edges, boundary_loops, degenerate_faces: counts.
        uv_overlap_fraction: texels covered by more than one triangle over texels covered (interiors only).
        texel_density: texels per world unit (metre) along the surface: sqrt(texels covered / surface area).
    """

    triangles: int
    vertices: int
    surface_vertices: int
    manifold: bool
    watertight: bool
    non_manifold_edges: int
    non_manifold_vertices: int
    boundary_edges: int
    boundary_loops: int
    degenerate_faces: int
    uv_overlap_fraction: float
    texel_density: float


@dataclass
class GameReport:
    """What a game export wrote and how valid it is (``to_json`` gives the file beside the GLB).

    Attributes:
        path: the GLB.
        profile: the profile's fields.
        levels: one `LevelReport` per level of detail, finest first.
        textures: image name -> [width, height].
        alpha_mode, alpha_cutoff, double_sided: the material's.
        normal_map_coverage: share of level 0's texels that took a full-resolution normal (the rest are flat).
        normal_maps: per level, whether it has a normal map (``game.NORMAL_MAP_MAX_FACE_RATIO``).
        level_texture_sets: per level, which texture set it reads (0: level 0's; ``textures`` names set k's images
            ``base_color_k`` and ``orm_k``).
        validator: the Khronos validator's counts (``errors``, ``warnings``, ``infos``, ``hints``, ``version``) and
            its first messages, or ``{"available": False, "reason": ...}``.
        file_bytes: size of the GLB.
        timings: seconds per stage.
    """

    path: str = ""
    profile: dict = field(default_factory=dict)
    levels: list = field(default_factory=list)
    textures: dict = field(default_factory=dict)
    alpha_mode: str = "OPAQUE"
    alpha_cutoff: Optional[float] = None
    double_sided: bool = False
    normal_map_coverage: float = 0.0
    normal_maps: list = field(default_factory=list)
    level_texture_sets: list = field(default_factory=list)
    validator: dict = field(default_factory=dict)
    file_bytes: int = 0
    timings: dict = field(default_factory=dict)

    @property
    def validator_errors(self) -> Optional[int]:
        """The validator's error count, or None when it did not run."""
        return self.validator.get("errors") if self.validator.get("available") else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def _texture_set_note(self, index: int) -> str:
        textures = self.level_texture_sets[index] if index < len(self.level_texture_sets) else 0
        return f", own textures (set {textures})" if textures else ""

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = []
        for index, level in enumerate(self.levels):
            level = level if isinstance(level, LevelReport) else LevelReport(**level)
            state = "watertight" if level.watertight else ("manifold" if level.manifold else "non-manifold")
            lines.append(f"  lod{index}: {level.triangles} triangles, {level.vertices} vertices, {state}, "
                         f"{level.boundary_loops} boundary loops, {level.non_manifold_edges} non-manifold edges, "
                         f"{level.degenerate_faces} degenerate faces, UV overlap {level.uv_overlap_fraction:.2%}, "
                         f"{level.texel_density:.4g} texels/m"
                         f"{', normal map' if index < len(self.normal_maps) and self.normal_maps[index] else ''}"
                         f"{self._texture_set_note(index)}")
        sizes = ", ".join(f"{name} {w}x{h}" for name, (w, h) in self.textures.items())
        lines.append(f"  textures: {sizes}; alphaMode {self.alpha_mode}"
                     f"{', double-sided' if self.double_sided else ''}")
        if self.validator.get("available"):
            lines.append(f"  Khronos validator {self.validator.get('version', '')}: {self.validator['errors']} errors, "
                         f"{self.validator['warnings']} warnings, {self.validator['infos']} infos")
        else:
            lines.append(f"  Khronos validator not available ({self.validator.get('reason', 'unknown')})")
        return "\n".join(lines)


@numba.njit(cache=True)
def _coverage_counts(pix, faces, size):
    """Per texel, how many UV triangles hold its centre strictly inside (shared edges count for neither)."""
    counts = np.zeros(size * size, np.int32)
    corners = np.empty((3, 2))
    for f in range(faces.shape[0]):
        for k in range(3):
            corners[k, 0] = pix[faces[f, k], 0]
            corners[k, 1] = pix[faces[f, k], 1]
        twice_area = ((corners[1, 0] - corners[0, 0]) * (corners[2, 1] - corners[0, 1])
                      - (corners[1, 1] - corners[0, 1]) * (corners[2, 0] - corners[0, 0]))
        if abs(twice_area) <= 1e-12:
            continue
        x0 = max(0, int(np.ceil(min(corners[0, 0], corners[1, 0], corners[2, 0]))))
        x1 = min(size - 1, int(np.floor(max(corners[0, 0], corners[1, 0], corners[2, 0]))))
        y0 = max(0, int(np.ceil(min(corners[0, 1], corners[1, 1], corners[2, 1]))))
        y1 = min(size - 1, int(np.floor(max(corners[0, 1], corners[1, 1], corners[2, 1]))))
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                w0, w1, w2 = texel_barycentrics(corners, float(x), float(y), twice_area)
                if w0 > 1e-9 and w1 > 1e-9 and w2 > 1e-9:
                    counts[y * size + x] += 1
    return counts


def uv_coverage(uvs: np.ndarray, faces: np.ndarray, texture_size: int) -> tuple[float, int]:
    """(overlap fraction, texels covered): texels inside more than one UV triangle over texels inside any."""
    pix = np.ascontiguousarray(np.asarray(uvs, np.float64) * texture_size - 0.5)
    counts = _coverage_counts(pix, np.ascontiguousarray(faces, np.int64), int(texture_size))
    covered = int((counts > 0).sum())
    return (float((counts > 1).sum()) / covered if covered else 0.0), covered


def boundary_loops(faces: np.ndarray, num_vertices: int) -> int:
    """Connected sets of boundary edges (each open hole or outline counts once)."""
    _, edge_of, face_count = meshops.edge_table(faces)
    half = np.nonzero(face_count[edge_of] == 1)[0]
    if len(half) == 0:
        return 0
    start = faces.reshape(-1)[half]
    end = faces[:, [1, 2, 0]].reshape(-1)[half]
    labels = meshops.connected_components(num_vertices, np.stack([start, end], 1))
    return int(len(np.unique(labels[start])))


def level_report(surface_vertices: np.ndarray, surface_faces: np.ndarray, file_vertices: int, uvs: np.ndarray,
                 uv_faces: np.ndarray, texture_size: int) -> LevelReport:
    """`LevelReport` of one level: the welded surface for topology, the atlas for the UV numbers."""
    problems = closed_manifold_problems(surface_vertices, surface_faces)
    overlap, covered = uv_coverage(uvs, uv_faces, texture_size)
    area = float(meshops.face_areas(surface_vertices, surface_faces).sum())
    manifold = problems["non_manifold_edges"] == 0 and problems["non_manifold_vertices"] == 0
    return LevelReport(
        triangles=int(len(uv_faces)), vertices=int(file_vertices),
        surface_vertices=int(len(np.unique(surface_faces))), manifold=bool(manifold),
        watertight=bool(manifold and problems["boundary_edges"] == 0 and problems["inconsistent_edges"] == 0),
        non_manifold_edges=problems["non_manifold_edges"], non_manifold_vertices=problems["non_manifold_vertices"],
        boundary_edges=problems["boundary_edges"],
        boundary_loops=boundary_loops(surface_faces, len(surface_vertices)),
        degenerate_faces=problems["degenerate_faces"], uv_overlap_fraction=overlap,
        texel_density=float(np.sqrt(covered / area)) if area > 0 else 0.0,
    )


def find_gltf_validator(folder: Union[str, os.PathLike, None] = None) -> tuple[Optional[str], Optional[Path], str]:
    """``(node, folder holding node_modules/gltf-validator, "")``, or Nones and the reason.

    ``folder`` (else the ``OMNIVOX_GLTF_VALIDATOR`` environment variable, else the source checkout's
    ``tests/gltf_validator``) must hold ``node_modules/gltf-validator`` (``npm ci`` there installs it).
    """
    node = shutil.which("node")
    if node is None:
        return None, None, "Node.js is not installed"
    candidates = [folder, os.environ.get("OMNIVOX_GLTF_VALIDATOR"),
                  Path(__file__).resolve().parents[2] / "tests" / "gltf_validator"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "node_modules" / "gltf-validator").is_dir():
            return node, Path(candidate), ""
    return None, None, "the gltf-validator npm package was not found (run `npm ci` in tests/gltf_validator)"


def run_gltf_validator(path: Union[str, os.PathLike], folder: Union[str, os.PathLike, None] = None) -> dict:
    """The Khronos validator's verdict on ``path``: counts, version and up to 20 messages, or why it did not run."""
    node, where, reason = find_gltf_validator(folder)
    if node is None:
        return {"available": False, "reason": reason}
    env = dict(os.environ, NODE_PATH=str(where / "node_modules"))
    try:
        result = subprocess.run([node, "-e", _VALIDATE_SCRIPT, str(Path(path).resolve())], capture_output=True,
                                text=True, timeout=VALIDATOR_TIMEOUT_S, env=env, cwd=str(where))
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"available": False, "reason": f"the validator did not finish: {error}"}
    if result.returncode != 0:
        return {"available": False, "reason": f"the validator failed: {result.stderr.strip()[:300]}"}
    report = json.loads(result.stdout)
    issues = report.get("issues", {})
    return {
        "available": True,
        "version": report.get("validatorVersion", ""),
        "errors": int(issues.get("numErrors", 0)),
        "warnings": int(issues.get("numWarnings", 0)),
        "infos": int(issues.get("numInfos", 0)),
        "hints": int(issues.get("numHints", 0)),
        "messages": [f"{m.get('severity')}: {m.get('code')} {m.get('pointer', '')} {m.get('message', '')}".strip()
                     for m in issues.get("messages", [])[:20]],
    }
