"""Fixtures of the training tests, built once per session from real assets: in-memory flow samples, and a
dataset root written by the `omnivox data` stages (index, convert, render, encode) at 32^3."""

import shutil

import pytest
import torch

from tests.conftest import _assets_dir


@pytest.fixture(scope="session")
def flow_samples():
    from tests.train.flow_data import build_samples
    return build_samples(_assets_dir())


TOOLKIT_RESOLUTION = 32
TOOLKIT_SOURCES = ["gltf/Fox.glb", "mesh/spot/spot_triangulated.obj", "mesh/featuretype.STL",
                   "gltf/Avocado/Avocado.gltf"]


@pytest.fixture(scope="session")
def toolkit_root(tmp_path_factory):
    from omnivox.data.convert import run_convert
    from omnivox.data.encode import run_encode
    from omnivox.data.index import run_index
    from omnivox.data.render import run_render
    from omnivox.models import FlexiDualGridVaeEncoder, SparseUnetVaeEncoder, VaeEncoderConfig, save_pretrained
    from tests.train.flow_data import tiny_dinov3

    assets = _assets_dir()
    base = tmp_path_factory.mktemp("flow_cli")
    root, ckpts = base / "dataset", base / "ckpts"
    (root / "raw").mkdir(parents=True)
    for name in TOOLKIT_SOURCES:
        shutil.copy(assets / name, root / "raw" / name.split("/")[-1])
    if (assets / "gltf/Avocado").is_dir():  # a multi-file glTF needs its buffers and textures beside it
        for f in (assets / "gltf/Avocado").iterdir():
            shutil.copy(f, root / "raw" / f.name)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    config = VaeEncoderConfig(in_channels=6, model_channels=(8, 16, 32), num_blocks=(0, 1, 1), latent_channels=4,
                              use_fp16=False)
    save_pretrained(FlexiDualGridVaeEncoder(config), ckpts / "shape_enc_tiny")
    save_pretrained(SparseUnetVaeEncoder(config), ckpts / "tex_enc_tiny")
    save_pretrained(tiny_dinov3(), base / "dinov3")
    run_index(root, progress=False)
    run_convert(root, [TOOLKIT_RESOLUTION], progress=False)
    run_render(root, num_views=2, size=48, progress=False)
    run_encode(root, TOOLKIT_RESOLUTION, ckpts / "shape_enc_tiny", ckpts / "tex_enc_tiny", progress=False)
    torch.set_num_threads(threads)  # the numba stages may change torch's intra-op thread count
    return root, base / "dinov3"  # (dataset root, tiny DINOv3 folder); tiny encoders: shape_enc_tiny, tex_enc_tiny


