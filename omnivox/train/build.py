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

import copy
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

# The ``models`` keys each trainer trains (what its constructor checks, known here before any model is built).
TRAINER_MODELS: dict[type, tuple] = {
    FlowMatchingTrainer: ("denoiser",),
    ShapeVaeTrainer: ("encoder", "decoder"),
    PbrVaeTrainer: ("encoder", "decoder"),
}
# The flow model on dense latent grids (the sparse-structure stage); the other flow models take sparse latents.
DENSE_FLOW_MODELS = ("SparseStructureFlowModel",)

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


def check_dataset_size(dataset, config, world_size: int) -> None:
    """At least one global batch of samples, or a one-line error saying where to look."""
    global_batch = config.per_process_batch(world_size) * world_size
    if len(dataset) < global_batch:
        raise ValueError(f"the dataset ({type(dataset).__name__}) has {len(dataset)} samples, fewer than one global "
                         f"batch of {global_batch}; `omnivox data stats ROOT` shows what each stage produced, and "
                         "the dataset.args filters (min_aesthetic_score, max_tokens, ...) drop assets")


def check_models_fit_data(experiment: ExperimentConfig, trainer_cls: type, dataset, config) -> None:
    """The experiment's model entries against the trainer and one data sample, before any model is built.

    A 1.3B flow model takes minutes and gigabytes to build; a wrong ``models`` key, channel count or model kind
    would otherwise surface as a shape error deep in the first training step. Raises `ConfigError` naming the
    config keys.
    """
    needed = next((keys for cls, keys in TRAINER_MODELS.items() if issubclass(trainer_cls, cls)), ())
    missing = [key for key in needed if key not in experiment.models]
    if missing:
        have = ", ".join(f"models.{key}" for key in experiment.models) or "no models"
        raise ConfigError(f"trainer.name {experiment.trainer.name} trains "
                          f"{' and '.join(f'models.{key}' for key in needed)}; the file has {have}")
    for key in needed:
        _model_class(experiment.models[key])  # an unknown name fails here, naming models.<key>.name
    # One sample, drawn from a shallow copy so the dataset's own draw counter (its random views) is untouched.
    sample = copy.copy(dataset)[0]
    if issubclass(trainer_cls, FlowMatchingTrainer):
        _check_flow_model(experiment, sample, config)
    elif issubclass(trainer_cls, (ShapeVaeTrainer, PbrVaeTrainer)):
        _check_vae_models(experiment, sample)


def _model_class(spec):
    from omnivox.models import MODEL_CLASSES

    if spec.name not in MODEL_CLASSES:
        raise ConfigError(f"{spec.path}.name {spec.name!r} is unknown; known: {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[spec.name]


def _model_arg(spec, key: str):
    """``spec.args[key]``, else the model config's default (None if it has no such field)."""
    if key in spec.args:
        return spec.args[key]
    for field in dataclasses.fields(_model_class(spec).config_class):
        if field.name == key:
            return None if field.default is dataclasses.MISSING else field.default
    return None


def _mismatch(spec, key: str, value, why: str) -> ConfigError:
    return ConfigError(f"{spec.path}.args.{key} is {value}, but {why}")


def _check_flow_model(experiment: ExperimentConfig, sample: dict, config) -> None:
    spec, dataset_name = experiment.models["denoiser"], f"dataset.name {experiment.dataset.name}"
    x_0 = sample["x_0"]
    sparse = x_0.dim() == 2  # (N, C) rows of a sparse latent; a dense latent is (C, R, R, R)
    if sparse == (spec.name in DENSE_FLOW_MODELS):
        raise ConfigError(f"{spec.path}.name {spec.name} takes {'sparse' if not sparse else 'dense'} latents, but "
                          f"{dataset_name} gives {'sparse' if sparse else 'dense'} ones")
    channels = int(x_0.shape[-1] if sparse else x_0.shape[0])
    concat = sample.get("concat_cond")
    concat_channels = int(concat.shape[-1]) if concat is not None else 0
    in_channels = _model_arg(spec, "in_channels")
    if in_channels != channels + concat_channels:
        why = f"{dataset_name} gives {channels}-channel latents"
        if concat_channels:
            why = (f"{dataset_name} gives {channels} latent + {concat_channels} concat_cond channels = "
                   f"{channels + concat_channels}")
        raise _mismatch(spec, "in_channels", in_channels, why)
    out_channels = _model_arg(spec, "out_channels")
    if out_channels != channels:
        raise _mismatch(spec, "out_channels", out_channels, f"{dataset_name} gives {channels}-channel latents")
    resolution = _model_arg(spec, "resolution")  # the dense model's grid; the sparse models do not depend on it
    if not sparse and resolution is not None and int(x_0.shape[1]) != resolution:
        raise _mismatch(spec, "resolution", resolution, f"{dataset_name} gives {int(x_0.shape[1])}^3 latent grids")
    cond = sample["cond"]
    cond_channels = _model_arg(spec, "cond_channels")
    if cond.dim() == 2:  # precomputed condition tokens (M, C)
        width, what = int(cond.shape[-1]), f"{dataset_name} gives {int(cond.shape[-1])}-channel condition tokens"
    else:  # images, encoded by trainer.args.image_cond_model
        width, what = _image_encoder_width(config.image_cond_model)
    if width is not None and cond_channels != width:
        raise _mismatch(spec, "cond_channels", cond_channels, what)


def _image_encoder_width(spec) -> tuple:
    """(token width, description) of ``trainer.args.image_cond_model`` from its ``config.json``, unloaded."""
    import json

    if spec is None:
        raise ConfigError("the dataset gives condition images but trainer.args.image_cond_model is not set")
    name = spec.get("args", {}).get("model_name") if isinstance(spec, dict) else spec
    folder = Path(str(name))
    if not folder.is_dir():
        raise ConfigError(f"trainer.args.image_cond_model: {name!r} is not a local folder; download "
                          "facebook/dinov3-vitl16-pretrain-lvd1689m (config.json + model.safetensors) and give its "
                          "path (e.g. --set image_cond_model=PATH), or feed precomputed condition tokens")
    try:
        width = int(json.loads((folder / "config.json").read_text()).get("hidden_size", 1024))
    except (OSError, ValueError, TypeError, AttributeError):
        return None, ""  # the loader reports an unreadable folder in its own words
    return width, f"trainer.args.image_cond_model ({folder}) gives {width}-channel tokens"


def _channels(value) -> int:
    """Feature channels of a sample entry: a tensor's last dimension, or a SparseTensor's feature width."""
    return int((value.feats if hasattr(value, "feats") else value).shape[-1])


def _check_vae_models(experiment: ExperimentConfig, sample: dict) -> None:
    encoder, decoder = experiment.models["encoder"], experiment.models["decoder"]
    latent = _model_arg(encoder, "latent_channels")
    if _model_arg(decoder, "latent_channels") != latent:
        raise _mismatch(decoder, "latent_channels", _model_arg(decoder, "latent_channels"),
                        f"{encoder.path}.args.latent_channels is {latent}")
    if "x" in sample:  # material voxels (N, C)
        channels, what = _channels(sample["x"]), f"dataset.name {experiment.dataset.name} gives"
        for spec, key in ((encoder, "in_channels"), (decoder, "out_channels")):
            if _model_arg(spec, key) != channels:
                raise _mismatch(spec, key, _model_arg(spec, key), f"{what} {channels} attribute channels")
    elif "vertices" in sample:  # dual-grid geometry: dual vertices + intersection flags
        channels = int(_channels(sample["vertices"]) + _channels(sample["intersected"]))
        if _model_arg(encoder, "in_channels") != channels:
            raise _mismatch(encoder, "in_channels", _model_arg(encoder, "in_channels"),
                            f"dataset.name {experiment.dataset.name} gives {channels} geometry channels (dual "
                            "vertices + intersected)")


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
    # Checks that need only the config and one sample run first: building a 1.3B model takes minutes.
    check_dataset_size(dataset, config, (dist_info or DistInfo()).world_size)
    try:
        check_models_fit_data(experiment, cls, dataset, config)
    except ConfigError as error:
        raise ConfigError(f"{experiment.source}: {error}") from None
    models = build_models(experiment, config.mix_precision_mode)
    specs = {key: (spec.name, spec.args) for key, spec in experiment.models.items()}
    return cls(models, dataset, config, output_dir, device=device, dist_info=dist_info, model_specs=specs, **kwargs)
