"""Kit for timing the reference's native extensions next to ours on a GPU machine (issues #16 and #19).

FOR MEASUREMENT ONLY: the kit is an ignored build input (``.refkit/``), never committed, never imported by
``omnivox``. Two commands, both run here on the CPU:

``pack``
    Writes ``.refkit/reference_src.tar.xz`` from the local source mirrors (``fetch`` tool, ``/work/.mirror``):
    only what the builds need -- FlexGEMM (python package, CUDA ext, autotune cache), CuMesh (package, CUDA/C++
    sources, xatlas, its cubvh submodule with the Eigen headers), nvdiffrast (package, csrc) and o-voxel's python
    package (``o_voxel.postprocess.to_glb`` reaches no ``o_voxel._C`` function, so its ext is not built). A
    ``SOURCES.json`` inside the tarball records each repository's commit. ``bench/build_reference.sh`` unpacks and
    builds it on the device.

``inputs``
    Converts a few assets from ``../shared/assets`` (``scene_to_ovoxel``, the dataset conversion) and writes each as
    an O-Voxel ``.vxz`` (geometry + PBR, uint8, lzma) to ``.refkit/inputs/<name>_<res>.vxz`` plus ``index.json``.
    The mesh is extracted on the device (our extraction, on the GPU) so the carried files stay small;
    ``bench/bench_reference_export.py`` hands the same mesh and voxels to both exporters.

Usage:
    python bench/reference_kit.py pack [--mirror /work/.mirror]
    python bench/reference_kit.py inputs [--assets mesh/spot/spot_triangulated.obj:512,1024 ...]
    python bench/reference_kit.py wheels   # .whl/ less llvmlite+numba (the device has both) -> .refkit/wheels
    python bench/reference_kit.py ray      # Ray for the device's Python, trimmed to what `omnivox data --ray` runs
    python bench/reference_kit.py shared   # .shared (+ .shared_extra): the assets and reference outputs the GPU
                                           # tests and benchmarks read

``wheels`` exists for the 64 MiB a device call may carry: ``.whl`` alone is ~49 MiB, 40 of them llvmlite.
``ray`` exists for the same limit: Ray's wheel is ~76 MiB. It downloads the wheel for the device's Python (3.12,
manylinux x86_64) and the wheels of its core dependencies, drops what a task cluster does not use (Java jars, RLlib,
Serve, Tune, Train, Ray Data, the dashboard's web client) and writes ``.refkit/ray/ray_core.tar.xz`` (~27 MiB)
plus the dependency wheels. On the device: ``tar -xJf .refkit/ray/ray_core.tar.xz -C /tmp/site`` and install the
wheels into ``/tmp/site`` like the others.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".refkit"
SHARED_ASSETS = ROOT.parent / "shared" / "assets"

# (name in the kit, mirror folder, paths kept (git pathspecs, relative to the repository root))
SOURCES = [
    ("flexgemm", "JeffreyXiang+FlexGEMM",
     ["setup.py", "pyproject.toml", "README.md", "LICENSE", "autotune_cache.json", "flex_gemm"]),
    ("cumesh", "JeffreyXiang+CuMesh",
     ["setup.py", "pyproject.toml", "README.md", "LICENSE", "cumesh", "src", "third_party/xatlas"]),
    ("nvdiffrast", "NVlabs+nvdiffrast",
     ["setup.py", "pyproject.toml", "README.md", "LICENSE.txt", "csrc", "nvdiffrast"]),
    ("trellis2", "microsoft+TRELLIS.2", ["LICENSE", "o-voxel/o_voxel", "o-voxel/setup.py"]),
]
# CuMesh's submodule third_party/cubvh (JeffreyXiang/cubvh, branch trellis.2) has no stored snapshot; its upstream
# ashawkey/cubvh (HEAD) compiles the same three sources with the same Python API (create_cuBVH, unsigned_distance
# with uvw) -- see docs/benchmarks/reference_build.md.
CUBVH = ("ashawkey+cubvh", ["LICENSE", "LICENSE_NVIDIA", "src/bvh.cu", "src/api_gpu.cu", "src/bindings.cpp",
                            "include"])
EIGEN = ("live-clones+eigen", "e63d9f6ccb7f6f29f31241b87c542f3f0ab3112b", ["COPYING.MPL2", "Eigen"])  # cubvh's pin
EIGEN_FALLBACK = "eigen-master"  # the mirror's HEAD, tried by build_reference.sh only if CuMesh fails in Eigen

DEFAULT_ASSETS = [
    "mesh/spot/spot_triangulated.obj:512,1024",
    "mesh/stanford-bunny.obj:512",
    "gltf/Avocado/Avocado.gltf:512",
    "gltf/Fox.glb:512",
]


def _git(mirror: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(mirror), *args], check=True, capture_output=True).stdout


def _add_tree(out: tarfile.TarFile, mirror: Path, commit: str, paths: list, prefix: str) -> int:
    """Add ``paths`` of ``commit`` (a ``git archive`` stream) under ``prefix``; returns bytes added."""
    existing = [p for p in paths if _git(mirror, "ls-tree", "--name-only", commit, "--", p).strip()]
    data = _git(mirror, "archive", "--format=tar", f"--prefix={prefix}/", commit, "--", *existing)
    added = 0
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            if member.issym() or member.islnk():
                continue
            handle = archive.extractfile(member) if member.isfile() else None
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            out.addfile(member, handle)
            added += member.size
    return added


def pack(args) -> None:
    mirror_root = Path(args.mirror)
    KIT.mkdir(exist_ok=True)
    target = KIT / "reference_src.tar.xz"
    record = {}
    with tarfile.open(target, "w:xz", preset=9) as out:
        for name, folder, paths in SOURCES:
            repo = mirror_root / folder / "repo"
            commit = _git(repo, "rev-parse", "HEAD").decode().strip()
            size = _add_tree(out, repo, commit, paths, name)
            record[name] = {"repository": folder.replace("+", "/"), "commit": commit, "bytes": size}
            print(f"  {name:<11} {folder.replace('+', '/'):<24} {commit[:12]}  {size / 2**20:6.2f} MiB raw")
        folder, paths = CUBVH
        repo = mirror_root / folder / "repo"
        commit = _git(repo, "rev-parse", "HEAD").decode().strip()
        size = _add_tree(out, repo, commit, paths, "cumesh/third_party/cubvh")
        record["cubvh"] = {"repository": folder.replace("+", "/"), "commit": commit, "bytes": size,
                           "note": "stands in for CuMesh's submodule JeffreyXiang/cubvh@trellis.2 (not mirrored)"}
        print(f"  {'cubvh':<11} {folder.replace('+', '/'):<24} {commit[:12]}  {size / 2**20:6.2f} MiB raw")
        folder, commit, paths = EIGEN
        size = _add_tree(out, mirror_root / folder / "repo", commit, paths,
                         "cumesh/third_party/cubvh/third_party/eigen")
        record["eigen"] = {"repository": "libeigen/eigen", "commit": commit, "bytes": size}
        print(f"  {'eigen':<11} {'libeigen/eigen':<24} {commit[:12]}  {size / 2**20:6.2f} MiB raw")
        head = _git(mirror_root / folder / "repo", "rev-parse", "HEAD").decode().strip()
        size = _add_tree(out, mirror_root / folder / "repo", head, paths, EIGEN_FALLBACK)
        record[EIGEN_FALLBACK] = {"repository": "libeigen/eigen", "commit": head, "bytes": size,
                                  "note": "fallback for cubvh if the pinned Eigen fails under nvcc"}
        print(f"  {EIGEN_FALLBACK:<11} {'libeigen/eigen':<24} {head[:12]}  {size / 2**20:6.2f} MiB raw")
        blob = json.dumps(record, indent=1).encode()
        info = tarfile.TarInfo("SOURCES.json")
        info.size, info.mtime = len(blob), int(time.time())
        out.addfile(info, io.BytesIO(blob))
    print(f"{target.relative_to(ROOT)}: {target.stat().st_size / 2**20:.2f} MiB")


def inputs(args) -> None:
    import numpy as np

    from omnivox.data.convert import load_for_dataset
    from omnivox.ovoxel.io import write_vxz
    from omnivox.ovoxel.materials import scene_to_ovoxel

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for spec in args.assets:
        rel, _, resolutions = spec.partition(":")
        path = SHARED_ASSETS / rel
        scene = load_for_dataset(path)
        for resolution in [int(r) for r in (resolutions or "512").split(",")]:
            name = f"{Path(rel).stem.replace('_triangulated', '')}_{resolution}"
            start = time.perf_counter()
            record = scene_to_ovoxel(scene, resolution)
            coords = record.pop("coords")
            target = out / f"{name}.vxz"
            write_vxz(target, np.asarray(coords).astype(np.int64), record, compression="lzma", compression_level=9)
            index[name] = {"asset": rel, "resolution": resolution, "voxels": int(len(coords)),
                           "file": target.name, "bytes": target.stat().st_size,
                           "convert_s": round(time.perf_counter() - start, 1)}
            print(json.dumps({name: index[name]}), flush=True)
            index_path.write_text(json.dumps(index, indent=1))
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"{out}: {total / 2**20:.2f} MiB in {len(list(out.iterdir()))} files")


def wheels(args) -> None:
    import shutil

    out = KIT / "wheels"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    skip = tuple(f"{name}-" for name in args.skip)
    kept = [w for w in sorted((ROOT / ".whl").glob("*.whl")) if not w.name.lower().startswith(skip)]
    for wheel in kept:
        shutil.copy2(wheel, out / wheel.name)
    total = sum(w.stat().st_size for w in kept)
    print(f"{out.relative_to(ROOT)}: {len(kept)} wheels, {total / 2**20:.2f} MiB (left out: {', '.join(args.skip)})")


# What the GPU tests and benchmarks read from ../shared, copied to .shared (the device has no ../shared; device_check.sh
# copies .shared there). Folders are copied whole. The real assets only `tests/ovoxel/test_gpu.py` and
# `test_materials.py` read go to .shared_extra, so that calls carrying Ray (30 MiB) stay under the 64 MiB limit.
SHARED_SUBSET = ("assets/MANIFEST.md", "assets/images", "assets/gltf/Fox.glb", "assets/mesh/spot",
                 "assets/mesh/featuretype.STL", "reference/ovoxel")
SHARED_EXTRA = ("assets/gltf/GlassVaseFlowers.glb", "assets/gltf/MetalRoughSpheresNoTextures.glb",
                "assets/mesh/stanford-bunny.obj", "assets/mesh/soup.stl")


def shared(args) -> None:
    import shutil

    source = Path(args.shared)
    for folder, subset in ((".shared", SHARED_SUBSET), (".shared_extra", SHARED_EXTRA)):
        out = ROOT / folder
        shutil.rmtree(out, ignore_errors=True)
        for rel in subset:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if (source / rel).is_dir() else shutil.copy2
            copy(source / rel, out / rel)
        total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"{out.relative_to(ROOT)}: {total / 2**20:.1f} MiB from {source}")


RAY_DROPPED = ("jars", "rllib", "serve", "tune", "train", "data", "llm", "dashboard/client")
RAY_DEPENDENCIES = ("click", "filelock", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "attrs",
                    "msgpack", "protobuf", "pyyaml", "requests", "urllib3", "idna", "certifi", "charset-normalizer",
                    "packaging")


def ray(args) -> None:
    import shutil
    import subprocess
    import sys
    import tempfile
    import zipfile

    out = KIT / "ray"
    out.mkdir(parents=True, exist_ok=True)
    target = ["--python-version", args.python, "--platform", "manylinux2014_x86_64", "--only-binary=:all:",
              "--no-deps"]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", f"ray=={args.version}", *target, "-d", tmp],
                       check=True)
        (wheel,) = Path(tmp).glob("ray-*.whl")
        tree = Path(tmp) / "tree"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tree)
            for info in archive.infolist():  # extractall drops the modes: Ray's gcs_server and raylet must execute
                mode = info.external_attr >> 16
                if mode & 0o111:
                    (tree / info.filename).chmod(mode & 0o777)
        for part in RAY_DROPPED:
            shutil.rmtree(tree / "ray" / part, ignore_errors=True)
        names = sorted(p.name for p in tree.iterdir())
        subprocess.run(["tar", "-C", str(tree), "-cf", str(out / "ray_core.tar.xz"), "--use-compress-program",
                        "xz -6 -T0", *names], check=True)
    for old in out.glob("*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", *RAY_DEPENDENCIES, *target, "-d", str(out)],
                   check=True)
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"{out.relative_to(ROOT)}: ray {args.version} trimmed + {len(list(out.glob('*.whl')))} wheels, "
          f"{total / 2**20:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write .refkit/reference_src.tar.xz")
    p.add_argument("--mirror", default=os.environ.get("REFKIT_MIRROR", "/work/.mirror"))
    p = sub.add_parser("inputs", help="write .refkit/inputs/*.vxz")
    p.add_argument("--assets", nargs="+", default=DEFAULT_ASSETS,
                   help="paths under ../shared/assets, each with ':res[,res]'")
    p.add_argument("--out", default=str(KIT / "inputs"))
    p = sub.add_parser("wheels", help="copy .whl/*.whl less the device's own packages to .refkit/wheels")
    p.add_argument("--skip", nargs="*", default=["llvmlite", "numba"])
    p = sub.add_parser("ray", help="write .refkit/ray: Ray trimmed for the device's Python, and its dependencies")
    p.add_argument("--version", default="2.60.0")
    p.add_argument("--python", default="3.12", help="the device's Python version")
    p = sub.add_parser("shared", help="write .shared and .shared_extra: the part of ../shared the GPU tests and "
                                      "benchmarks read")
    p.add_argument("--shared", default=str(ROOT.parent / "shared"))
    args = parser.parse_args()
    {"pack": pack, "inputs": inputs, "wheels": wheels, "ray": ray, "shared": shared}[args.command](args)


if __name__ == "__main__":
    main()
