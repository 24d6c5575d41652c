"""Shared fixtures: the real asset folder beside the checkout, device selection, and the Node packages some tests
run (the Khronos glTF validator, Playwright's driver for Chromium)."""

import fcntl
import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"

#: Seconds after which a subprocess or a wait in a test counts as hung. Not a bound on how long the work may take
#: (a loaded 2-core machine runs the suite several times slower than an idle one, and no test may fail for that):
#: it only turns a hang into a failure instead of a suite that never ends.
HANG_GUARD_S = 1800


def _assets_dir() -> Path:
    if ASSETS.is_dir():
        return ASSETS
    if os.environ.get("CI"):
        raise RuntimeError(f"CI is set but the shared asset folder {ASSETS} is missing")
    pytest.skip(f"shared assets not found at {ASSETS}")


@pytest.fixture
def assets() -> Path:
    """Path to ../shared/assets; skips when absent, fails under CI."""
    return _assets_dir()


@functools.cache
def _npm_install(folder: Path, package: str) -> tuple:
    """(node, "") once `folder`/node_modules holds `package`, running `npm ci` there if needed; (None, why) if not.
    Cached, so a session tries each folder once."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        return None, "Node.js is not installed"
    installed = folder / "node_modules" / package / "package.json"
    if installed.is_file():
        return node, ""
    if npm is None:
        return None, f"npm is not installed (needed for `npm ci` in {folder})"
    lock = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest process on this checkout may be installing it right now
        if not installed.is_file():
            try:
                result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=folder,
                                        capture_output=True, text=True, timeout=HANG_GUARD_S)
                log = (result.stderr or result.stdout).strip()[:600]  # npm says what went wrong first
            except subprocess.TimeoutExpired:
                log = f"no answer in {HANG_GUARD_S} s"
            if not installed.is_file():
                return None, f"`npm ci` in {folder} failed: {log}"
    finally:
        os.close(lock)  # releases the lock
    return node, ""


def node_with(folder: Path, package: str) -> str:
    """The `node` executable, with the npm package `package` installed in `folder` from its package-lock.json.

    The glTF-validator and browser tests call this: it runs `npm ci` in `folder` on first use (the validator takes
    about 2 s), so the README's test command runs them wherever Node.js and npm are installed. Without them (or
    offline) the calling test is skipped, and under CI, which must run these tests, it fails.
    """
    node, reason = _npm_install(Path(folder), package)
    if node is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run this test, but {reason}")
        pytest.skip(reason)
    return node


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where CUDA is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
