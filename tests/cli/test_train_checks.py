"""`omnivox train` says what is wrong with its setup before it builds a model (issue 25, part 6): a missing extra,
a dataset with too few samples, and models that do not fit the trainer or the data, each in one line naming
the config keys."""

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from omnivox.cli import app
from tests.train.conftest import toolkit_root  # noqa: F401  (the session fixture: a dataset root from real assets)
from tests.train.test_flow_cli import _experiment
from tests.train.test_trainer_cli import CASES, DECODER, ENCODER

runner = CliRunner()
CONFIGS = Path(__file__).parents[2] / "omnivox" / "train" / "configs"


@pytest.fixture
def no_model_builds(monkeypatch):
    """Fails the test if a model is built; the checks must come first."""
    from omnivox.train import build

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the setup was checked")

    monkeypatch.setattr(build, "build_models", refuse)


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


def test_missing_extras_give_the_same_hint(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    absent = {"tensorboard", "gradio"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))
    train = runner.invoke(app, ["train", "-c", "x.json", "-o", str(tmp_path), "-d", str(tmp_path)])
    serve = runner.invoke(app, ["serve", "--weights", str(tmp_path)])
    assert train.exit_code == serve.exit_code == 2
    assert _one_line(train.output) == ("error: omnivox train needs the 'train' extra (missing: tensorboard); "
                                       "install it with: pip install 'omnivox[train]'")
    assert _one_line(serve.output) == ("error: omnivox serve needs the 'app' extra (missing: gradio); install it "
                                       "with: pip install 'omnivox[app]'")


def test_tryrun_reports_an_empty_dataset_before_building_the_1_3b_model(no_model_builds, tmp_path):
    root = tmp_path / "root"
    root.mkdir()  # indexed nothing: no latents, no renders
    config = CONFIGS / "slat_flow_img2shape_dit_1_3B_512_bf16.json"
    result = runner.invoke(app, ["train", "-c", str(config), "-o", str(tmp_path / "run"), "-d", str(root),
                                 "--device", "cpu", "--tryrun"])
    assert result.exit_code == 1
    line = _one_line(result.output)
    assert "has 0 samples, fewer than one global batch of 8" in line and "omnivox data stats" in line


def _flow(dinov3, change):
    experiment = _experiment(dinov3)
    change(experiment)
    return experiment


def _set(path, value):
    def change(experiment):
        *parents, key = path.split(".")
        node = experiment
        for part in parents:
            node = node[part]
        node[key] = value
    return change


def _rename_denoiser(experiment):
    experiment["models"] = {"model": experiment["models"].pop("denoiser")}


@pytest.mark.parametrize("change, message", [
    (_set("models.denoiser.args.in_channels", 16),
     "models.denoiser.args.in_channels is 16, but dataset.name ImageConditionedSLatPbr gives 4 latent + 4 "
     "concat_cond channels = 8"),
    (_set("models.denoiser.args.out_channels", 8),
     "models.denoiser.args.out_channels is 8, but dataset.name ImageConditionedSLatPbr gives 4-channel latents"),
    (_set("models.denoiser.args.cond_channels", 32),
     "models.denoiser.args.cond_channels is 32, but trainer.args.image_cond_model"),
    (_set("models.denoiser.name", "SparseStructureFlowModel"),
     "models.denoiser.name SparseStructureFlowModel takes dense latents, but dataset.name ImageConditionedSLatPbr "
     "gives sparse ones"),
    (_rename_denoiser,
     "trainer.name ImageConditionedSparseFlowMatchingCFGTrainer trains models.denoiser; the file has models.model"),
])
def test_flow_models_that_do_not_fit_are_named(toolkit_root, no_model_builds, tmp_path, change,  # noqa: F811
                                               message):
    root, dinov3 = toolkit_root
    config = tmp_path / "exp.json"
    config.write_text(json.dumps(_flow(dinov3, change)))
    result = runner.invoke(app, ["train", "-c", str(config), "-o", str(tmp_path / "run"), "-d", str(root),
                                 "--device", "cpu", "--tryrun"])
    assert result.exit_code == 1, result.output
    assert message in _one_line(result.output)


def test_vae_models_that_do_not_fit_are_named(toolkit_root, no_model_builds, tmp_path):  # noqa: F811
    root, _ = toolkit_root
    dataset, encoder, decoder, decoder_args, dataset_args, _ = CASES["PbrVaeTrainer"]
    good = {
        "models": {"encoder": {"name": encoder, "args": ENCODER},
                   "decoder": {"name": decoder, "args": {**DECODER, **decoder_args}}},
        "dataset": {"name": dataset, "args": {"resolution": 32, **dataset_args}},
        "trainer": {"name": "PbrVaeTrainer", "args": {"max_steps": 1, "batch_size": 2, "num_workers": 0,
                                                      "optimizer": {"name": "AdamW", "args": {"lr": 1e-4}}}},
    }
    for path, value, message in (
            ("models.decoder.args.latent_channels", 8,
             "models.decoder.args.latent_channels is 8, but models.encoder.args.latent_channels is 4"),
            ("models.encoder.args.in_channels", 3,
             "models.encoder.args.in_channels is 3, but dataset.name SparseVoxelPbrDataset gives 6 attribute "
             "channels")):
        experiment = copy.deepcopy(good)
        _set(path, value)(experiment)
        config = tmp_path / "vae.json"
        config.write_text(json.dumps(experiment))
        result = runner.invoke(app, ["train", "-c", str(config), "-o", str(tmp_path / "run"), "-d", str(root),
                                     "--device", "cpu", "--tryrun"])
        assert result.exit_code == 1, result.output
        assert message in _one_line(result.output)
