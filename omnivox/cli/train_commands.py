"""`omnivox train`: train or fine-tune a model from an experiment JSON, alone or under ``torchrun``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from omnivox.cli.main import app
from omnivox.cli.checks import output_folder, require_extra


def _parse_overrides(items: List[str]) -> dict:
    """``KEY=VALUE`` pairs (VALUE as JSON when it parses, else a string) -> ``trainer.args`` overrides."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help="Experiment JSON (models / dataset / trainer)."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Run folder: ckpts/, samples/, log.txt, tb_logs/."),
    data: str = typer.Option(..., "--data", "-d",
                             help="Dataset root written by `omnivox data`, or the reference's --data_dir JSON."),
    load_dir: Optional[Path] = typer.Option(None, help="Resume from checkpoints here (default: --output-dir)."),
    resume: bool = typer.Option(True, help="Continue from the latest complete checkpoint, if any."),
    max_steps: Optional[int] = typer.Option(None, help="Override trainer.args.max_steps."),
    finetune: Optional[str] = typer.Option(None, help="Start the (single) trained model from this official "
                                           "checkpoint (ckpts/NAME); same as trainer.args.finetune_ckpt."),
    parallel: Optional[str] = typer.Option(None, help="Under torchrun: 'ddp' (default) or 'fsdp' (FSDP2)."),
    set_: List[str] = typer.Option([], "--set", help="Override any trainer.args key: KEY=JSON_VALUE (repeatable)."),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    tryrun: bool = typer.Option(False, help="Build everything and load checkpoints, but do not train."),
) -> None:
    """Train or fine-tune one of the TRELLIS.2 models. Run it under `torchrun --nproc_per_node N` for N GPUs."""
    require_extra("train", ["tensorboard"], "train")
    from omnivox.train.config import ConfigError, load_experiment  # plain Python: the checks run before torch loads

    try:
        overrides = _parse_overrides(set_)
        if max_steps is not None:
            overrides["max_steps"] = max_steps
        if parallel is not None:
            overrides["parallel_mode"] = parallel
        experiment = load_experiment(config)
        if finetune is not None:
            trainable = list(experiment.models)
            if len(trainable) != 1:
                raise ConfigError(f"--finetune needs exactly one model in {config}; use --set finetune_ckpt=...")
            overrides["finetune_ckpt"] = {trainable[0]: finetune}
        if not data.lstrip().startswith("{") and not Path(data).is_dir():  # else the reference's JSON roots
            raise FileNotFoundError(f"--data {data}: no such dataset folder" if not Path(data).exists() else
                                    f"--data {data} is a file; give the dataset root folder (or the JSON text)")
        output_folder(output_dir, "--output-dir")
        if load_dir is not None and not load_dir.is_dir():
            raise FileNotFoundError(f"--load-dir {load_dir}: no such folder")
        import torch

        from omnivox.train.build import build_dataset, build_trainer
        from omnivox.train.distributed import init_process

        env = os.environ  # set by torchrun; absent when run alone
        info, dev = init_process(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                                 int(env.get("LOCAL_RANK", 0)), device)
        seed = int({**experiment.trainer.args, **overrides}.get("seed", 0))
        # The program's entry point seeds the global generator once, so a run's initial weights are reproducible.
        torch.manual_seed(seed)
        dataset = build_dataset(experiment, data, seed=seed)
        trainer = build_trainer(experiment, output_dir, dataset, overrides=overrides, device=dev, dist_info=info,
                                resume=resume, load_dir=load_dir)
    except (ConfigError, FileNotFoundError, ValueError, TypeError) as error:
        typer.echo(f"omnivox train: {error}", err=True)
        raise typer.Exit(code=1) from error
    if info.is_main:
        (output_dir / "command.txt").write_text(" ".join(sys.argv) + "\n")
        (output_dir / "config.json").write_text(json.dumps(experiment.to_json(), indent=2))
        typer.echo(f"{experiment.trainer.name} on {len(dataset)} samples, {info.world_size} process(es) on "
                   f"{dev.type}; starting at step {trainer.step} of {trainer.config.max_steps}; output {output_dir}")
    if not tryrun:
        trainer.run()
    if info.distributed:
        from omnivox.train.distributed import leave_and_exit

        leave_and_exit(0)
