"""`omnivox train` runs the two SC-VAE trainers (shape and material) on an `omnivox data` root."""

import json

import pytest
from typer.testing import CliRunner

from omnivox.cli import app
from omnivox.models import from_pretrained
from tests.train.conftest import TOOLKIT_RESOLUTION

ENCODER = {"in_channels": 6, "model_channels": [8, 16, 32], "num_blocks": [0, 1, 1], "latent_channels": 4,
           "use_fp16": True}
DECODER = {"model_channels": [32, 16, 8], "num_blocks": [1, 1, 0], "latent_channels": 4, "use_fp16": True}
CASES = {
    "ShapeVaeTrainer": ("FlexiDualGridDataset", "FlexiDualGridVaeEncoder", "FlexiDualGridVaeDecoder",
                        {"resolution": TOOLKIT_RESOLUTION}, {"with_mesh": False}, {"lambda_render": 0.0}),
    "PbrVaeTrainer": ("SparseVoxelPbrDataset", "SparseUnetVaeEncoder", "SparseUnetVaeDecoder",
                      {"out_channels": 6}, {}, {}),
}


@pytest.mark.parametrize("trainer", sorted(CASES))
def test_vae_trainer_runs_from_the_command_line(trainer, toolkit_root, tmp_path):
    root, _ = toolkit_root
    dataset, encoder, decoder, decoder_args, dataset_args, trainer_args = CASES[trainer]
    experiment = {
        "models": {"encoder": {"name": encoder, "args": ENCODER},
                   "decoder": {"name": decoder, "args": {**DECODER, **decoder_args}}},
        "dataset": {"name": dataset, "args": {"resolution": TOOLKIT_RESOLUTION, **dataset_args}},
        "trainer": {"name": trainer, "args": {
            "max_steps": 2, "batch_size": 2, "i_save": 2, "i_log": 1, "num_workers": 0, "ema_rate": 0.99,
            "fp16_mode": "inflat_all", "optimizer": {"name": "AdamW", "args": {"lr": 1e-4}}, **trainer_args}},
    }
    config = tmp_path / "exp.json"
    config.write_text(json.dumps(experiment))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--output-dir", str(out), "--data", str(root),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"{trainer} on 4 samples" in result.output
    logs = [json.loads(line.split(": ", 1)[1]) for line in (out / "log.txt").read_text().splitlines()]
    assert len(logs) == 2 and all(log["loss"] > 0 for log in logs)
    # fp16 loss scale (logged as used in the step): 2^20, then +0.001 after a good step or -1 after a skipped one
    assert logs[0]["status/log_scale"] == 20.0 and logs[1]["status/log_scale"] in (20.001, 19.0)
    for key in ("encoder", "decoder"):
        model = from_pretrained(out / "ckpts" / f"{key}_ema0.99_step0000002")
        assert model.config.use_fp16  # the experiment's runtime setting travels with the checkpoint


def test_readme_tiny_example_config_trains(toolkit_root, tmp_path):
    """The README's tiny CPU example (`examples/train_tiny_shape_vae.json`), cut to 3 steps: builds, trains with a
    finite loss, and writes checkpoints that load."""
    from pathlib import Path

    root, _ = toolkit_root
    config = Path(__file__).resolve().parents[2] / "examples" / "train_tiny_shape_vae.json"
    assert json.loads(config.read_text())["dataset"]["args"]["resolution"] == TOOLKIT_RESOLUTION
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--output-dir", str(out), "--data", str(root),
                                      "--device", "cpu", "--max-steps", "3", "--set", "i_save=3"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "ShapeVaeTrainer on 4 samples" in result.output
    logs = [json.loads(line.split(": ", 1)[1]) for line in (out / "log.txt").read_text().splitlines()]
    assert len(logs) == 3 and all(0 < log["loss"] < float("inf") for log in logs)
    decoder = from_pretrained(out / "ckpts" / "decoder_ema0.99_step0000003")
    assert decoder.config.resolution == TOOLKIT_RESOLUTION
