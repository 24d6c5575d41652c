"""`ImageTo3DPipeline` end to end on CPU with the tiny random-weight pipeline and real images."""

import json

import numpy as np
import pytest
import torch

from omnivox.ovoxel.dual_grid import mesh_to_dual_grid
from omnivox.ovoxel.asset import OVoxel
from omnivox.pipelines.image_to_3d import ImageTo3DPipeline

from tests.conftest import _assets_dir

from .conftest import RGB_IMAGE, RGBA_IMAGE, RGBA_IMAGE_2


def same(a: OVoxel, b: OVoxel) -> bool:
    return (a.resolution == b.resolution and torch.equal(a.coords, b.coords)
            and all(torch.equal(a.attributes[k], b.attributes[k]) for k in a.attributes)
            and torch.equal(a.dual_vertices, b.dual_vertices) and torch.equal(a.faces, b.faces))


def check_asset(asset: OVoxel, resolution: int) -> None:
    assert asset.resolution == resolution
    assert asset.coords.dtype == torch.int32 and len(asset.coords) > 0
    assert int(asset.coords.min()) >= 0 and int(asset.coords.max()) < resolution
    assert set(asset.attributes) == {"base_color", "metallic", "roughness", "alpha"}
    assert asset.attributes["base_color"].shape == (len(asset.coords), 3)
    values = torch.cat(list(asset.attributes.values()), 1)
    assert values.min() >= 0 and values.max() <= 1 and values.std() > 0
    assert len(asset.faces) > 0 and asset.vertices.abs().max() <= 0.5 + 1.0 / resolution
    vertices, faces = asset.mesh
    assert int(faces.max()) < len(vertices) and asset.grid.resolution.tolist() == [resolution] * 3


@pytest.fixture(scope="module")
def saved_run(pipe, tmp_path_factory):
    assets = _assets_dir()
    folder = tmp_path_factory.mktemp("intermediates")
    calls = []
    result = pipe.run(assets / RGBA_IMAGE, seed=3, pipeline_type="1024_cascade", save_intermediates=folder,
                      callback=lambda stage, step, total: calls.append((stage, step, total)))
    return folder, result, calls


def test_cascade_1024_end_to_end_with_progress(saved_run):
    folder, result, calls = saved_run
    assert len(result) == 1
    check_asset(result[0], 1024)
    stages = [c[0] for c in calls]
    assert stages == ["sparse_structure"] * 2 + ["shape_slat_lr"] * 2 + ["shape_slat"] * 2 + ["tex_slat"] * 2
    run = json.loads((folder / "run.json").read_text())
    assert run["stages"] == ["condition", "sparse_structure", "shape_latent", "material_latent"]
    assert run["samples"] == ["sample_0.vxz"] and (folder / "sample_0.vxz").is_file()


@pytest.mark.parametrize("pipeline_type, resolution", [("512", 512), ("1024", 1024)])
def test_single_stage_types(pipe, assets, pipeline_type, resolution):
    (asset,) = pipe.run(assets / RGBA_IMAGE_2, seed=0, pipeline_type=pipeline_type)
    check_asset(asset, resolution)


def test_cascade_1536_and_its_token_limit(pipe, assets):
    (full,) = pipe.run(assets / RGBA_IMAGE_2, seed=0, pipeline_type="1536_cascade")
    check_asset(full, 1536)
    # A low limit walks the grid down 1536 -> 1408 -> ... -> 1024 (the loop stops at 1024).
    (limited,) = pipe.run(assets / RGBA_IMAGE_2, seed=0, pipeline_type="1536_cascade", max_num_tokens=2)
    check_asset(limited, 1024)
    assert len(limited.coords) < len(full.coords)


def test_same_seed_same_output_other_seed_differs(pipe, assets, saved_run):
    _, (first,), _ = saved_run
    (again,) = pipe.run(assets / RGBA_IMAGE, seed=3, pipeline_type="1024_cascade")
    assert same(first, again)
    (other,) = pipe.run(assets / RGBA_IMAGE, seed=4, pipeline_type="1024_cascade")
    assert not same(first, other)


def test_generator_draws_the_noise_and_the_plan_comes_back_with_the_assets(pipe, assets, saved_run):
    from omnivox.pipelines.memory import MemoryPlan

    _, (first,), _ = saved_run
    output = pipe.run(assets / RGBA_IMAGE, seed=99, generator=torch.Generator().manual_seed(3),
                      pipeline_type="1024_cascade")
    assert same(first, output[0]) and output.assets == list(output)  # the generator's seed, not seed=99
    assert isinstance(output.plan, MemoryPlan) and [s.name for s in output.plan.stages][-1] == "decode"
    with pytest.warns(DeprecationWarning, match="output.plan"):
        assert pipe.last_plan is output.plan
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        pipe.run(assets / RGBA_IMAGE, generator=3, pipeline_type="512")


def test_misspelt_sampler_stage_is_refused_before_any_work(pipe):
    with pytest.raises(ValueError, match=r"no sampling stage \['shape_slta'\]"):
        pipe.run(None, pipeline_type="512", sampler_params={"shape_slta": {"steps": 2}})


def test_pipeline_type_table_keeps_the_released_values():
    from omnivox.pipelines import image_to_3d
    from omnivox.pipelines.types import TYPES, pipeline_type

    assert image_to_3d.SS_RESOLUTION == {"512": 32, "1024": 64, "1024_cascade": 32, "1536_cascade": 32}
    assert image_to_3d.TARGET_RESOLUTION == {"512": 512, "1024": 1024, "1024_cascade": 1024, "1536_cascade": 1536}
    assert [t.condition_tokens for t in TYPES.values()] == [1029, 4101, 4101, 4101]
    assert [t.shape_flow[-4:] for t in TYPES.values()] == ["_512", "1024", "1024", "1024"]
    assert pipeline_type("1536_cascade").stages == ("sparse_structure", "shape_slat_lr", "shape_slat", "tex_slat")
    assert pipeline_type("1024").stages == ("sparse_structure", "shape_slat", "tex_slat")
    with pytest.raises(ValueError, match="pipeline_type must be one of"):
        pipeline_type("2048")


def test_num_samples_batch(pipe, assets):
    results = pipe.run(assets / RGBA_IMAGE, seed=5, pipeline_type="512", num_samples=2)
    assert len(results) == 2
    for asset in results:
        check_asset(asset, 512)
    assert not same(results[0], results[1])


@pytest.mark.parametrize("stage_file", ["condition.safetensors", "sparse_structure.safetensors",
                                        "shape_latent.safetensors", "material_latent.safetensors", "."])
def test_resume_from_each_intermediate_matches_the_uninterrupted_run(pipe, saved_run, stage_file):
    folder, (expected,), _ = saved_run
    (resumed,) = pipe.run(None, resume_from=folder / stage_file)
    assert same(resumed, expected)


def test_resume_from_vxz_reexports_without_sampling(pipe, saved_run):
    folder, (expected,), _ = saved_run
    (loaded,) = pipe.run(None, resume_from=folder / "sample_0.vxz")
    assert loaded.resolution == 1024 and len(loaded.faces) > 0

    def order(asset):  # the file stores voxels in its own (chunked Z-order) order
        key = (asset.coords[:, 0].long() * 4096 + asset.coords[:, 1].long()) * 4096 + asset.coords[:, 2].long()
        return torch.argsort(key)

    a, b = order(loaded), order(expected)
    assert torch.equal(loaded.coords[a], expected.coords[b])
    for name in expected.attributes:  # bytes in the file
        assert (loaded.attributes[name][a] - expected.attributes[name][b]).abs().max() <= 0.5 / 255 + 1e-6
    assert (loaded.dual_vertices[a] - expected.dual_vertices[b].clamp(0, 1)).abs().max() <= 1 / 255 + 1e-6
    assert torch.equal(loaded.intersected[a], expected.intersected[b])


def test_resume_rejects_a_different_pipeline_type(pipe, saved_run):
    folder, _, _ = saved_run
    with pytest.raises(ValueError, match="cannot continue it"):
        pipe.run(None, resume_from=folder, pipeline_type="512")


def test_caller_supplied_sparse_structure_from_a_real_mesh(pipe, assets, tmp_path):
    from omnivox.assets import load_asset

    scene = load_asset(assets / "mesh" / "spot" / "spot_triangulated.obj").normalized()
    coords, _, _ = mesh_to_dual_grid(scene.vertices, scene.faces, 32)
    structure = np.unique(np.asarray(coords), axis=0)
    (asset,) = pipe.run(assets / RGBA_IMAGE, seed=0, pipeline_type="512", sparse_structure=structure[::4],
                        save_intermediates=tmp_path)
    check_asset(asset, 512)
    from safetensors.torch import load_file

    latent = load_file(str(tmp_path / "shape_latent.safetensors"))["coords"]
    np.testing.assert_array_equal(latent[:, 1:].numpy(), structure[::4])
    with pytest.raises(ValueError, match=r"lie in \[0, 32\)"):
        pipe.run(assets / RGBA_IMAGE, pipeline_type="512", sparse_structure=structure * 2)


def test_rgb_image_without_background_model_is_a_clear_error(pipe, assets):
    with pytest.raises(ValueError, match="background_model"):
        pipe.run(assets / RGB_IMAGE, pipeline_type="512")


def test_missing_checkpoint_names_the_places_tried(tiny_weights, tmp_path):
    import shutil

    copy = tmp_path / "weights"
    shutil.copytree(tiny_weights, copy)
    (copy / "ckpts" / "tex_dec_next_dc_f16c32_fp16.safetensors").unlink()
    pipe = ImageTo3DPipeline.from_pretrained(copy, device="cpu")
    with pytest.raises(FileNotFoundError, match="tex_dec_next_dc_f16c32_fp16"):
        pipe.plan("512")
    with pytest.raises(ValueError, match="pipeline_type must be one of"):
        pipe.plan("2048")


def test_batched_guidance_matches_separate_passes(pipe, assets, tmp_path):
    """The GPU default (cond + uncond as one batch of two) computes the same latents as two calls."""
    from safetensors.torch import load_file

    structure = np.array([[x, y, 8] for x in range(10, 20) for y in range(12, 18)])
    latents = {}
    for batched in (False, True):
        pipe.batch_guidance = batched
        try:
            pipe.run(assets / RGBA_IMAGE, seed=7, pipeline_type="512", sparse_structure=structure,
                     save_intermediates=tmp_path / str(batched))
        finally:
            pipe.batch_guidance = False
        latents[batched] = load_file(str(tmp_path / str(batched) / "material_latent.safetensors"))["feats"]
    shape = {b: load_file(str(tmp_path / str(b) / "shape_latent.safetensors"))["feats"] for b in (False, True)}
    assert float((shape[True] - shape[False]).norm() / shape[False].norm()) < 1e-5
    assert float((latents[True] - latents[False]).norm() / latents[False].norm()) < 1e-5


def test_shape_decoding_inside_the_texture_stage_changes_nothing(pipe, assets):
    """`overlap_decoding` (shape decoding and mesh orientation during texture sampling) is only a schedule."""
    events = []
    decode_shape = pipe.decode_shape
    pipe.decode_shape = lambda *args: events.append("decode_shape") or decode_shape(*args)
    runs, order = {}, {}
    try:
        for overlap in (True, False):
            pipe.overlap_decoding = overlap
            events.clear()
            (runs[overlap],) = pipe.run(assets / RGBA_IMAGE, seed=11, pipeline_type="512",
                                        callback=lambda stage, step, total: events.append(f"{stage}:{step}"))
            order[overlap] = list(events)
    finally:
        pipe.overlap_decoding = True
        del pipe.decode_shape
    # Overlapped: right after the texture stage's first step was queued; otherwise after its last step.
    assert order[True].index("decode_shape") + 1 == order[True].index("tex_slat:1")
    last_texture_step = max(i for i, event in enumerate(order[False]) if event.startswith("tex_slat:"))
    assert order[False].index("decode_shape") == last_texture_step + 1
    assert same(runs[True], runs[False])


def test_a_run_leaves_no_tensors_in_reference_cycles(pipe, assets):
    """The pipeline does not call gc.collect() after a run; this is why it need not."""
    from .conftest import tensors_left_in_cycles

    for pipeline_type in ("512", "1024_cascade"):
        assert tensors_left_in_cycles(lambda: pipe.run(assets / RGBA_IMAGE_2, seed=1,
                                                       pipeline_type=pipeline_type)) == []


def test_8bit_flow_weights_from_pretrained_run_close_to_the_released_dtype(pipe, tiny_weights, assets):
    from omnivox.models.quantize import QuantizedLinear
    from omnivox.pipelines.memory import BudgetError

    pipe8 = ImageTo3DPipeline.from_pretrained(tiny_weights, device="cpu", weights_dtype="int8")
    (asset8,) = pipe8.run(assets / RGBA_IMAGE, seed=4, pipeline_type="512")
    (asset,) = pipe.run(assets / RGBA_IMAGE, seed=4, pipeline_type="512")
    flow = pipe8.models.get("shape_slat_flow_model_512")
    assert any(isinstance(module, QuantizedLinear) for module in flow.modules())
    assert not any(isinstance(module, QuantizedLinear) for module in pipe.models.get("shape_slat_flow_model_512")
                   .modules())
    # Same seed: the 8-bit run keeps most of the released run's voxels.
    ours = {tuple(c) for c in asset8.coords.tolist()}
    theirs = {tuple(c) for c in asset.coords.tolist()}
    assert len(ours & theirs) / len(ours | theirs) > 0.5
    with pytest.raises(ValueError, match="weights_dtype"):
        ImageTo3DPipeline.from_pretrained(tiny_weights, device="cpu", weights_dtype="int4")
    # A budget no plan can meet fails before any work, saying what it would need.
    with pytest.raises(BudgetError):
        pipe.run(assets / RGBA_IMAGE, seed=4, pipeline_type="512", max_memory=1024)
