"""Fixtures: one tiny random-weight pipeline folder per session, and real example images."""

from pathlib import Path

import pytest
import torch

from omnivox.pipelines.image_to_3d import ImageTo3DPipeline
from omnivox.pipelines.testing import make_test_pipeline

RGBA_IMAGE = "images/5a020584b95cf3db3b6420e9b09fb93e7c0f4046e61076e5b4c65c63dc1f5837.webp"
RGBA_IMAGE_2 = "images/0a34fae7ba57cb8870df5325b9c30ea474def1b0913c19c596655b85a79fdee4.webp"
RGB_IMAGE = "images/ToyCar_screenshot_large.jpg"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return make_test_pipeline(tmp_path_factory.mktemp("weights") / "TRELLIS.2-tiny", texturing=True)


@pytest.fixture(scope="session")
def pipe(tiny_weights) -> ImageTo3DPipeline:
    return ImageTo3DPipeline.from_pretrained(tiny_weights, device="cpu")


@pytest.fixture
def rgba_image(assets) -> Path:
    return assets / RGBA_IMAGE


def tensors_left_in_cycles(run) -> list:
    """Call ``run()`` with the cyclic garbage collector paused; return the tensors that only a collection would
    free (objects in reference cycles created by the run). The pipeline promises none, so it need not collect."""
    import gc

    from omnivox.sparse import SparseTensor

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run()
        gc.collect()
        return [o for o in gc.garbage if isinstance(o, (torch.Tensor, SparseTensor))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
