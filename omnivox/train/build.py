"""From an experiment file to a ready `Trainer`: the experiment JSON's names -> classes, in one table each.

* ``models.<key>.name`` -> `omnivox.models.MODEL_CLASSES` (the checkpoint loader's table);
* ``dataset.name`` -> `omnivox.data.datasets.DATASET_CLASSES`;
* ``trainer.name`` -> `TRAINER_CLASSES` below (the reference's class names and ours).

Models are built for training: a flow model's ``dtype`` and a VAE's ``use_fp16`` select low-precision
parameters only in ``inflat_all`` mode (where float32 masters keep the exact values); under ``amp`` or float32
training the parameters are float32 and autocast picks the compute dtype. Checkpoints are still written with
the experiment's own ``args``, so `omnivox.models.from_pretrained` loads them at the released runtime dtypes.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional, Union


from omnivox.train.config import ConfigError, ExperimentConfig, parse_dataclass
from omnivox.train.distributed import DistInfo
from omnivox.train.flow_trainers import FlowMatchingTrainer
from omnivox.train.trainer import Trainer
from omnivox.train.vae_trainers import PbrVaeTrainer, ShapeVaeTrainer

logger = logging.getLogger(__name__)

TRAINER_CLASSES: dict[str, type] = {
    "FlowMatchingTrainer": FlowMatchingTrainer,
    "ImageConditionedFlowMatchingCFGTrainer": FlowMatchingTrainer,  # SS flow (dense)
    "ImageConditionedSparseFlowMatchingCFGTrainer": FlowMatchingTrainer,  # shape and material flows (sparse)
    "ShapeVaeTrainer": ShapeVaeTrainer,
    "PbrVaeTrainer": PbrVaeTrainer,
}

# Model args of the reference with no effect here (checkpointing flags; the trainer owns checkpointing).
IGNORED_MODEL_ARGS = ("use_checkpoint", "block_args")


def trainer_class(name: str) -> type:
    if name not in TRAINER_CLASSES:
        raise ConfigError(f"trainer.name {name!r} is unknown; known: {', '.join(TRAINER_CLASSES)}")
    return TRAINER_CLASSES[name]


def training_model_args(name: str, args: dict, precision_mode: Optional[str], where: str) -> dict:
    """Check ``args`` against the model's config (unknown keys are errors) and set training dtypes."""
    from omnivox.models import MODEL_CLASSES

    if name not in MODEL_CLASSES:
        raise ConfigError(f"{where}.name {name!r} is unknown; known: {', '.join(MODEL_CLASSES)}")
    fields = {f.name for f in dataclasses.fields(MODEL_CLASSES[name].config_class)}
    unknown = sorted(set(args) - fields - set(IGNORED_MODEL_ARGS))
    if unknown:
        raise ConfigError(f"unknown key {where}.args.{unknown[0]}; {name} accepts: {', '.join(sorted(fields))}")
    args = {k: v for k, v in args.items() if k in fields}
    if precision_mode != "inflat_all":
        if "dtype" in fields:
            args["dtype"] = "float32"
        if "use_fp16" in fields:
            args["use_fp16"] = False
    return args


def build_models(experiment: ExperimentConfig, precision_mode: Optional[str], device="cpu") -> dict:
    """Every model of the experiment, randomly initialised (``device="meta"`` allocates nothing)."""
    from omnivox.models import build_model

    models = {}
    for key, spec in experiment.models.items():
        args = training_model_args(spec.name, spec.args, precision_mode, spec.path)
        models[key] = build_model(spec.name, args, f"{experiment.source}: {spec.path}", device=device)
    return models


def build_dataset(experiment: ExperimentConfig, data: Union[str, Path, dict], seed: int = 0):
    """The experiment's dataset over ``data`` (a dataset root, or the reference's ``--data_dir`` JSON)."""
    from omnivox.data.datasets import DATASET_CLASSES

    spec = experiment.dataset
    if spec.name not in DATASET_CLASSES:
        raise ConfigError(f"dataset.name {spec.name!r} is unknown; known: {', '.join(DATASET_CLASSES)}")
    args = dict(spec.args)
    args.setdefault("seed", seed)
    try:
        return DATASET_CLASSES[spec.name](data, **args)
    except TypeError as error:
        raise ConfigError(f"{experiment.source}: dataset.args: {error}") from error


def build_trainer(experiment: ExperimentConfig, output_dir: Union[str, Path], dataset, *,
                  overrides: Optional[dict] = None, device=None, dist_info: Optional[DistInfo] = None,
                  **kwargs) -> Trainer:
    """The trainer an experiment describes, on ``dataset``.

    Args:
        experiment: the parsed experiment file.
        output_dir: run directory.
        dataset: the training dataset (see `build_dataset`).
        overrides: ``trainer.args`` keys to replace (e.g. ``{"max_steps": 100}`` from the command line).
        device, dist_info, kwargs: passed to the trainer (``resume``, ``load_dir``, ``tensorboard``, ...).
    """
    cls = trainer_class(experiment.trainer.name)
    args = {**experiment.trainer.args, **(overrides or {})}
    try:
        config = parse_dataclass(cls.config_class, args, "trainer.args")
    except ConfigError as error:
        raise ConfigError(f"{experiment.source}: {error}") from None
    models = build_models(experiment, config.mix_precision_mode)
    specs = {key: (spec.name, spec.args) for key, spec in experiment.models.items()}
    return cls(models, dataset, config, output_dir, device=device, dist_info=dist_info, model_specs=specs, **kwargs)
