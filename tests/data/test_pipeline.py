"""A small dataset from ../shared/assets end to end: index -> convert -> render -> encode -> datasets -> models."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omnivox.data import layout
from omnivox.data.convert import load_for_dataset, run_convert
from omnivox.data.datasets import (FlexiDualGridDataset, ImageConditionedSLatPbr, ImageConditionedSLatShape,
                                   SparseVoxelPbrDataset)
from omnivox.data.encode import run_encode
from omnivox.data.index import run_index
from omnivox.data.metadata import RecordWriter, load_table
from omnivox.data.render import MAX_RADIUS, MIN_RADIUS, condition_cameras, run_render
from omnivox.data.runner import in_shard
from omnivox.data.stats import dataset_stats
from omnivox.models import FlexiDualGridVaeEncoder, SLatFlowModel, SparseUnetVaeEncoder, save_pretrained
from omnivox.ovoxel.io import read_vxz
from tests.models.helpers import randomize, relative_error, tiny_encoder_config, tiny_flow_config

RESOLUTION = 64
SOURCES = ["gltf/Fox.glb", "mesh/joined_tetrahedra.obj", "mesh/soup.stl", "mesh/thingi10k/73340.stl"]
_BUILT = {}


def _build(assets: Path, base: Path) -> dict:
    root = base / "dataset"
    raw = root / "raw"
    raw.mkdir(parents=True)
    for name in SOURCES:
        shutil.copy(assets / name, raw / Path(name).name)
    (raw / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")  # corrupt
    (raw / "chair.fbx").write_bytes(b"Kaydara FBX Binary")  # a format we cannot read
    checkpoints = base / "ckpts"
    save_pretrained(randomize(FlexiDualGridVaeEncoder(tiny_encoder_config()), seed=1), checkpoints / "shape_enc_tiny")
    save_pretrained(randomize(SparseUnetVaeEncoder(tiny_encoder_config()), seed=2), checkpoints / "tex_enc_tiny")
    summaries = {
        "index": run_index(root, progress=False),
        "convert": run_convert(root, [RESOLUTION], progress=False),
        "render": run_render(root, num_views=2, size=48, progress=False),
        "encode": run_encode(root, RESOLUTION, checkpoints / "shape_enc_tiny", checkpoints / "tex_enc_tiny",
                             progress=False),
    }
    return {"root": root, "ckpts": checkpoints, "summaries": summaries}


@pytest.fixture
def built(assets, tmp_path_factory):
    """The dataset, built once per test session (about 15 s on one core)."""
    if "root" not in _BUILT:
        _BUILT.update(_build(assets, tmp_path_factory.mktemp("data_pipeline")))
    return _BUILT


def _shas(root: Path) -> dict:
    _, table = load_table(root)
    return {row["file_identifier"]: sha for sha, row in table.items()}


def test_index_records_assets_and_failures_without_stopping(built, assets):
    root = built["root"]
    assert vars(built["summaries"]["index"]) == {"total": 6, "skipped": 0, "done": 4, "failed": 2}
    _, table = load_table(root)
    rows = {row["file_identifier"]: row for row in table.values()}
    assert rows["broken.glb"]["indexed"] == "False" and "broken.glb" in rows["broken.glb"]["index_error"]
    assert rows["chair.fbx"]["index_error"].startswith("unsupported format .fbx")
    fox = rows["Fox.glb"]
    assert (fox["num_faces"], fox["num_basecolor_tex"], fox["num_metallic_tex"]) == ("576", "1", "0")
    assert "PixelMannen" in fox["license"]  # glTF asset.copyright
    assert int(fox["file_size"]) == (assets / "gltf/Fox.glb").stat().st_size
    # Re-running is a no-op.
    again = run_index(root, progress=False)
    assert (again.skipped, again.done, again.failed) == (6, 0, 0)


def test_convert_writes_exactly_the_converters_output(built):
    from omnivox.ovoxel.convert import scene_to_ovoxel

    root = built["root"]
    assert vars(built["summaries"]["convert"]) == {"total": 4, "skipped": 0, "done": 4, "failed": 0}
    sha = _shas(root)["73340.stl"]
    expected = scene_to_ovoxel(load_for_dataset(root / "raw" / "73340.stl"), RESOLUTION)
    coords, geometry = read_vxz(root / layout.dual_grid_dir(RESOLUTION) / f"{sha}.vxz")
    material_coords, material = read_vxz(root / layout.pbr_voxels_dir(RESOLUTION) / f"{sha}.vxz")
    order = np.lexsort(expected["coords"].T[::-1])
    for got_coords, attrs, names in ((coords, geometry, ("vertices", "intersected")),
                                     (material_coords, material, ("base_color", "metallic", "roughness", "alpha"))):
        got_order = np.lexsort(got_coords.T[::-1])
        np.testing.assert_array_equal(got_coords[got_order], expected["coords"][order])
        for name in names:
            np.testing.assert_array_equal(attrs[name][got_order].reshape(len(order), -1),
                                          expected[name][order].reshape(len(order), -1))
    _, records = load_table(root / layout.dual_grid_dir(RESOLUTION))
    assert int(records[sha]["dual_grid_size"]) == len(coords)
    with np.load(root / layout.MESH_DUMPS / f"{sha}.npz") as dump:
        assert np.abs(dump["vertices"]).max() <= 0.5 and dump["faces"].shape == (168, 3)


def test_gltf_assets_are_turned_z_up_like_blender(assets):
    from omnivox.assets import load_asset

    raw = load_asset(assets / "gltf/Fox.glb", up_axis="z")  # as stored: a standing fox, tallest along glTF +Y
    scene = load_for_dataset(assets / "gltf/Fox.glb")
    raw_extent = np.ptp(raw.vertices, axis=0)
    extent = np.ptp(scene.vertices, axis=0)
    np.testing.assert_allclose(extent / extent.max(), raw_extent[[0, 2, 1]] / raw_extent.max(), rtol=1e-5)
    # +Y (up in glTF) becomes +Z: the feet (lowest y) are the lowest z.
    feet = np.argmin(raw.vertices[:, 1])
    assert scene.vertices[feet, 2] == pytest.approx(scene.vertices[:, 2].min())
    stl = load_for_dataset(assets / "mesh/soup.stl")  # STL keeps its axes, as Blender's importer does
    np.testing.assert_allclose(np.argsort(np.ptp(stl.vertices, 0)),
                               np.argsort(np.ptp(load_asset(assets / "mesh/soup.stl").vertices, 0)))


def test_condition_camera_distribution_follows_the_reference():
    extrinsics, intrinsics, fov = condition_cameras(2000, np.random.default_rng(5))
    eye = torch.linalg.inv(extrinsics.double())[:, :3, 3]
    radius = eye.norm(dim=1)
    assert float(radius.min()) >= MIN_RADIUS * (1 - 1e-5) and float(radius.max()) <= MAX_RADIUS * (1 + 1e-5)
    # The unit cube's bounding sphere fills the frame: fov = 2 asin((sqrt 3 / 2) / r), in [10, 70] degrees.
    np.testing.assert_allclose(fov, 2 * np.arcsin(math.sqrt(3) / 2 / radius.numpy()), rtol=1e-5)
    assert math.degrees(fov.min()) >= 10 - 1e-3 and math.degrees(fov.max()) <= 70 + 1e-3
    below = float((eye[:, 2] < 0).double().mean())
    assert below == pytest.approx(0.25, abs=0.02)
    # Every camera looks at the origin: the optical axis (camera z) points from the eye to the centre.
    forward = extrinsics[:, 2, :3].double()
    np.testing.assert_allclose((forward * -eye / radius[:, None]).sum(1).numpy(), 1, atol=1e-5)


def test_render_writes_rgba_views_and_blender_style_transforms(built):
    root = built["root"]
    assert vars(built["summaries"]["render"]) == {"total": 4, "skipped": 0, "done": 4, "failed": 0}
    sha = _shas(root)["Fox.glb"]
    folder = root / layout.RENDERS_COND / sha
    meta = json.loads((folder / "transforms.json").read_text())
    assert [f["file_path"] for f in meta["frames"]] == ["000.png", "001.png"]
    for frame in meta["frames"]:
        image = np.asarray(Image.open(folder / frame["file_path"]))
        assert image.shape == (48, 48, 4)
        alpha = image[..., 3]
        assert alpha.max() == 255 and alpha[0, 0] == 0 and alpha[-1, -1] == 0  # object on transparent film
        assert image[alpha == 255][:, 0].mean() > image[alpha == 255][:, 2].mean()  # the fox is orange
        matrix = np.array(frame["transform_matrix"])
        radius = np.linalg.norm(matrix[:3, 3])
        assert frame["camera_angle_x"] == pytest.approx(2 * math.asin(math.sqrt(3) / 2 / radius), rel=1e-5)
        # Blender cameras look down their -z axis, towards the origin.
        np.testing.assert_allclose(-matrix[:3, 2], -matrix[:3, 3] / radius, atol=1e-5)


def test_encode_latents_equal_the_encoder_on_the_dataset_batch(built):
    from omnivox.models import from_pretrained

    root, checkpoints = built["root"], built["ckpts"]
    assert vars(built["summaries"]["encode"]) == {"total": 8, "skipped": 0, "done": 8, "failed": 0}
    dataset = FlexiDualGridDataset(str(root), resolution=RESOLUTION, with_mesh=True)
    assert len(dataset) == 4 and sorted(dataset.loads) == sorted(
        float(len(read_vxz(root / layout.dual_grid_dir(RESOLUTION) / f"{i.sha256}.vxz")[0])) for i in dataset.instances)
    index = [i.sha256 for i in dataset.instances].index(_shas(root)["Fox.glb"])
    pack = dataset.collate_fn([dataset[index]])
    assert pack["vertices"].feats.dtype == torch.float32 and pack["intersected"].feats.dtype == torch.bool
    assert pack["mesh"][0]["faces"].shape == (576, 3)
    encoder = from_pretrained(checkpoints / "shape_enc_tiny")
    with torch.no_grad():
        mean = encoder(pack["vertices"], pack["intersected"]).mean
    folder = root / layout.shape_latents_dir("shape_enc_tiny", RESOLUTION)
    with np.load(folder / f"{dataset.instances[index].sha256}.npz") as latent:
        np.testing.assert_array_equal(latent["coords"], mean.coords[:, 1:].numpy())
        assert latent["coords"].dtype == np.uint8
        assert relative_error(torch.from_numpy(latent["feats"]), mean.feats) < 1e-6
    pbr = SparseVoxelPbrDataset(str(root), resolution=RESOLUTION, with_mesh=True)
    batches = pbr.collate_fn([pbr[i] for i in range(len(pbr))], split_size=2)
    assert len(batches) == 2 and sum(b["x"].batch_size for b in batches) == 4
    assert sum(len(b["mesh"]) for b in batches) == 4
    plain = SparseVoxelPbrDataset(str(root), resolution=RESOLUTION)
    assert "mesh" not in plain.collate_fn([plain[0]])
    for batch in batches:
        x = batch["x"].feats
        assert x.shape[1] == 6 and float(x.min()) >= -1 and float(x.max()) <= 1
        out = from_pretrained(checkpoints / "tex_enc_tiny")(batch["x"]).mean
        assert out.batch_size == batch["x"].batch_size and torch.isfinite(out.feats).all()


def test_flow_datasets_feed_the_flow_model_and_filter(built):
    root = built["root"]
    stats = {"mean": [0.1, -0.2, 0.0, 0.3], "std": [1.5, 2.0, 1.0, 0.5]}
    dirs = {"base": str(root), "shape_latent": layout.shape_latents_dir("shape_enc_tiny", RESOLUTION),
            "pbr_latent": layout.pbr_latents_dir("tex_enc_tiny", RESOLUTION)}
    data_dir = json.dumps({"tiny": dirs})
    shape = ImageConditionedSLatShape(data_dir, resolution=RESOLUTION, image_size=32, normalization=stats)
    assert len(shape) == 4
    sample = shape[0]
    with np.load(root / dirs["shape_latent"] / f"{shape.instances[0].sha256}.npz") as raw:
        expected = (raw["feats"] - np.array(stats["mean"], np.float32)) / np.array(stats["std"], np.float32)
    np.testing.assert_allclose(sample["x_0"].numpy(), expected, rtol=1e-6)
    assert sample["cond"].shape == (3, 32, 32) and 0 <= float(sample["cond"].min()) < float(sample["cond"].max()) <= 1

    texture = ImageConditionedSLatPbr(data_dir, resolution=RESOLUTION, image_size=32,
                                      pbr_slat_normalization=stats, shape_slat_normalization=stats)
    packs = texture.collate_fn([texture[i] for i in range(3)], split_size=1)
    assert len(packs) == 1
    pack = packs[0]
    assert torch.equal(pack["x_0"].coords, pack["concat_cond"].coords) and pack["cond"].shape == (3, 3, 32, 32)
    model = randomize(SLatFlowModel(tiny_flow_config(in_channels=8, out_channels=4, resolution=16)), seed=3)
    tokens = torch.randn(3, 5, 16)
    velocity = model(pack["x_0"], torch.tensor([100.0, 500.0, 900.0]), tokens, concat_cond=pack["concat_cond"])
    assert velocity.feats.shape == pack["x_0"].feats.shape and torch.isfinite(velocity.feats).all()

    # Filters: the token limit, a missing render, an aesthetic score column when present.
    smallest = min(shape.loads)
    assert len(ImageConditionedSLatShape(data_dir, resolution=RESOLUTION, max_tokens=smallest)) == \
        sum(load <= smallest for load in shape.loads)
    with RecordWriter(root, ["sha256", "aesthetic_score"], rank=99) as writer:
        for number, instance in enumerate(shape.instances):
            writer.write({"sha256": instance.sha256, "aesthetic_score": 4.0 + number})
    try:
        kept = ImageConditionedSLatShape(data_dir, resolution=RESOLUTION, min_aesthetic_score=5.5)
        assert [i.sha256 for i in kept.instances] == [i.sha256 for i in shape.instances[2:]]
    finally:
        writer.path.unlink()
    with pytest.raises(TypeError, match="unexpected arguments"):
        ImageConditionedSLatShape(data_dir, max_token=10)


def test_corrupt_output_is_skipped_by_datasets_and_recorded_by_encode(built, tmp_path):
    root = shutil.copytree(built["root"], tmp_path / "copy")
    sha = _shas(root)["soup.stl"]
    (root / layout.dual_grid_dir(RESOLUTION) / f"{sha}.vxz").write_bytes(b"VXZ\x00garbage")
    dataset = FlexiDualGridDataset(str(root), resolution=RESOLUTION)
    index = [i.sha256 for i in dataset.instances].index(sha)
    sample = dataset[index]  # replaced by the next sample, deterministically
    assert dataset.num_bad_samples == 1 and len(sample["coords"]) == dataset.loads[(index + 1) % len(dataset)]
    shutil.rmtree(root / "shape_latents")
    summary = run_encode(root, RESOLUTION, built["ckpts"] / "shape_enc_tiny", progress=False)
    assert (summary.done, summary.failed) == (3, 1)
    stats = {s.folder: s for s in dataset_stats(root)}
    encoded = stats[layout.shape_latents_dir("shape_enc_tiny", RESOLUTION)]
    assert (encoded.done, encoded.failed) == (3, 1)
    assert encoded.reasons[0][1] == 1 and encoded.reasons[0][0].startswith("ValueError")


def test_sharded_runs_cover_each_asset_exactly_once(built, tmp_path):
    root = tmp_path / "sharded"
    shutil.copytree(built["root"] / "raw", root / "raw")
    world = 3
    done = 0
    for rank in range(world):
        summary = run_index(root, rank=rank, world_size=world, progress=False)
        done += summary.done + summary.failed
    assert done == 6
    parts = sorted((root / "new_records").glob("part_*.csv"))
    keys = [line.split(",")[2] for part in parts for line in part.read_text().splitlines()[1:]]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 6  # every file once, in exactly one part
    _, table = load_table(root)
    shas = [sha for sha, row in table.items() if row["indexed"] == "True"]
    owners = [[r for r in range(world) if in_shard(sha, r, world)] for sha in shas]
    assert all(len(o) == 1 for o in owners)


def test_sparse_structure_latents_encode_and_load(built, tmp_path):
    from omnivox.data.datasets import ImageConditionedSparseStructureLatent
    from omnivox.models import SparseStructureEncoder, SparseStructureEncoderConfig, occupancy_grid

    root = built["root"]
    config = SparseStructureEncoderConfig(latent_channels=8, channels=(4, 8, 8), num_res_blocks=1,
                                          num_res_blocks_middle=1, use_fp16=False)
    encoder = randomize(SparseStructureEncoder(config), seed=9, std=0.2)
    save_pretrained(encoder, tmp_path / "ss_enc_tiny")
    summary = run_encode(root, RESOLUTION, ss_encoder=tmp_path / "ss_enc_tiny", progress=False)
    assert (summary.done, summary.failed) == (4, 0)
    assert run_encode(root, RESOLUTION, ss_encoder=tmp_path / "ss_enc_tiny", progress=False).skipped == 4
    shas = _shas(root)
    sha = shas["Fox.glb"]
    with np.load(root / layout.ss_latents_dir("ss_enc_tiny") / f"{sha}.npz") as data:
        z = data["z"]
    coords, _ = read_vxz(root / layout.dual_grid_dir(RESOLUTION) / f"{sha}.vxz")  # 64 -> 64: cells are voxels
    with torch.no_grad():
        expected = encoder(occupancy_grid(torch.from_numpy(coords.astype(np.int64)), 64)).mean[0]
    assert z.shape == (8, 16, 16, 16)
    assert relative_error(torch.from_numpy(z), expected) < 1e-6
    dataset = ImageConditionedSparseStructureLatent(root, image_size=32, encoder_name="ss_enc_tiny")
    assert len(dataset) == 4
    batch = dataset.collate_fn([dataset[0], dataset[1]])
    assert batch["x_0"].shape == (2, 8, 16, 16, 16) and batch["cond"].shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="64 divides"):
        run_encode(root, 96, ss_encoder=tmp_path / "ss_enc_tiny", progress=False)
