"""`omnivox train` end to end on a dataset root written by `omnivox data` from real assets.

The texture-flow stage (``ImageConditionedSLatPbr``: PBR latent + shape latent + condition images through a
DINOv3 folder) trains a tiny denoiser for 3 steps, is resumed to step 4, and its checkpoint loads with
`omnivox.models.from_pretrained`.
"""

import json

import torch
from typer.testing import CliRunner

from omnivox.cli import app
from omnivox.models import from_pretrained
from tests.conftest import HANG_GUARD_S
from tests.train.conftest import TOOLKIT_RESOLUTION as RESOLUTION


def _experiment(dinov3, **trainer_args):
    stats = {"mean": [0.0] * 4, "std": [1.0] * 4}
    return {
        "models": {"denoiser": {"name": "ElasticSLatFlowModel", "args": {
            "resolution": 16, "in_channels": 8, "out_channels": 4, "model_channels": 32, "cond_channels": 16,
            "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2.0, "dtype": "bfloat16", "use_checkpoint": False}}},
        "dataset": {"name": "ImageConditionedSLatPbr", "args": {
            "resolution": RESOLUTION, "image_size": 32, "pbr_slat_normalization": stats,
            "shape_slat_normalization": stats, "shape_encoder_name": "shape_enc_tiny",
            "pbr_encoder_name": "tex_enc_tiny"}},
        "trainer": {"name": "ImageConditionedSparseFlowMatchingCFGTrainer", "args": {
            "max_steps": 3, "batch_size": 2, "batch_split": 2, "ema_rate": [0.99], "i_save": 2, "i_log": 1,
            "mix_precision_mode": "amp", "mix_precision_dtype": "bfloat16", "num_workers": 0,
            "optimizer": {"name": "AdamW", "args": {"lr": 1e-3}}, "t_schedule": {"name": "uniform"},
            "elastic": {"name": "LinearMemoryController", "args": {"max_mem_ratio_start": 0.5}},
            "image_cond_model": {"name": "DinoV3FeatureExtractor", "args": {"model_name": str(dinov3)}},
            **trainer_args}},
    }


def test_train_command_trains_resumes_and_writes_loadable_checkpoints(toolkit_root, tmp_path):
    root, dinov3 = toolkit_root
    config = tmp_path / "exp.json"
    config.write_text(json.dumps(_experiment(dinov3)))
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["train", "--config", str(config), "--output-dir", str(out), "--data", str(root), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "starting at step 0 of 3" in result.output
    ckpts = out / "ckpts"
    assert {p.name for p in ckpts.glob("misc_step*.json")} == {"misc_step0000002.json", "misc_step0000003.json"}
    assert json.loads((out / "config.json").read_text())["trainer"]["args"]["max_steps"] == 3
    assert len((out / "log.txt").read_text().splitlines()) == 3

    result = runner.invoke(app, args + ["--max-steps", "4"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "starting at step 3 of 4" in result.output
    model = from_pretrained(ckpts / "denoiser_ema0.99_step0000004")
    assert model.config.dtype == "bfloat16"  # the experiment's runtime dtype; the file holds float32 masters
    assert model.blocks[0].mlp.mlp[0].weight.dtype == torch.bfloat16


def test_train_command_reports_config_errors(toolkit_root, tmp_path):
    root, dinov3 = toolkit_root
    config = tmp_path / "exp.json"
    config.write_text(json.dumps(_experiment(dinov3, lr=1e-3)))
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--output-dir", str(tmp_path / "o"),
                                      "--data", str(root), "--device", "cpu"])
    assert result.exit_code == 1
    assert "unknown key trainer.args.lr" in result.output


def test_train_command_under_torchrun_two_cpu_processes(toolkit_root, tmp_path):
    """The same command under ``torchrun --nproc_per_node 2`` (gloo on CPU) trains and checkpoints once."""
    import os
    import subprocess
    import sys

    root, dinov3 = toolkit_root
    config = tmp_path / "exp.json"
    config.write_text(json.dumps(_experiment(dinov3, max_steps=2, batch_split=1)))
    entry = tmp_path / "omnivox_entry.py"
    entry.write_text("from omnivox.cli import app\napp()\n")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(__import__("pathlib").Path(__file__).resolve().parents[2]),
                                          os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(entry),
               "train", "--config", str(config), "--output-dir", str(out), "--data", str(root), "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es) on cpu" in result.stdout
    misc = json.loads((out / "ckpts" / "misc_step0000002.json").read_text())
    assert misc["world_size"] == 2 and misc["step"] == 2
    assert len((out / "log.txt").read_text().splitlines()) == 2  # rank 0 logs, once per step
    from_pretrained(out / "ckpts" / "denoiser_step0000002")
