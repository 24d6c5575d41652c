"""`Trainer`: the optimisation loop shared by every omnivox trainer (spec training.md 1.4-1.13).

A trainer subclass implements one method, `Trainer.training_losses`, and optionally `Trainer.snapshot`; the
base class owns everything else:

* batches: a resumable, rank-aware `BatchStream` over the dataset, ``batch_split`` micro-batches per step with
  gradient accumulation (gradients are synchronised only on the last micro-batch);
* precision: bf16/fp16 autocast, fp16 loss scaling and float32 master weights (`MixedPrecision`);
* optimiser (``Adam``, ``AdamW``, ``SGD``), learning-rate schedule (a pure function of the step), gradient
  clipping (fixed or adaptive), EMA at one or several rates;
* activation checkpointing of ``model.blocks``, fixed or chosen per micro-batch by `LinearMemoryController`;
* DDP (default) or FSDP2 when the process group is initialised;
* checkpoints (official layout + full resume state, atomic; see `omnivox.train.checkpoint`), fine-tuning from
  official checkpoints, ``log.txt``, TensorBoard and a tqdm progress bar on rank 0, periodic snapshots.

Randomness. Each micro-batch gets its own generator, `Trainer.rng`, seeded from ``(seed, step, global
micro-batch index)`` where the index is ``rank * batch_split + j``. Subclasses draw every training-time random
number (noise, time steps, dropout masks, cameras) from it. So the draws depend only on the step and on which
micro-batch of the global batch is being processed, not on the process: one process with ``batch_split=2``
follows the same trajectory as two processes with ``batch_split=1``, and a resumed run draws what the
uninterrupted run drew.

Fixes of the reference's defects (spec 1.14): the data cursor counts consumed batches, not prefetched ones;
RNG states and every piece of optimiser / scaler / clipper / controller state are saved, so a resume is
bit-exact; checkpoints are written atomically; nothing is pickled. On CUDA, "bit-exact" also needs
deterministic kernels, as for any two runs: ``torch.use_deterministic_algorithms(True)`` (the sparse models'
per-sample broadcast backpropagates through ``index_add_``) and a deterministic attention kernel (cuDNN's
backward is not); `tests/train/test_trainer_gpu.py` shows the recipe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from omnivox.train import checkpoint as ckpt
from omnivox.train.config import ConfigError, TrainerConfig, dataclass_to_json
from omnivox.train.data_stream import BatchStream, move_to_device
from omnivox.train.distributed import (DistInfo, all_reduce_mean, barrier, check_replicas_equal, shard_fsdp,
                                      wrap_ddp)
from omnivox.train.ema import EMA
from omnivox.train.grad_clip import build_grad_clipper
from omnivox.train.memory import LinearMemoryController, set_checkpointed_blocks
from omnivox.train.precision import DivergenceError, MixedPrecision
from omnivox.train.schedules import build_lr_schedule
from omnivox.sparse.tensor import SparseTensor

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

OPTIMIZERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD}


class Trainer:
    """Base trainer. Subclasses implement `training_losses` (and optionally `snapshot`).

    Args:
        models: ``{key: module}``; keys follow the experiment file (``"denoiser"``, ``"encoder"``, ...).
            Parameters with ``requires_grad=False`` are frozen.
        dataset: map-style dataset of samples (see `omnivox.train.data_stream`).
        config: the trainer's `TrainerConfig` (or the subclass named by ``config_class``).
        output_dir: run directory (``ckpts/``, ``samples/``, ``tb_logs/``, ``log.txt``).
        device: torch device (default: CUDA if available, else CPU).
        dist_info: this process's rank and the world size (default: a single process). The process group must
            already be initialised when ``world_size > 1``.
        resume: continue from the latest complete checkpoint in ``load_dir`` (default ``output_dir``).
        load_dir: where to look for checkpoints to resume from.
        model_specs: ``{key: (name, args)}`` from the experiment file, written into each checkpoint's JSON so
            it loads with `omnivox.models.from_pretrained` (default: the model's own class and config).
        tensorboard: write TensorBoard events on rank 0.
        progress: show a tqdm progress bar on rank 0.

    Attributes:
        models: what subclasses call in the forward pass: the DDP wrapper in a DDP run (attributes fall through
            to the model), the module itself otherwise. `unwrap` gives the module.
        step: optimisation steps done.
        rng: the current micro-batch's generator (see the module docstring).
    """

    config_class = TrainerConfig

    def __init__(self, models: dict, dataset, config: TrainerConfig, output_dir: PathLike, *,
                 device: Optional[Union[str, torch.device]] = None, dist_info: Optional[DistInfo] = None,
                 resume: bool = True, load_dir: Optional[PathLike] = None, model_specs: Optional[dict] = None,
                 tensorboard: bool = True, progress: bool = True) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config
        self.output_dir = Path(output_dir)
        self.load_dir = Path(load_dir) if load_dir is not None else self.output_dir
        self.info = dist_info or DistInfo()
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.dataset = dataset
        self.step = 0
        # numpy's and Python's global generators start from the seed too (torch's is seeded by the entry point
        # before the models are built), so two fresh runs with one seed are identical; a resume restores all three
        # from the checkpoint.
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        self.rng = torch.Generator(device=self.device)
        self._tensorboard_enabled, self._progress_enabled = tensorboard, progress
        self._writer = None
        self._log_window: list = []
        self._last_saved = -1
        self.model_specs = model_specs or {}
        self.per_process_batch = config.per_process_batch(self.info.world_size)
        self._raw = {key: model.to(self.device) for key, model in models.items()}

        if self.info.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)

        resume_step = ckpt.find_latest_step(self.load_dir / "ckpts") if resume else None
        if resume_step is None and config.finetune_ckpt:
            self._load_finetune(config.finetune_ckpt)

        # Parallel wrapping comes before the parameter lists: FSDP2 replaces parameters by sharded ones.
        self.models = {}
        for key, model in self._raw.items():
            trainable = any(p.requires_grad for p in model.parameters())
            if self.info.distributed and trainable and config.parallel_mode == "fsdp":
                self.models[key] = shard_fsdp(model)
            elif self.info.distributed and trainable:
                self.models[key] = wrap_ddp(model, self.device)
            else:
                self.models[key] = model
        self._param_names, params = [], []
        for key, model in self._raw.items():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    self._param_names.append((key, name))
                    params.append(p)
        if not params:
            raise ValueError("no trainable parameters: every parameter has requires_grad=False")
        self.precision = MixedPrecision(config.mix_precision_mode, config.mix_precision_dtype, params,
                                        self.device.type, config.fp16_scale_growth)
        opt_spec = config.optimizer
        if opt_spec["name"] not in OPTIMIZERS:
            raise ConfigError(f"trainer.args.optimizer.name {opt_spec['name']!r} is unknown; known: "
                              f"{', '.join(OPTIMIZERS)}")
        self.optimizer = OPTIMIZERS[opt_spec["name"]](self.precision.master_params, **opt_spec.get("args", {}))
        self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.lr_factor = build_lr_schedule(config.lr_scheduler)
        self.clipper = build_grad_clipper(config.grad_clip)
        # EMA: rank 0 keeps the averages of the full weights (DDP); with FSDP every rank averages its shard.
        self.ema = EMA(self.precision.master_params, config.ema_rate) \
            if self.info.is_main or config.parallel_mode == "fsdp" else None
        self.controllers = self._build_memory_policy()
        self.stream = BatchStream(dataset, self.per_process_batch * self.info.world_size, self.info.rank,
                                  self.info.world_size, config.batch_split, config.seed,
                                  self._num_workers(), pin_memory=self.device.type == "cuda")
        if resume_step is not None:
            self._load_checkpoint(resume_step)
        if self.info.is_main:
            self._write_run_files()

    # ------------------------------------------------------------------------------- subclass interface
    def training_losses(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """The loss of one micro-batch and its scalar logs.

        Args:
            batch: one micro-batch on the training device (tensors, `SparseTensor`s, lists).

        Returns:
            ``(loss, logs)``: a scalar tensor to minimise (a mean over the micro-batch), and ``{name: float}``
            to log (names may contain ``/`` for TensorBoard groups).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement training_losses")

    def snapshot(self, step: int) -> dict:
        """Images showing the model's current output: ``{name: (H, W, 3) uint8 array}``; none by default.

        Called on every process (so sharded models can run); only rank 0's images are written.
        """
        return {}

    def batch_tokens(self, batch: dict) -> int:
        """Token count of a micro-batch for the memory controller: the rows of its first `SparseTensor`."""
        for value in batch.values():
            if isinstance(value, SparseTensor):
                return value.num_voxels
        return 0

    def unwrap(self, key: str) -> nn.Module:
        """The model ``key`` itself (not its DDP wrapper)."""
        return self._raw[key]

    # ------------------------------------------------------------------------------------- one step
    def _seed_rng(self, micro_index: int) -> None:
        global_index = self.info.rank * self.config.batch_split + micro_index
        value = ((self.config.seed * 1_000_003 + self.step) * 65_537 + global_index) % (2**63 - 1)
        self.rng.manual_seed(value)

    def train_step(self, micro_batches: list) -> dict:
        """One optimiser step over this process's micro-batches; returns the step's logs (all processes)."""
        for p in self.precision.params:
            p.grad = None
        count = len(micro_batches)
        sums: dict = {}
        counts: dict = {}
        scale = self.precision.loss_scale
        for j, batch in enumerate(micro_batches):
            batch = move_to_device(batch, self.device, non_blocking=True)
            self._seed_rng(j)
            self._plan_memory(batch)
            last = j == count - 1
            start_peak = self._reset_peak()
            with contextlib.ExitStack() as no_sync:
                if not last:  # DDP: all-reduce gradients only in the last micro-batch's backward
                    for m in self.models.values():
                        if isinstance(m, nn.parallel.DistributedDataParallel):
                            no_sync.enter_context(m.no_sync())
                with self.precision.autocast():
                    loss, logs = self.training_losses(batch)
                (loss.float() * (scale / count)).backward()
            self._record_memory(batch, start_peak)
            logs = {"loss": float(loss.detach()), **logs}
            for k, v in logs.items():  # a key missing from some micro-batches is averaged where present
                sums[k] = sums.get(k, 0.0) + float(v)
                counts[k] = counts.get(k, 0) + 1
        finite = self.precision.unscale_to_master()
        status = {"lr": self._base_lrs[0] * self.lr_factor(self.step)}
        if self.precision.use_scaling:
            status["log_scale"] = self.precision.log_scale
        if self.config.log_param_stats:
            for (key, name), m in zip(self._param_names, self.precision.master_params):
                status[f"param_norm/{key}.{name}"] = float(m.detach().norm())
                if m.grad is not None:
                    status[f"grad_norm/{key}.{name}"] = float(m.grad.detach().norm())  # before clipping
        if self.clipper is not None and finite:
            status["grad_norm"] = self.clipper(self.precision.master_params)
            status["grad_clip/max_norm"] = self.clipper.threshold
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            group["lr"] = base * self.lr_factor(self.step)
        if finite:
            self.optimizer.step()
        self.precision.after_step(finite)
        if self.ema is not None:
            self.ema.update(self.precision.master_params)
        sums = all_reduce_mean(sums, counts, self.info, self.device)
        return {**{f"loss/{k}" if k != "loss" else k: v for k, v in sums.items()},
                **{f"status/{k}": v for k, v in status.items()}}

    # -------------------------------------------------------------------------------------- the loop
    def run(self) -> None:
        """Train until ``max_steps``, saving every ``i_save`` steps and at the end."""
        cfg = self.config
        bar = None
        if self.info.is_main and self._progress_enabled:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        started = time.perf_counter()
        try:
            while self.step < cfg.max_steps:
                micro = self.stream.next()
                logs = self.train_step(micro)
                self.step += 1
                logs["time/elapsed"] = time.perf_counter() - started
                self._log_window.append((self.step, logs))
                if bar is not None:
                    bar.update(1)
                    if self.step % min(cfg.i_print, 10) == 0:
                        bar.set_postfix(loss=f"{logs['loss']:.4g}")
                if self.step % cfg.i_log == 0:
                    self._flush_logs()
                if self.step % cfg.i_ddpcheck == 0 and cfg.parallel_mode == "ddp":
                    check_replicas_equal(self.precision.master_params, self.info, self.device)
                if self.step % cfg.i_sample == 0:
                    self._write_snapshot(f"step{self.step:07d}")
                if self.step % cfg.i_save == 0:
                    self.save()
        except DivergenceError:
            self._flush_logs()
            self.save()
            raise
        finally:
            if bar is not None:
                bar.close()
        self._flush_logs()
        if self._last_saved != self.step:
            self.save()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        # Other ranks return from save() at once; tearing the process group down while rank 0 still writes
        # aborts gloo's connection threads (SIGABRT), so every rank leaves together.
        barrier(self.info)

    # ----------------------------------------------------------------------------------- checkpoints
    def _full_state(self, values: list, key: str) -> dict:
        """Model ``key``'s state dict with its trainable parameters replaced by ``values`` (float32)."""
        state = {}
        for name, tensor in self._raw[key].state_dict().items():
            state[name] = _full(tensor)
        for (k, name), value in zip(self._param_names, values):
            if k == key:
                state[name] = _full(value).float()
        return state

    def _spec_of(self, key: str) -> tuple:
        if key in self.model_specs:
            return self.model_specs[key]
        from omnivox.models.loading import _NAME_OF_CLASS, config_to_args
        model = self._raw[key]
        args = config_to_args(model.config) if hasattr(model, "config") else {}
        return _NAME_OF_CLASS.get(type(model), type(model).__name__), args

    def save(self) -> None:
        """Write the checkpoint of the current step (rank 0 writes; every rank takes part under FSDP)."""
        tag = ckpt.step_tag(self.step)
        folder = self.output_dir / "ckpts"
        trainable = sorted({k for k, _ in self._param_names})
        fsdp = self.info.distributed and self.config.parallel_mode == "fsdp"
        if not (self.info.is_main or fsdp):
            self._last_saved = self.step
            return
        weights = {key: self._full_state(self.precision.master_params, key) for key in trainable}
        emas = {}
        if self.ema is not None:
            for rate, shadow in self.ema.shadows.items():
                emas[rate] = {key: self._full_state(shadow, key) for key in trainable}
        if fsdp:  # optimiser shards stay per rank; require the same world size on resume
            opt_tensors, opt_rest = ckpt.flatten_optimizer_state(self.optimizer.state_dict())
            opt_tensors = {k: _local(v) for k, v in opt_tensors.items()}
            ckpt.write_safetensors_atomic(folder / f"misc_{tag}.rank{self.info.rank}.safetensors", opt_tensors)
        if not self.info.is_main:
            self._last_saved = self.step
            return
        for key in trainable:
            name, args = self._spec_of(key)
            ckpt.save_official(folder / f"{key}_{tag}", name, args, weights[key])
            for rate, states in emas.items():
                ckpt.save_official(folder / f"{key}_ema{rate}_{tag}", name, args, states[key])
        tensors, rng_rest = ckpt.capture_rng_states(self.device)
        opt_tensors, opt_rest = ckpt.flatten_optimizer_state(self.optimizer.state_dict())
        if not fsdp:
            tensors.update(opt_tensors)
        ckpt.write_safetensors_atomic(folder / f"misc_{tag}.safetensors", tensors)
        misc = {
            "step": self.step,
            "world_size": self.info.world_size,
            "parallel_mode": self.config.parallel_mode,
            "models": trainable,
            "ema_rates": list(self.ema.shadows) if self.ema is not None else [],
            "data": self.stream.state_dict(),
            "optimizer": opt_rest,
            "precision": self.precision.state_dict(),
            "grad_clip": self.clipper.state_dict() if self.clipper is not None else None,
            "memory": {k: c.state_dict() for k, c in self.controllers.items()},
            "rng": rng_rest,
        }
        ckpt.write_json_atomic(folder / f"misc_{tag}.json", misc)  # last: marks the checkpoint complete
        self._last_saved = self.step
        logger.info("saved checkpoint %s", folder / f"misc_{tag}.json")

    def _load_checkpoint(self, step: int) -> None:
        folder = self.load_dir / "ckpts"
        tag = ckpt.step_tag(step)
        misc = ckpt.read_json(folder / f"misc_{tag}.json")
        fsdp = self.info.distributed and self.config.parallel_mode == "fsdp"
        if fsdp and misc.get("world_size") != self.info.world_size:
            raise ValueError(f"{folder}/misc_{tag}.json was written by {misc.get('world_size')} FSDP processes; "
                             f"resume with the same number (now {self.info.world_size})")
        tensors = ckpt.read_safetensors(folder / f"misc_{tag}.safetensors")
        trainable = sorted({k for k, _ in self._param_names})
        masters = self.precision.master_params
        for key in trainable:
            state = ckpt.read_safetensors(folder / f"{key}_{tag}.safetensors")
            self._assign(key, state, masters, folder / f"{key}_{tag}.safetensors", into_model=True)
        if self.ema is not None:
            for rate in self.ema.shadows:
                for key in trainable:
                    path = folder / f"{key}_ema{rate}_{tag}.safetensors"
                    self._assign(key, ckpt.read_safetensors(path), self.ema.shadows[rate], path, into_model=False)
        opt_tensors = tensors
        if fsdp:
            opt_tensors = ckpt.read_safetensors(folder / f"misc_{tag}.rank{self.info.rank}.safetensors")
        opt_state = ckpt.unflatten_optimizer_state(opt_tensors, misc["optimizer"])
        if fsdp:
            opt_state = _reshard_like(opt_state, self.optimizer)
        self.optimizer.load_state_dict(opt_state)
        self.precision.load_state_dict(misc.get("precision", {}))
        if self.clipper is not None and misc.get("grad_clip") is not None:
            self.clipper.load_state_dict(misc["grad_clip"])
        for key, controller in self.controllers.items():
            if key in misc.get("memory", {}):
                controller.load_state_dict(misc["memory"][key])
        self.stream.load_state_dict(misc["data"])
        if self.info.is_main or misc.get("world_size") == 1:
            ckpt.restore_rng_states(tensors, misc["rng"], self.device)
        self.step = int(misc["step"])
        self._last_saved = self.step
        logger.info("resumed from %s at step %d", folder, self.step)

    @torch.no_grad()
    def _assign(self, key: str, state: dict, targets: list, path, into_model: bool) -> None:
        """Copy a saved state dict into ``targets`` (master / EMA tensors) and optionally into the model."""
        model = self._raw[key]
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ValueError(f"{path}: missing keys {missing[:10]}")
        if into_model:
            for name, tensor in expected.items():
                _copy_full(tensor, state[name])
        for (k, name), target in zip(self._param_names, targets):
            if k == key:
                _copy_full(target, state[name])

    def _load_finetune(self, paths: dict) -> None:
        """Initialise models from official checkpoints (spec 1.11 fine-tune rules), before wrapping."""
        for key, path in paths.items():
            if key not in self._raw:
                raise ConfigError(f"trainer.args.finetune_ckpt names model {key!r}, not in models "
                                  f"({', '.join(self._raw)})")
            state = read_weights(path)
            model = self._raw[key]
            expected = model.state_dict()
            missing = sorted(set(expected) - set(state) - set(getattr(model, "ignored_checkpoint_keys", ())))
            if missing:
                raise ValueError(f"fine-tune checkpoint {path} lacks {len(missing)} keys of {key}: {missing[:10]}")
            unexpected = sorted(set(state) - set(expected))
            if unexpected:
                logger.warning("fine-tune checkpoint %s: ignoring %d unexpected keys %s", path, len(unexpected),
                               unexpected[:10])
            with torch.no_grad():
                for name, tensor in expected.items():
                    if name not in state:
                        continue
                    if tuple(state[name].shape) != tuple(tensor.shape):
                        logger.warning("fine-tune checkpoint %s: %s has shape %s, model %s; keeping the "
                                       "initial values", path, name, tuple(state[name].shape), tuple(tensor.shape))
                        continue
                    tensor.copy_(state[name])
            logger.info("fine-tuning %s from %s", key, path)

    # --------------------------------------------------------------------------------------- helpers
    def _num_workers(self) -> int:
        if self.config.num_workers is not None:
            return self.config.num_workers
        return min(8, max(0, (os.cpu_count() or 1) // max(1, self.info.world_size) - 1))

    def _build_memory_policy(self) -> dict:
        controllers = {}
        cfg = self.config
        for key, model in self._raw.items():
            blocks = getattr(model, "blocks", None)
            if not isinstance(blocks, nn.ModuleList) or not any(p.requires_grad for p in model.parameters()):
                continue
            if any(isinstance(block, nn.ModuleList) for block in blocks):
                continue  # stages of blocks (the SC-VAEs): their trainers checkpoint inside the stages
            if cfg.activation_checkpointing is not None:
                fraction = float(cfg.activation_checkpointing)
                set_checkpointed_blocks(model, round(fraction * len(blocks)))
            elif cfg.elastic is not None:
                if cfg.elastic["name"] != "LinearMemoryController":
                    raise ConfigError(f"trainer.args.elastic.name {cfg.elastic['name']!r} is unknown; use "
                                      "'LinearMemoryController'")
                controllers[key] = LinearMemoryController(len(blocks), seed=cfg.seed, **cfg.elastic.get("args", {}))
        return controllers

    def _plan_memory(self, batch: dict) -> None:
        if not self.controllers:
            return
        tokens = self.batch_tokens(batch)
        for key, controller in self.controllers.items():
            count = controller.blocks_to_checkpoint(controller.ratio_for(tokens))
            set_checkpointed_blocks(self._raw[key], count)
            self._checkpointed = count

    def _reset_peak(self) -> Optional[float]:
        if self.controllers and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return 0.0
        return None

    def _record_memory(self, batch: dict, start: Optional[float]) -> None:
        if start is None:
            return
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30
        tokens = self.batch_tokens(batch)
        for controller in self.controllers.values():
            controller.record(peak, tokens, self._checkpointed)

    def _write_run_files(self) -> None:
        (self.output_dir / "trainer_config.json").write_text(json.dumps(dataclass_to_json(self.config), indent=2))
        for key, model in self._raw.items():
            lines = [f"{name}\t{tuple(p.shape)}\t{p.dtype}\t{p.requires_grad}" for name, p in model.named_parameters()]
            total = sum(p.numel() for p in model.parameters())
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            lines.append(f"total parameters: {total}  trainable: {trainable}")
            (self.output_dir / f"{key}_model_summary.txt").write_text("\n".join(lines) + "\n")

    def _flush_logs(self) -> None:
        if not self._log_window:
            return
        window, self._log_window = self._log_window, []
        if not self.info.is_main:
            return
        with open(self.output_dir / "log.txt", "a", encoding="utf-8") as handle:
            for step, logs in window:
                handle.write(f"{step}: {json.dumps(logs)}\n")
        writer = self._tensorboard()
        if writer is not None:
            keys = {k for _, logs in window for k in logs}
            for k in sorted(keys):
                values = [logs[k] for _, logs in window if k in logs and math.isfinite(logs[k])]
                if values:
                    writer.add_scalar(k, sum(values) / len(values), window[-1][0])
            writer.flush()

    def _tensorboard(self):
        if not (self._tensorboard_enabled and self.info.is_main):
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is the [train] extra
            self._writer = SummaryWriter(str(self.output_dir / "tb_logs"))
        return self._writer

    def _write_snapshot(self, suffix: str) -> None:
        images = self.snapshot(self.step)
        if not (images and self.info.is_main):
            return
        from PIL import Image

        folder = self.output_dir / "samples" / suffix
        folder.mkdir(parents=True, exist_ok=True)
        writer = self._tensorboard()
        for name, image in images.items():
            array = np.asarray(image)
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
                raise ValueError(f"snapshot image {name!r} must be (H, W, 3|4) uint8, got "
                                 f"{array.shape} {array.dtype}")
            Image.fromarray(array).save(folder / f"{name}.png")
            if writer is not None:
                writer.add_image(f"samples/{name}", array, self.step, dataformats="HWC")


# ------------------------------------------------------------------------------------------- utilities
def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (collective) or the tensor itself, detached, on the CPU."""
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    if hasattr(tensor, "to_local"):
        tensor = tensor.to_local()
    return tensor.detach().cpu()


@torch.no_grad()
def _copy_full(target: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a full tensor into ``target`` (a plain tensor, or a DTensor shard: take this rank's part)."""
    if hasattr(target, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor
        value = distribute_tensor(value.to(target.dtype).to(target.device_mesh.device_type),
                                  target.device_mesh, target.placements)
        target.copy_(value)
    else:
        target.copy_(value.to(target.device))


def _reshard_like(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """Turn local optimiser shards read from disk back into DTensors shaped like the live parameters."""
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, per_param in state["state"].items():
        param = params[int(index)]
        if isinstance(param, DTensor):
            for name, value in per_param.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    per_param[name] = DTensor.from_local(value.to(param.device_mesh.device_type),
                                                         param.device_mesh, param.placements)
    return state


def read_weights(path: PathLike) -> dict:
    """A state dict from an official checkpoint (``NAME``, ``NAME.json`` or ``NAME.safetensors``) or a ``.pt``.

    ``.pt`` files (the reference's training checkpoints) are read with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if path.suffix == ".pt":
        if not path.is_file():
            raise FileNotFoundError(f"fine-tune checkpoint {path} not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict")
        return state
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return ckpt.read_safetensors(Path(f"{path}.safetensors"))
