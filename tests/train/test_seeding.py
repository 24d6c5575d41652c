"""`omnivox train`: two fresh runs with one seed are bit-identical, whatever state the global generators had."""

import json
import random
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from typer.testing import CliRunner

from omnivox.cli import app

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "train_tiny_shape_vae.json"


def _run(root, out: Path, disturb: int) -> dict:
    np.random.seed(disturb)  # what an earlier run in the same process (or a library) left behind
    random.seed(disturb)
    result = CliRunner().invoke(app, ["train", "--config", str(CONFIG), "--output-dir", str(out), "--data",
                                      str(root), "--device", "cpu", "--max-steps", "2", "--set", "i_save=2",
                                      "--set", "seed=7"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    tensors = {}
    for file in sorted((out / "ckpts").glob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            tensors[f"{file.name}:{key}"] = value
    misc = json.loads(next((out / "ckpts").glob("misc_step*.json")).read_text())
    return {"tensors": tensors, "log": (out / "log.txt").read_text().splitlines(), "misc": misc}


def test_two_fresh_runs_with_one_seed_are_bit_identical(toolkit_root, tmp_path):
    root, _ = toolkit_root
    first, second = _run(root, tmp_path / "a", 1), _run(root, tmp_path / "b", 2)
    assert sorted(first["tensors"]) == sorted(second["tensors"])
    assert any(key.endswith("rng.numpy") for key in first["tensors"])
    for key, value in first["tensors"].items():
        assert np.array_equal(value, second["tensors"][key]), key  # weights, optimiser, torch/numpy RNG states
    strip = [lambda line: {k: v for k, v in json.loads(line.split(": ", 1)[1]).items() if "time" not in k}]
    assert [strip[0](line) for line in first["log"]] == [strip[0](line) for line in second["log"]]
    rng = lambda misc: json.dumps(misc.get("rng", misc), sort_keys=True)  # noqa: E731
    assert rng(first["misc"]) == rng(second["misc"])
