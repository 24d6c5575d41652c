"""Shared fixtures: the real asset folder beside the checkout, and device selection."""

import os
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


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




def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where CUDA is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
