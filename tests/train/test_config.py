"""The experiment JSON: the released flow configs parse and build (meta device); unknown keys name their path."""

import json
from pathlib import Path

import pytest

import omnivox.train
from omnivox.train.build import build_models, trainer_class
from omnivox.train.config import ConfigError, experiment_from_dict, load_experiment, parse_dataclass

CONFIGS = sorted((Path(omnivox.train.__file__).parent / "configs").glob("*.json"))


def test_there_are_five_flow_configs():
    assert len(CONFIGS) == 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_released_config_parses_and_builds_on_meta(path):
    experiment = load_experiment(path)
    cls = trainer_class(experiment.trainer.name)
    config = parse_dataclass(cls.config_class, experiment.trainer.args, "trainer.args")
    assert config.mix_precision_mode == "amp" and config.mix_precision_dtype == "bfloat16"
    assert config.ema_rate == [0.9999]
    models = build_models(experiment, config.mix_precision_mode, device="meta")
    denoiser = models["denoiser"]
    assert all(p.is_meta for p in denoiser.parameters())
    count = sum(p.numel() for p in denoiser.parameters())
    assert 1.2e9 < count < 1.4e9, count  # "1.3B"
    # amp training keeps float32 parameters; the checkpoint JSON keeps the released bfloat16
    assert {p.dtype for p in denoiser.parameters()} == {__import__("torch").float32}
    assert experiment.models["denoiser"].args["dtype"] == "bfloat16"
    per_gpu = config.per_process_batch(1)
    assert per_gpu % config.batch_split == 0


def _experiment(**trainer_args):
    return {"models": {"denoiser": {"name": "SLatFlowModel", "args": {"in_channels": 8}}},
            "dataset": {"name": "ImageConditionedSLatShape", "args": {}},
            "trainer": {"name": "ImageConditionedSparseFlowMatchingCFGTrainer",
                        "args": {"max_steps": 1, "batch_size": 2, **trainer_args}}}


def test_unknown_trainer_key_names_its_path():
    experiment = experiment_from_dict(_experiment(ema_rat=0.9), "exp.json")
    cls = trainer_class(experiment.trainer.name)
    with pytest.raises(ConfigError, match=r"unknown key trainer\.args\.ema_rat"):
        parse_dataclass(cls.config_class, experiment.trainer.args, "trainer.args")


def test_unknown_model_key_names_its_path():
    data = _experiment()
    data["models"]["denoiser"]["args"]["num_blokcs"] = 3
    with pytest.raises(ConfigError, match=r"unknown key models\.denoiser\.args\.num_blokcs"):
        build_models(experiment_from_dict(data), "amp", device="meta")


def test_structure_errors():
    with pytest.raises(ConfigError, match="exp.json: unknown top-level keys"):
        experiment_from_dict({**_experiment(), "extra": {}}, "exp.json")
    with pytest.raises(ConfigError, match="missing section 'trainer'"):
        experiment_from_dict({k: v for k, v in _experiment().items() if k != "trainer"})
    with pytest.raises(ConfigError, match=r"trainer.name 'NoSuchTrainer' is unknown"):
        trainer_class("NoSuchTrainer")
    with pytest.raises(ConfigError, match="t_schedule.name"):
        parse_dataclass(trainer_class("FlowMatchingTrainer").config_class,
                        {"max_steps": 1, "batch_size": 2, "t_schedule": {"name": "cosine"}}, "trainer.args")


def test_bad_json_file_is_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        load_experiment(path)
    path.write_text(json.dumps([1]))
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        load_experiment(path)


def test_trainer_table_covers_the_five_trainers():
    from omnivox.train.flow_trainers import FlowMatchingTrainer
    from omnivox.train.vae_trainers import PbrVaeTrainer, ShapeVaeTrainer
    assert trainer_class("ImageConditionedFlowMatchingCFGTrainer") is FlowMatchingTrainer
    assert trainer_class("ImageConditionedSparseFlowMatchingCFGTrainer") is FlowMatchingTrainer
    assert trainer_class("ShapeVaeTrainer") is ShapeVaeTrainer
    assert trainer_class("PbrVaeTrainer") is PbrVaeTrainer
