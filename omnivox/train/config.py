"""The experiment JSON (spec training.md 1.3), read as-is into typed dataclasses.

An experiment file has three sections, exactly as the reference's ``configs/*.json``::

    {"models":  {"<key>": {"name": <model class>, "args": {...}}, ...},
     "dataset": {"name": <dataset class>, "args": {...}},
     "trainer": {"name": <trainer class>, "args": {...}}}

`load_experiment` checks the shape of the file and returns an `ExperimentConfig`; the trainer ``args`` become a
`TrainerConfig` (or the subclass the trainer class names in ``config_class``) through `parse_dataclass`, where
an unknown key is an error whose message gives its path (``trainer.args.ema_rat``) and the known keys. Model
``args`` are checked against the model's config dataclass in `omnivox.train.build`; dataset ``args`` against
the dataset's constructor there.

Aliases of the reference are accepted and normalised here, once: ``batch_size`` vs ``batch_size_per_gpu``, the
legacy ``fp16_mode`` (forces float16), dtype spellings (``bf16``, ``fp16``, ...), ``ema_rate`` as a number or a
list, ``grad_clip`` as a number or ``{"name": "AdaptiveGradClipper", "args": {...}}``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

PathLike = Union[str, Path]

_DTYPE_ALIASES = {
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
}
PRECISION_MODES = ("inflat_all", "amp", None)


class ConfigError(ValueError):
    """A problem in an experiment file; the message names the key path."""


# ------------------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class ComponentSpec:
    """One ``{"name": ..., "args": {...}}`` entry of the experiment file."""

    name: str
    args: dict
    path: str  # key path in the file, for messages, e.g. "models.denoiser"


@dataclass(kw_only=True)
class TrainerConfig:
    """The base trainer's ``trainer.args`` (spec training.md 1.3); every field is a JSON key.

    Trainer subclasses add their own keys by subclassing this dataclass and naming it in their
    ``config_class``. Keys marked *omnivox* are ours; the rest are the reference's.
    """

    max_steps: int
    batch_size: Optional[int] = None  # global batch; or give batch_size_per_gpu
    batch_size_per_gpu: Optional[int] = None
    batch_split: int = 1  # gradient-accumulation micro-batches per step
    optimizer: dict = field(default_factory=lambda: {"name": "AdamW", "args": {"lr": 1e-4}})
    lr_scheduler: Optional[dict] = None  # {"name": "LinearWarmupLRScheduler"|"CosineLRScheduler", "args": {...}}
    elastic: Optional[dict] = None  # {"name": "LinearMemoryController", "args": {...}} (spec 1.9)
    grad_clip: Union[None, float, dict] = None
    ema_rate: Union[float, list] = 0.9999
    fp16_mode: Optional[str] = None  # legacy alias: forces float16 and sets the mode
    mix_precision_mode: Optional[str] = "inflat_all"
    mix_precision_dtype: str = "float16"
    fp16_scale_growth: float = 1e-3
    parallel_mode: str = "ddp"  # "ddp" or (omnivox) "fsdp" (FSDP2 fully_shard)
    finetune_ckpt: Optional[dict] = None  # {model_key: official checkpoint path (NAME, NAME.json or a .pt)}
    log_param_stats: bool = False  # log every parameter's norm and gradient norm (one sync per parameter)
    prefetch_data: bool = True  # accepted for the reference's configs; DataLoader workers always prefetch
    snapshot_batch_size: int = 4
    i_print: int = 1000
    i_log: int = 500
    i_sample: int = 10000
    i_save: int = 10000
    i_ddpcheck: int = 10000
    seed: int = 0  # omnivox: one seed for data order and every training-time random draw
    num_workers: Optional[int] = None  # omnivox: DataLoader workers per process (None: cpus / processes, <= 8)
    activation_checkpointing: Union[None, bool, float] = None  # omnivox: fraction of blocks to checkpoint

    def __post_init__(self) -> None:
        where = "trainer.args"
        if not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise ConfigError(f"{where}.max_steps must be a non-negative integer, got {self.max_steps!r}")
        if (self.batch_size is None) == (self.batch_size_per_gpu is None):
            raise ConfigError(f"{where}: give exactly one of batch_size and batch_size_per_gpu")
        for name in ("batch_size", "batch_size_per_gpu", "batch_split", "i_print", "i_log", "i_sample",
                     "i_save", "i_ddpcheck", "snapshot_batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{where}.{name} must be a positive integer, got {value!r}")
        if self.fp16_mode is not None:  # the reference's legacy switch
            self.mix_precision_mode, self.mix_precision_dtype = self.fp16_mode, "float16"
        if self.mix_precision_mode not in PRECISION_MODES:
            raise ConfigError(f"{where}.mix_precision_mode must be one of {PRECISION_MODES}, "
                              f"got {self.mix_precision_mode!r}")
        dtype = _DTYPE_ALIASES.get(str(self.mix_precision_dtype).lower())
        if dtype is None:
            raise ConfigError(f"{where}.mix_precision_dtype {self.mix_precision_dtype!r} is not one of "
                              f"{sorted(_DTYPE_ALIASES)}")
        self.mix_precision_dtype = dtype
        rates = self.ema_rate if isinstance(self.ema_rate, list) else [self.ema_rate]
        if not rates or any(not isinstance(r, (int, float)) or not 0.0 <= r < 1.0 for r in rates):
            raise ConfigError(f"{where}.ema_rate must be a number or a list of numbers in [0, 1), "
                              f"got {self.ema_rate!r}")
        self.ema_rate = [float(r) for r in rates]
        if self.parallel_mode not in ("ddp", "fsdp"):
            raise ConfigError(f"{where}.parallel_mode must be 'ddp' or 'fsdp', got {self.parallel_mode!r}")
        _check_component(self.optimizer, f"{where}.optimizer")
        for name in ("lr_scheduler", "elastic"):
            if getattr(self, name) is not None:
                _check_component(getattr(self, name), f"{where}.{name}")
        if isinstance(self.grad_clip, dict):
            _check_component(self.grad_clip, f"{where}.grad_clip")
        elif self.grad_clip is not None and (not isinstance(self.grad_clip, (int, float)) or self.grad_clip <= 0):
            raise ConfigError(f"{where}.grad_clip must be a positive number or a {{name, args}} object")
        ac = self.activation_checkpointing
        if ac is not None and not isinstance(ac, bool) and not (isinstance(ac, (int, float)) and 0 <= ac <= 1):
            raise ConfigError(f"{where}.activation_checkpointing must be a bool or a fraction in [0, 1]")
        if self.elastic is not None and ac is not None:
            raise ConfigError(f"{where}: give either elastic or activation_checkpointing, not both")

    def per_process_batch(self, world_size: int) -> int:
        """The per-process batch for ``world_size`` processes (checks that the global batch divides)."""
        if self.batch_size_per_gpu is not None:
            per = self.batch_size_per_gpu
        else:
            if self.batch_size % world_size:
                raise ConfigError(f"trainer.args.batch_size={self.batch_size} is not divisible by the "
                                  f"{world_size} processes")
            per = self.batch_size // world_size
        if per % self.batch_split:
            raise ConfigError(f"trainer.args.batch_split={self.batch_split} does not divide the per-process "
                              f"batch {per}")
        return per


def _check_component(value: Any, where: str) -> None:
    if not isinstance(value, dict) or "name" not in value or not isinstance(value["name"], str):
        raise ConfigError(f"{where} must be an object {{\"name\": ..., \"args\": {{...}}}}, got {value!r}")
    extra = set(value) - {"name", "args"}
    if extra:
        raise ConfigError(f"{where}: unknown keys {sorted(extra)} (expected 'name' and 'args')")
    if not isinstance(value.get("args", {}), dict):
        raise ConfigError(f"{where}.args must be an object")


# ---------------------------------------------------------------------------------------- experiment
@dataclass
class ExperimentConfig:
    """A parsed experiment file: model, dataset and trainer entries (``args`` still plain JSON)."""

    models: dict  # key -> ComponentSpec
    dataset: ComponentSpec
    trainer: ComponentSpec
    source: str = "<dict>"

    def to_json(self) -> dict:
        """The file's JSON again (what `load_experiment` read)."""
        return {
            "models": {k: {"name": m.name, "args": m.args} for k, m in self.models.items()},
            "dataset": {"name": self.dataset.name, "args": self.dataset.args},
            "trainer": {"name": self.trainer.name, "args": self.trainer.args},
        }


def _component(value: Any, where: str) -> ComponentSpec:
    _check_component(value, where)
    return ComponentSpec(value["name"], dict(value.get("args", {})), where)


def experiment_from_dict(data: dict, source: str = "<dict>") -> ExperimentConfig:
    """Check the three sections of an experiment dict (spec 1.3) and wrap them.

    Raises:
        ConfigError: missing or unknown sections or malformed entries; the message starts with ``source``.
    """
    try:
        if not isinstance(data, dict):
            raise ConfigError(f"the file must hold a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"models", "dataset", "trainer"}
        if unknown:
            raise ConfigError(f"unknown top-level keys {sorted(unknown)} (expected models, dataset, trainer)")
        for section in ("models", "dataset", "trainer"):
            if section not in data:
                raise ConfigError(f"missing section {section!r}")
        if not isinstance(data["models"], dict) or not data["models"]:
            raise ConfigError("'models' must be a non-empty object {key: {name, args}}")
        models = {key: _component(value, f"models.{key}") for key, value in data["models"].items()}
        return ExperimentConfig(models, _component(data["dataset"], "dataset"),
                                _component(data["trainer"], "trainer"), source)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def load_experiment(path: PathLike) -> ExperimentConfig:
    """Read an experiment JSON file (the reference's format, unchanged)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config {path} not found")
    if path.stat().st_size > 16 * 2**20:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for an experiment config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from error
    return experiment_from_dict(data, str(path))


# ------------------------------------------------------------------------------------------ dataclasses
def parse_dataclass(cls: type, args: dict, where: str):
    """Build dataclass ``cls`` from JSON ``args``; unknown keys raise `ConfigError` naming ``where.key``.

    Missing required fields and values rejected by ``__post_init__`` are reported the same way.
    """
    if not isinstance(args, dict):
        raise ConfigError(f"{where} must be an object, got {type(args).__name__}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [key for key in args if key not in names]
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]}" + (f" (and {unknown[1:]})" if unknown[1:] else "")
                          + f"; {cls.__name__} accepts: {', '.join(names)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in args]
    if missing:
        raise ConfigError(f"missing key {where}.{missing[0]} (required by {cls.__name__})")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in args.items():
        if isinstance(value, list) and "Tuple" in str(hints.get(key, "")):
            value = tuple(value)
        values[key] = value
    try:
        return cls(**values)
    except ConfigError as error:
        raise ConfigError(f"{error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from error


def dataclass_to_json(config) -> dict:
    """JSON ``args`` of a config dataclass (tuples written as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
