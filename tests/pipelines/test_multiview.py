"""Multi-view conditioning (issue 21): several views of one object, "stochastic" and "multidiffusion".

The tiny random-weight pipeline on the CPU, real RGBA photos from ../shared/assets as the views. Random weights
cannot show that extra views make a better object; these tests check what can fail: one view (or the same view
twice) reproduces the single-image run bit for bit, multidiffusion does not depend on the views' order,
stochastic follows its schedule, seeds reproduce, every pipeline type runs with 2-4 views, the batched and the
looped multidiffusion agree with a float64 reference of the arithmetic, and bad inputs get clear errors.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from omnivox.cli import app
from omnivox.pipelines import base
from omnivox.pipelines.image_to_3d import ImageTo3DPipeline
from omnivox.pipelines.samplers import (FlowEulerSampler, Guidance, SamplerParams, euler_timesteps,
                                        stochastic_schedule)

from .conftest import RGB_IMAGE, RGBA_IMAGE, RGBA_IMAGE_2
from .test_image_to_3d import check_asset, same

RGBA_IMAGE_3 = "images/74fe541e8c8eac8d0b5d8ba144307f6c07ed832cd19bf1d431c74292002028cd.webp"
RGBA_IMAGE_4 = "images/e513fcd6c897b249fc4bff54268b4d0bbab6403503ecf3846d92feb892536e5e.webp"
VIEWS = (RGBA_IMAGE, RGBA_IMAGE_2, RGBA_IMAGE_3, RGBA_IMAGE_4)
SIDES = (256, 200, 232, 180)  # shrunk (the tests' time goes to the models, not to resizing photos); sizes differ


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> list:
    """Four real RGBA photos of different objects, as smaller PNG files of different sizes."""
    from tests.conftest import _assets_dir

    assets, folder = _assets_dir(), tmp_path_factory.mktemp("views")
    paths = []
    for name, side in zip(VIEWS, SIDES):
        path = folder / f"{name.split('/')[-1][:8]}.png"
        Image.open(assets / name).resize((side, side), Image.LANCZOS).save(path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------- sampler
def _reference_multiview(x, views_velocity, num_views, params, mode, batch_size):
    """The documented sampler in float64: stochastic = an ordinary CFG step on view i mod V; multidiffusion =
    each view's CFG (with rescale over each item's population std) against the shared unconditional pass, then
    the mean over the views."""
    x = x.double()
    ts = euler_timesteps(params.steps, params.rescale_t)
    lo, hi = params.guidance_interval

    def x0(x, t, v):
        return (1 - params.sigma_min) * x - (params.sigma_min + (1 - params.sigma_min) * t) * v

    def std(a):  # dense items: unbiased over every non-batch element, as the released sampler
        return a.flatten(1).std(dim=1).view(-1, *([1] * (a.dim() - 1)))

    for i in range(params.steps):
        t, t_prev = ts[i], ts[i + 1]
        g = params.guidance_strength if lo <= t <= hi else 1.0
        chosen = [i % num_views] if mode == "stochastic" else list(range(num_views))
        v_conds, v_uncond = views_velocity(x.float(), t, chosen, g != 1.0)
        guided = []
        for v_cond in v_conds:
            v_cond = v_cond.double()
            if g == 1.0:
                guided.append(v_cond)
                continue
            v = g * v_cond + (1 - g) * v_uncond.double()
            if params.guidance_rescale > 0:
                x0_cond, x0_cfg = x0(x, t, v_cond), x0(x, t, v)
                phi = params.guidance_rescale
                x0_new = phi * x0_cfg * std(x0_cond) / std(x0_cfg) + (1 - phi) * x0_cfg
                v = ((1 - params.sigma_min) * x - x0_new) / (params.sigma_min + (1 - params.sigma_min) * t)
            guided.append(v)
        x = x - (t - t_prev) * torch.stack(guided).mean(0)
    return x


def _toy_views(num_views, seed=0):
    """A nonlinear toy flow per view (and an unconditional one); records the views asked for at every step."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(num_views + 1, 6, 6, generator=generator) * 0.5
    asked = []

    def views_velocity(x, t, views, unconditional):
        asked.append((t, tuple(views), unconditional))
        flat = x.flatten(1)[:, :6]

        def predict(k):
            out = torch.tanh(flat @ weights[k]) * (1 + t)
            return out.repeat(1, x[0].numel() // 6).view_as(x)
        return [predict(k) for k in views], (predict(num_views) if unconditional else None)
    return views_velocity, asked


@pytest.mark.parametrize("mode", ["stochastic", "multidiffusion"])
def test_sampler_matches_a_float64_reference_and_asks_for_the_documented_views(mode):
    params = SamplerParams(steps=7, guidance_strength=5.0, guidance_rescale=0.6, guidance_interval=(0.5, 1.0),
                           rescale_t=3.0)
    noise = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(3))
    views_velocity, asked = _toy_views(3)
    out = FlowEulerSampler().sample_views(views_velocity, noise, 3, params, mode)
    expected_views = [(k,) for k in stochastic_schedule(7, 3)] if mode == "stochastic" else [(0, 1, 2)] * 7
    assert [views for _, views, _ in asked] == expected_views
    assert [uncond for _, _, uncond in asked] == [Guidance.from_params(params).needs_unconditional(t)
                                                  for t in euler_timesteps(7, 3.0)[:-1]]
    reference_fn, _ = _toy_views(3)
    reference = _reference_multiview(noise, reference_fn, 3, params, mode, 2)
    assert float((out.double() - reference).norm() / reference.norm()) < 1e-5


def test_stochastic_schedule_takes_turns_and_restarts_every_stage():
    assert stochastic_schedule(12, 3) == [0, 1, 2] * 4
    assert stochastic_schedule(5, 4) == [0, 1, 2, 3, 0]
    assert stochastic_schedule(3, 1) == [0, 0, 0]
    with pytest.raises(ValueError, match="num_views"):
        stochastic_schedule(3, 0)


def test_one_view_sampler_is_the_single_view_sampler():
    params = SamplerParams(steps=5, guidance_strength=4.0, guidance_rescale=0.5, guidance_interval=(0.4, 1.0),
                           rescale_t=2.0)
    noise = torch.randn(2, 6, 2, generator=torch.Generator().manual_seed(5))
    views_velocity, _ = _toy_views(1)
    cond, null = object(), object()

    def velocity(x, t, c):
        v_conds, v_uncond = views_velocity(x, t, [0] if c is cond else [], c is null)
        return v_conds[0] if c is cond else v_uncond

    single = FlowEulerSampler().sample(velocity, noise, cond, null, params)
    for mode in ("stochastic", "multidiffusion"):
        assert torch.equal(FlowEulerSampler().sample_views(views_velocity, noise, 1, params, mode), single)


# ----------------------------------------------------------------------------------------------- pipeline
def test_one_view_or_the_same_view_twice_gives_exactly_the_single_image_result(pipe, views):
    """One view runs the single-image code. Two identical views: stochastic conditions every step on that view,
    multidiffusion averages two equal velocities (exact in floating point), so both must reproduce the
    single-image run bit for bit; this checks the whole multi-view path (condition stacking, per-view calls,
    averaging) against the single-image one."""
    (single,) = pipe.run(views[1], seed=2, pipeline_type="512")
    (one,) = pipe.run(images=[views[1]], multiview_mode="multidiffusion", seed=2, pipeline_type="512")
    assert same(single, one)
    for mode in ("stochastic", "multidiffusion"):
        (twice,) = pipe.run(images=[views[1], views[1]], multiview_mode=mode, seed=2, pipeline_type="512")
        assert same(single, twice), mode


def test_multidiffusion_ignores_the_views_order_reproduces_its_seed_and_resumes(pipe, views, tmp_path):
    kwargs = dict(multiview_mode="multidiffusion", pipeline_type="512")
    (first,) = pipe.run(images=views[:3], seed=6, save_intermediates=tmp_path / "run", **kwargs)
    (reordered,) = pipe.run(images=[views[2], views[0], views[1]], seed=6, **kwargs)
    assert same(first, reordered)  # same seed, same asset, whatever the order
    (one,) = pipe.run(views[0], seed=6, pipeline_type="512")
    assert not same(first, one)  # the other views do change the result
    # The saved run keeps its views and mode: resuming gives the same asset; another mode is refused.
    (resumed,) = pipe.run(resume_from=tmp_path / "run" / "sparse_structure.safetensors")
    assert same(first, resumed)
    with pytest.raises(ValueError, match="'multidiffusion' multi-view run"):
        pipe.run(resume_from=tmp_path / "run" / "condition.safetensors", multiview_mode="stochastic")


def test_stochastic_conditions_each_step_on_the_scheduled_view(pipe, views, monkeypatch):
    asked = []
    original = base.ViewVelocities.__call__

    def recording(self, x, t, chosen, unconditional):
        asked.append(tuple(chosen))
        return original(self, x, t, chosen, unconditional)

    monkeypatch.setattr(base.ViewVelocities, "__call__", recording)
    steps = {"sparse_structure": 5, "shape_slat": 4, "tex_slat": 3}
    stages = []
    kwargs = dict(multiview_mode="stochastic", seed=1, pipeline_type="512",
                  sampler_params={name: {"steps": n} for name, n in steps.items()})
    (forward,) = pipe.run(images=views[:3], callback=lambda stage, step, total: stages.append(stage), **kwargs)
    expected = []
    for stage, n in steps.items():
        assert stages.count(stage) == n
        expected += [(k,) for k in stochastic_schedule(n, 3)]
    assert asked == expected
    (again,) = pipe.run(images=views[:3], **kwargs)
    (backward,) = pipe.run(images=views[:3][::-1], **kwargs)
    assert same(forward, again)
    assert not same(forward, backward)  # the order matters: the first view leads every stage


@pytest.mark.parametrize("pipeline_type, mode, count", [("512", "stochastic", 2), ("1024", "multidiffusion", 3),
                                                        ("1024_cascade", "multidiffusion", 4),
                                                        ("1536_cascade", "stochastic", 3)])
def test_every_pipeline_type_runs_with_several_views(pipe, views, pipeline_type, mode, count, caplog):
    stages = set()
    output = pipe.run(images=views[:count], multiview_mode=mode, seed=3, pipeline_type=pipeline_type,
                      num_samples=2 if pipeline_type == "1024" else 1,
                      callback=lambda stage, step, total: stages.add(stage))
    from omnivox.pipelines.types import pipeline_type as type_named

    kind = type_named(pipeline_type)
    assert stages == set(kind.stages)
    assert len(output) == (2 if pipeline_type == "1024" else 1)
    for asset in output:
        check_asset(asset, asset.resolution)
        assert len(asset.faces) > 0
    assert output.plan is not None
    # The tiny pipeline samples 2 steps per stage: stochastic with 3 views leaves view 2 out, and says so.
    warned = "views [2] never condition" in caplog.text
    assert warned == (mode == "stochastic" and count > 2), caplog.text


def test_batched_multidiffusion_matches_one_call_per_view(tiny_weights, assets, tmp_path):
    """The GPU default (all views and the unconditional pass as one batch) computes the looped run's latents."""
    from safetensors.torch import load_file

    pipe = ImageTo3DPipeline.from_pretrained(tiny_weights, device="cpu")
    structure = np.array([[x, y, 8] for x in range(10, 20) for y in range(12, 18)])
    latents = {}
    for batched in (False, True):
        pipe.batch_guidance = batched
        pipe.run(images=[assets / name for name in VIEWS[:3]], multiview_mode="multidiffusion", seed=7,
                 pipeline_type="512", sparse_structure=structure, save_intermediates=tmp_path / str(batched))
        latents[batched] = {k: load_file(str(tmp_path / str(batched) / f"{k}.safetensors"))["feats"]
                            for k in ("shape_latent", "material_latent")}
    for key in ("shape_latent", "material_latent"):
        a, b = latents[True][key].double(), latents[False][key].double()
        assert float((a - b).norm() / b.norm()) < 1e-5, key


def test_memory_plan_counts_views_and_batched_rows(tiny_weights):
    pipe = ImageTo3DPipeline.from_pretrained(tiny_weights, device="cpu")
    pipe.batch_guidance = True  # as on a GPU

    def flows(**kwargs):
        return {n.name: n.work_bytes for n in pipe.stage_needs("1024_cascade", 1, 4096, 9600, 2200, **kwargs)
                if n.kind == "flow"}

    one = flows()
    stochastic = flows(num_views=3, multiview_mode="stochastic")
    batched = flows(num_views=3, multiview_mode="multidiffusion", batch_views=True)
    looped = flows(num_views=3, multiview_mode="multidiffusion", batch_views=False)
    for name in one:
        assert one[name] < stochastic[name] < batched[name]  # three condition sets; then 4 (or 3) copies of rows
        assert looped[name] <= stochastic[name]
    # No budget: the views run as one batch. A budget the looped plan fits but the batched one does not: the
    # run loops over the views rather than offloading or chunking.
    _, unlimited = pipe._views_plan("1024_cascade", 1, 4096, 9600, 2200, None, 3, "multidiffusion")
    assert unlimited.batched
    needs = pipe.stage_needs("1024_cascade", 1, 4096, 9600, 2200, num_views=3, multiview_mode="multidiffusion",
                             batch_views=False)
    looped_peak = pipe._plan(needs, None).peak_bytes
    _, chosen = pipe._views_plan("1024_cascade", 1, 4096, 9600, 2200, int(looped_peak / 0.85), 3,
                                 "multidiffusion")
    assert not chosen.batched
    with pytest.raises(ValueError, match="num_views"):
        pipe.stage_needs("512", 1, 4096, 9600, num_views=0)


def test_bad_inputs_get_clear_errors(pipe, assets, views):
    with pytest.raises(ValueError, match="images is empty"):
        pipe.run(images=[], pipeline_type="512")
    with pytest.raises(ValueError, match="either image or images"):
        pipe.run(views[0], images=views[:2], pipeline_type="512")
    with pytest.raises(TypeError, match="list of images"):
        pipe.run(images=str(views[0]), pipeline_type="512")
    with pytest.raises(ValueError, match="multiview_mode must be one of"):
        pipe.run(images=views[:2], multiview_mode="average", pipeline_type="512")
    with pytest.raises(ValueError, match=r"view\(s\) 1 .*ToyCar.* of 3 have no transparent background"):
        pipe.run(images=[views[0], assets / RGB_IMAGE, views[1]], pipeline_type="512")
    opaque = Image.open(views[0]).convert("RGB")
    with pytest.raises(ValueError, match=r"view\(s\) 0 of 2 have no transparent"):
        pipe.run(images=[opaque, views[1]], pipeline_type="512")


def test_views_of_different_sizes_and_kinds_are_each_preprocessed(pipe, views):
    """Each view is cut out and cropped on its own, so sizes and shapes need not match (PIL images and paths
    mix); every test here runs views of four different sizes."""
    small = Image.open(views[1]).resize((100, 100))
    wide = Image.new("RGBA", (300, 160))
    wide.paste(small, (180, 40))
    pictures = pipe.prepare_views([views[0], small, wide], preprocess=True)
    assert [p.mode for p in pictures] == ["RGB"] * 3
    assert all(p.width == p.height for p in pictures)
    assert pictures[2].tobytes() == pipe.prepare_image(small, True).tobytes()  # the same object, cropped alike


# ----------------------------------------------------------------------------------------------- texturing
def test_texturing_with_several_reference_images(tiny_weights, views):
    from omnivox.pipelines.texturing import TexturingPipeline

    pipe = TexturingPipeline.from_pretrained(tiny_weights, device="cpu")
    grid = np.linspace(-0.05, 0.05, 2)  # a small box: a few thousand voxels at 256^3
    vertices = np.array([[x, y, z] for x in grid for y in grid for z in grid], np.float32)
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    kwargs = dict(resolution=256, seed=3)
    coords, single, _ = pipe.texture_voxels(vertices, faces, views[0], **kwargs)
    _, one, _ = pipe.texture_voxels(vertices, faces, images=[views[0]], multiview_mode="multidiffusion", **kwargs)
    assert np.array_equal(single, one)
    _, first, _ = pipe.texture_voxels(vertices, faces, images=views[:3], multiview_mode="multidiffusion", **kwargs)
    _, reordered, _ = pipe.texture_voxels(vertices, faces, images=views[:3][::-1], multiview_mode="multidiffusion",
                                          **kwargs)
    assert np.array_equal(first, reordered) and not np.array_equal(first, single)
    _, stochastic, _ = pipe.texture_voxels(vertices, faces, images=views[:3], **kwargs)
    assert stochastic.shape == single.shape and np.isfinite(stochastic).all()
    with pytest.raises(ValueError, match="either image or images"):
        pipe.texture_voxels(vertices, faces, views[0], images=views[:2], **kwargs)


# ----------------------------------------------------------------------------------------------- command line
def test_cli_multiview_files_and_a_folder_of_view_folders(tiny_weights, views, tmp_path):
    runner = CliRunner()
    common = ["--weights", str(tiny_weights), "--pipeline", "512", "--texture-size", "32", "--faces", "1000",
              "--device", "cpu", "--quiet"]
    out = tmp_path / "one.glb"
    result = runner.invoke(app, ["generate", str(views[0]), str(views[1]), "--multiview", "--multiview-mode",
                                 "multidiffusion", "-o", str(out), *common])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"glTF" and "(2 views)" in result.output
    objects = tmp_path / "objects"
    for name, chosen in (("mug", views[:2]), ("chair", views[2:3])):
        (objects / name).mkdir(parents=True)
        for view in chosen:
            (objects / name / view.name).symlink_to(view)
    result = runner.invoke(app, ["generate", str(objects), "--multiview", "-o", str(tmp_path / "out"), *common])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["chair.glb", "mug.glb"]
    assert "mug (2 views)" in result.output
    # Errors, before any model is loaded.
    result = runner.invoke(app, ["generate", str(objects), "--multiview", "-o", str(tmp_path / "x.glb"), *common])
    assert result.exit_code == 1 and "-o must be a folder" in result.output
    result = runner.invoke(app, ["generate", str(views[0]), str(views[1]), "--multiview-mode", "stochastic", "-o",
                                 str(tmp_path / "x.glb"), *common])
    assert result.exit_code == 1 and "--multiview-mode needs --multiview" in result.output
    result = runner.invoke(app, ["generate", str(views[0]), str(views[1]), "--multiview", "--multiview-mode",
                                 "mean", "-o", str(tmp_path / "x.glb"), *common])
    assert result.exit_code == 1 and "multiview_mode must be one of" in result.output


# ----------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["stochastic", "multidiffusion"])
def test_cuda_multiview_replays_cuda_graphs_and_matches_the_cpu(tiny_weights, views, tmp_path, mode):
    """On a GPU: batched guidance, multidiffusion's views in one batch, every multi-view call captured as a CUDA
    graph (a failed capture warns, which fails here) and the latents the CPU run computes (float32 both)."""
    import warnings

    from safetensors.torch import load_file

    from omnivox.pipelines import runtime

    replays, copies = [], []
    original_call, original_views = runtime.GraphedCall.__call__, base.ViewVelocities.call

    def counting(self, *args):
        before = self.replays
        out = original_call(self, *args)
        replays.append(self.replays - before)
        return out

    def recording(self, x, t, chosen, null):
        copies.append(len(chosen) + null)
        return original_views(self, x, t, chosen, null)

    structure = np.array([[x, y, 8 + (x + y) % 3] for x in range(8, 20) for y in range(10, 18)])
    latents = {}
    for device in ("cpu", "cuda"):
        pipe = ImageTo3DPipeline.from_pretrained(tiny_weights, device=device, dtype=torch.float32)
        with warnings.catch_warnings(), pytest.MonkeyPatch.context() as patch:
            warnings.filterwarnings("error", message="CUDA-graph capture failed")
            if device == "cuda":
                patch.setattr(runtime.GraphedCall, "__call__", counting)
                patch.setattr(base.ViewVelocities, "call", recording)
            pipe.run(images=views[:3], multiview_mode=mode, seed=4, pipeline_type="1024_cascade",
                     sampler_params={"shape_slat": {"steps": 6}, "tex_slat": {"steps": 6}},
                     sparse_structure=structure, save_intermediates=tmp_path / device)
        latents[device] = {k: load_file(str(tmp_path / device / f"{k}.safetensors"))["feats"]
                           for k in ("shape_latent", "material_latent")}
        if device == "cuda":
            # The dense structure stage with several views (skipped above to compare the same token sets).
            (asset,) = pipe.run(images=views[:2], multiview_mode=mode, seed=1, pipeline_type="512")
            assert len(asset.faces) > 0
    # Stochastic: each view's first call of a stage runs before any graph of the stage exists (about half of the
    # 24 calls replay); multidiffusion: one wrapper per kind of step (most calls replay).
    assert sum(replays) >= len(replays) // 3 and sum(replays) >= 8, replays
    assert max(copies) == (4 if mode == "multidiffusion" else 2)  # 3 views + null in one batch; or a CFG pair
    for key in ("shape_latent", "material_latent"):
        a, b = latents["cuda"][key].double(), latents["cpu"][key].double()
        assert a.shape == b.shape
        assert float((a - b).norm() / b.norm()) < 2e-3, key
