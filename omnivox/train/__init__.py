"""Training and fine-tuning of the TRELLIS.2 networks (spec training.md 1-3).

* `Trainer` (`trainer.py`): the loop every trainer shares: batches, precision, optimiser, EMA, clipping,
  activation checkpointing, DDP / FSDP2, checkpoints, logs, snapshots.
* `FlowMatchingTrainer` (`flow_trainers.py`): the three flow stages (sparse structure, shape latent,
  material latent).
* `omnivox.train.vae_trainers`: the SC-VAE trainers; their losses and teacher-forced encode/decode in
  `vae_losses.py`.
* `build.py`: the experiment JSON's names -> classes (one table) and `build_trainer`.
* `config.py`: the experiment JSON, read as-is into dataclasses.

Command line: ``omnivox train --config C --output-dir O --data DIR_OR_JSON`` (also under ``torchrun``).
"""

from typing import TYPE_CHECKING

from omnivox._lazy import lazy_exports

# Imported on first use (see omnivox._lazy): `omnivox train` checks its arguments before torch loads.
_EXPORTS = {
    "ConfigError": "config",
    "ExperimentConfig": "config",
    "TrainerConfig": "config",
    "load_experiment": "config",
    "Trainer": "trainer",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from omnivox.train.config import ConfigError, ExperimentConfig, TrainerConfig, load_experiment
    from omnivox.train.trainer import Trainer
