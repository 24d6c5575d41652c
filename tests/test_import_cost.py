"""Importing a package loads only what it needs: one case per package of omnivox (review 8.12).

Start-up time is a feature (`omnivox --help` answers in a fraction of a second, issue 25): heavy or optional
dependencies load when a function that needs them runs, never on import. Each case imports the package in a fresh
interpreter and lists which of the heavy modules came along; its public names must resolve too.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HANG_GUARD_S

REPO = Path(__file__).resolve().parents[1]

# Optional or slow to import; no package loads them on import.
HEAVY = ("numba", "triton", "trimesh", "scipy", "PIL", "transformers", "ray", "gradio", "fastapi", "uvicorn",
         "starlette")
# Packages whose modules hold torch tensors or modules at their top import torch; the others must not.
NEEDS_TORCH = {"omnivox.sparse", "omnivox.models", "omnivox.render", "omnivox.preview", "omnivox.data"}

PACKAGES = ["omnivox.assets", "omnivox.sparse", "omnivox.ovoxel", "omnivox.ovoxel.io", "omnivox.models",
            "omnivox.render", "omnivox.pipelines", "omnivox.preview", "omnivox.data", "omnivox.demo", "omnivox.app",
            "omnivox.train", "omnivox.cli"]
# Heavy modules a case may load, and why.
MAY_LOAD = {"omnivox.app": {"PIL"}, "omnivox.cli": {"PIL"}}  # omnivox.app.inputs decodes the uploaded images
# Imported together with the package (the app's job and input modules run inside `omnivox serve`'s start-up path).
ALSO_IMPORTED = {"omnivox.app": ["omnivox.app.jobs", "omnivox.app.inputs"],
                 "omnivox.cli": ["omnivox.app", "omnivox.app.jobs", "omnivox.app.inputs"]}

DRIVER = """
import importlib, json, sys
names = sys.argv[1:]
modules = [importlib.import_module(name) for name in names]
loaded = sorted(name for name in sys.modules if "." not in name)
# Then (resolving lazy names imports their modules): every public name of the package resolves.
missing = [f"{m.__name__}.{n}" for m in modules[:1] for n in getattr(m, "__all__", []) if not hasattr(m, n)]
print(json.dumps({"loaded": loaded, "missing": missing}))
"""


def test_every_package_has_a_case():
    packages = {p.parent.name for p in (REPO / "omnivox").glob("*/__init__.py")} | {"demo"}
    assert {f"omnivox.{p}" for p in packages} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_package_stays_light(package):
    done = subprocess.run([sys.executable, "-c", DRIVER, package, *ALSO_IMPORTED.get(package, [])], cwd=REPO,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    forbidden = set(HEAVY + (() if package in NEEDS_TORCH else ("torch",))) - MAY_LOAD.get(package, set())
    assert sorted(forbidden & set(report["loaded"])) == [], package
    assert report["missing"] == [], package  # every public name resolves
