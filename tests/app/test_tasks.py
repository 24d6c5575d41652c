"""Request parameters, progress reporting and the pipeline-facing helpers of `omnivox.app.tasks`."""

import inspect
import threading

import pytest
from PIL import Image

from omnivox.app import tasks
from omnivox.app.inputs import InputError
from omnivox.app.jobs import Job, JobCancelled, JobContext
from tests.app.conftest import CAR, CROWN


def test_parameters_are_checked_with_named_fields():
    params = tasks.GenerateParams(seed=5, pipeline_type="512", texture_size=1024).with_stage("shape_slat", 20, 6.5)
    assert params.validated(("512", "1024")) is params
    assert tasks.sampler_params(params) == {"shape_slat": {"steps": 20, "guidance_strength": 6.5}}
    only_steps = tasks.GenerateParams().with_stage("tex_slat", 3, None)
    assert tasks.sampler_params(only_steps) == {"tex_slat": {"steps": 3}}  # unset values keep pipeline.json's
    cases = [
        (tasks.GenerateParams(seed=-1), "seed must be in 0..2147483647, got -1"),
        (tasks.GenerateParams(pipeline_type="2048"), r"pipeline_type must be one of \['512', '1024'\], got '2048'"),
        (tasks.GenerateParams().with_stage("shape_slat", 0, None), "shape_slat_steps must be in 1..100, got 0"),
        (tasks.GenerateParams().with_stage("tex_slat", None, 99.0), "tex_slat_guidance must be in 0..20.0"),
        (tasks.GenerateParams().with_stage("decoder", 1, None), "unknown stage 'decoder'"),
        (tasks.GenerateParams(decimation_target=5_000_000), "decimation_target must be in 0..2000000"),
        (tasks.GenerateParams(texture_size=1000), r"texture_size must be one of \[512, 1024, 2048, 4096\]"),
        (tasks.GenerateParams(multiview_mode="mean"), r"multiview_mode must be one of \['stochastic', "),
        (tasks.GenerateParams(profile="unity"), r"profile must be one of \['plain', 'game'\], got 'unity'"),
        (tasks.GenerateParams(lods=2), "lods and watertight only apply with profile 'game'"),
        (tasks.GenerateParams(profile="game", lods=9), r"GameProfile.lods must be an int in \[0, 6\], got 9"),
        (tasks.GenerateParams(profile="game", decimation_target=8), r"GameProfile.faces must be an int >= 16"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=message) as err:
            bad.validated(("512", "1024"))
        assert err.value.status == 422


def _context():
    job = Job("job1", "generate", None, output_dir=None)
    return job, JobContext(job, threading.Lock())


def test_progress_names_the_stage_and_its_place():
    job, context = _context()
    callback = tasks.progress_callback(context, ["sparse_structure", "shape_slat_lr", "shape_slat", "tex_slat"])
    callback("shape_slat_lr", 3, 12)
    assert job.progress.describe() == "stage 2/4 shape (coarse): step 3/12"
    callback("tex_slat", 11, 12)
    assert job.progress.describe() == "stage 4/4 material: step 11/12"
    callback("tex_slat", 12, 12)  # the decoders report nothing; say what runs after the last step
    assert job.progress.describe() == "stage 4/4 decoding"
    job.cancel_event.set()
    with pytest.raises(JobCancelled):  # cancellation takes effect at the next sampler step
        callback("tex_slat", 1, 12)


def test_progress_counts_the_export_as_the_last_stage():
    job, context = _context()
    callback = tasks.progress_callback(context, ["sparse_structure", "shape_slat", "tex_slat", "export"])
    callback("tex_slat", 12, 12)
    assert job.progress.describe() == "stage 3/4 decoding"  # never "stages": 0 while the decoders run
    callback("export", 2, 6)
    assert job.progress.describe() == "stage 4/4 export: step 2/6"
    assert (job.progress.index, job.progress.stages) == (4, 4)


def test_pipeline_defaults_and_background_check(test_weights, assets):
    from omnivox.pipelines.testing import TEST_STEPS

    models = tasks.load_models(test_weights, "cpu")
    assert models.texturing is not None  # the folder has texturing_pipeline.json
    defaults = tasks.stage_defaults(models)
    assert set(defaults) == set(tasks.STAGES)
    assert all(steps == TEST_STEPS for steps, _ in defaults.values())
    assert defaults["sparse_structure"][1] == models.image_to_3d.config.samplers["sparse_structure"].guidance_strength
    assert tasks.default_pipeline_type(models) in tasks.pipeline_types(models)
    tasks.check_background(models.image_to_3d, Image.open(assets / CROWN))  # RGBA cut-out: accepted
    with pytest.raises(InputError, match="'car.jpg' has no transparent background .* --background-model"):
        tasks.check_background(models.image_to_3d, Image.open(assets / CAR), "'car.jpg'")
    # Several views of one object: every one is checked, and the message says which (counted from 1).
    crown, car = Image.open(assets / CROWN), Image.open(assets / CAR)
    tasks.check_background(models.image_to_3d, [crown, crown])
    with pytest.raises(InputError, match=r"the images: view\(s\) 2 of 3 has no transparent background"):
        tasks.check_background(models.image_to_3d, [crown, car, crown], "the images")
    with pytest.raises(InputError, match="at most 8 views") as err:
        tasks.views_list([crown] * 9)
    assert err.value.status == 422
    # The pipelines' memory options reach both pipelines (`omnivox serve/app --max-memory --weights-dtype`).
    small = tasks.load_models(test_weights, "cpu", max_memory="8GB", weights_dtype="int8")
    for pipeline in (small.image_to_3d, small.texturing):
        assert pipeline.max_memory == 8 * 2**30  # "8GB" reads as GiB (pipelines.memory.parse_memory)
        assert pipeline.models.weights_dtype == "int8"
    with pytest.raises(ValueError, match="weights_dtype"):
        tasks.load_models(test_weights, "cpu", weights_dtype="int4")


def test_commands_listen_on_loopback_by_default():
    from omnivox.cli.app_commands import serve, web_app

    for command in (serve, web_app):
        assert inspect.signature(command).parameters["host"].default.default == "127.0.0.1"


def test_generate_says_what_it_does_before_the_first_sampling_step():
    """The service's job read "starting" (and "stages": 0) for its first ~30 s (issue 25, part 4)."""
    from types import SimpleNamespace

    job, context = _context()
    seen = []

    class Stopped(Exception):
        pass

    def run(*args, **kwargs):  # the pipeline: record what the job says when sampling is about to begin
        seen.append(job.progress.describe())
        raise Stopped

    pipe = SimpleNamespace(config=SimpleNamespace(default_pipeline_type="512"), run=run)
    models = tasks.Models(device="cpu", image_to_3d=pipe, texturing=None)
    with pytest.raises(Stopped):
        tasks.generate(models, context, Image.new("RGBA", (8, 8)), tasks.GenerateParams())
    assert seen == ["preparing the image and its condition"]

