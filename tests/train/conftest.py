"""Fixtures of the training tests: real-asset flow samples, built once per session."""

import pytest

from tests.conftest import _assets_dir


@pytest.fixture(scope="session")
def flow_samples():
    from tests.train.flow_data import build_samples
    return build_samples(_assets_dir())
