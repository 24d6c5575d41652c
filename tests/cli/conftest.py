"""Fixtures of the command-line tests: a tiny random-weight pipeline folder, made once per session."""

from pathlib import Path

import pytest

RGBA_IMAGE = "images/5a020584b95cf3db3b6420e9b09fb93e7c0f4046e61076e5b4c65c63dc1f5837.webp"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    from omnivox.pipelines.testing import make_test_pipeline

    return make_test_pipeline(tmp_path_factory.mktemp("weights") / "TRELLIS.2-tiny")
