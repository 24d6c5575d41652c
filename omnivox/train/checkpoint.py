"""Training checkpoints: official-layout weights plus everything a bit-exact resume needs (spec 1.11, 8.16).

Files of step ``S`` under ``<output_dir>/ckpts/`` (``S`` written with seven digits)::

    <key>_stepS.json / .safetensors              float32 master weights, official layout (`from_pretrained`)
    <key>_ema<rate>_stepS.json / .safetensors    the EMA weights, official layout (what gets released)
    misc_stepS.safetensors                       optimiser tensors, RNG states
    misc_stepS.json                              step, data cursor, loss scale, clipper, memory controller,
                                                 optimiser hyper-parameters, RNG scalars; written last

The JSON of a weights file holds the experiment's ``{"name", "args"}`` for that model (e.g. ``dtype:
"bfloat16"``), so a pipeline loads it at its runtime dtypes directly; the tensors themselves are float32, so a
resume continues from exact values. Every file is written to a temporary name in the same folder and renamed
into place, and ``misc_stepS.json`` comes last: a checkpoint whose misc JSON exists is complete. Nothing is
pickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

PathLike = Union[str, Path]
_MISC_RE = re.compile(r"^misc_step(\d{7,})\.json$")


def step_tag(step: int) -> str:
    return f"step{step:07d}"


# ----------------------------------------------------------------------------------------------- atomic
def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: PathLike, data) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
    _atomic_write(Path(path), write)


def write_safetensors_atomic(path: PathLike, tensors: dict) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def read_safetensors(path: PathLike) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error


def read_json(path: PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def save_official(stem: PathLike, name: str, args: dict, state: dict) -> None:
    """Write ``stem.safetensors`` then ``stem.json`` (``{"name", "args"}``) in the official layout."""
    stem = Path(stem)
    write_safetensors_atomic(f"{stem}.safetensors", state)
    write_json_atomic(f"{stem}.json", {"name": name, "args": args})


# ------------------------------------------------------------------------------------------- optimiser
def flatten_optimizer_state(state: dict) -> tuple[dict, dict]:
    """``optimizer.state_dict()`` -> (tensors for safetensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict, rest: dict) -> dict:
    """Inverse of `flatten_optimizer_state`."""
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in rest["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


# ------------------------------------------------------------------------------------------------- RNG
def capture_rng_states(device: torch.device) -> tuple[dict, dict]:
    """The process's global RNG states (torch, CUDA, numpy, python) as (tensors, JSON)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy())
    version, internal, gauss_next = random.getstate()
    rest = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}
    return tensors, rest


def restore_rng_states(tensors: dict, rest: dict, device: torch.device) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    kind, pos, has_gauss, gauss = rest["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().view(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rest["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ------------------------------------------------------------------------------------------------ find
def find_latest_step(ckpt_dir: PathLike) -> Optional[int]:
    """The largest step with a complete checkpoint (its ``misc_stepS.json`` exists), or None."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    steps = [int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _MISC_RE.match(p.name))]
    return max(steps) if steps else None
