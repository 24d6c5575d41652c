"""Reading ``pipeline.json`` / ``texturing_pipeline.json`` (spec models.md 10.1) into typed settings.

A released pipeline folder looks like::

    TRELLIS.2-4B/
        pipeline.json               {"name": "Trellis2ImageTo3DPipeline", "args": {...}}
        texturing_pipeline.json     {"name": "Trellis2TexturingPipeline", "args": {...}}
        ckpts/NAME.json, ckpts/NAME.safetensors

``args.models`` maps roles to checkpoint paths. A path is looked up relative to the folder first; a path of the
form ``org/repo/rest`` (a model in another Hugging Face repository, such as the sparse-structure decoder in
``microsoft/TRELLIS-image-large``) is then looked up as ``repo/rest`` and ``org/repo/rest`` beside the folder
and inside it. Nothing is downloaded: a missing model raises `FileNotFoundError` naming every place tried.
The image encoder (``image_cond_model.args.model_name``, e.g. ``facebook/dinov3-vitl16-pretrain-lvd1689m``) is a
Hugging Face folder found the same way (or passed explicitly).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from omnivox.pipelines.samplers import SamplerParams
from omnivox.pipelines.types import PIPELINE_TYPES  # noqa: F401  (also read from here)

PathLike = Union[str, Path]
MAX_CONFIG_BYTES = 1 << 20


@dataclass
class Normalization:
    """Per-channel latent statistics: flows see ``(z - mean) / std`` (spec 9.4)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_json(cls, entry: dict, source: str) -> "Normalization":
        try:
            mean = torch.tensor([float(v) for v in entry["mean"]], dtype=torch.float32)
            std = torch.tensor([float(v) for v in entry["std"]], dtype=torch.float32)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: expected {{'mean': [...], 'std': [...]}} ({error})") from error
        if mean.shape != std.shape or mean.dim() != 1 or (std <= 0).any():
            raise ValueError(f"{source}: mean and std must be equal-length lists with std > 0")
        return cls(mean, std)

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean.to(feats.device)) / self.std.to(feats.device)

    def denormalize(self, feats: torch.Tensor) -> torch.Tensor:
        return feats * self.std.to(feats.device) + self.mean.to(feats.device)


@dataclass
class PipelineConfig:
    """The parts of a pipeline JSON the pipelines use.

    Attributes:
        root: folder the JSON was read from.
        models: role -> resolved checkpoint path (``ckpts/NAME`` without suffix).
        samplers: stage (``sparse_structure``, ``shape_slat``, ``tex_slat``) -> default `SamplerParams`.
        shape_normalization, tex_normalization: latent statistics.
        image_encoder: resolved DINOv3 folder (None when not found; the error is raised on use).
        image_encoder_name: the JSON's model name (for messages).
        background_model_name: ``rembg_model.args.model_name`` (informational; see `preprocess`).
        default_pipeline_type: ``'1024_cascade'`` unless the JSON says otherwise.
        low_vram: the JSON's ``low_vram`` flag (the memory planner decides placement; kept for reference).
        missing: role -> message, for models that could not be resolved (raised when a run needs them).
    """

    root: Path
    models: dict
    samplers: dict
    shape_normalization: Optional[Normalization]
    tex_normalization: Optional[Normalization]
    image_encoder: Optional[Path]
    image_encoder_name: str
    background_model_name: Optional[str] = None
    default_pipeline_type: str = "1024_cascade"
    low_vram: bool = True
    missing: dict = field(default_factory=dict)

    def model_path(self, role: str) -> Path:
        """The checkpoint of ``role``; raises `FileNotFoundError` / `KeyError` with a clear message."""
        if role in self.models:
            return self.models[role]
        if role in self.missing:
            raise FileNotFoundError(self.missing[role])
        raise KeyError(f"{self.root}: the pipeline JSON has no model for role {role!r} "
                       f"(has {sorted(set(self.models) | set(self.missing))})")


def read_bounded_json(path: Path, what: str):
    """The parsed JSON of a small file (at most `MAX_CONFIG_BYTES`); ``what`` names the expected file in errors."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; not {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def read_json(path: Path) -> dict:
    """A bounded, validated pipeline JSON object."""
    data = read_bounded_json(path, "a pipeline JSON")
    if not isinstance(data, dict) or not isinstance(data.get("args"), dict):
        raise ValueError(f"{path} must hold {{\"name\": ..., \"args\": {{...}}}}")
    return data


def _candidates(root: Path, name: str) -> list[Path]:
    parts = Path(name).parts
    found = [root / name]
    if len(parts) >= 3:  # org/repo/rest: another Hugging Face repository
        org, repo, rest = parts[0], parts[1], Path(*parts[2:])
        found += [root.parent / repo / rest, root.parent / org / repo / rest, root / repo / rest]
    elif len(parts) == 2:  # org/repo: a whole repository (image encoder)
        org, repo = parts
        found += [root.parent / repo, root.parent / org / repo, root / repo]
    return found


def _stem(path: PathLike) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def _is_checkpoint(path: Path) -> bool:
    return Path(f"{path}.json").is_file() and Path(f"{path}.safetensors").is_file()


def resolve_checkpoint(root: Path, name: str) -> tuple[Optional[Path], list[Path]]:
    """First candidate ``P`` with ``P.json`` and ``P.safetensors`` present, and all candidates tried."""
    tried = _candidates(root, name)
    for path in tried:
        if _is_checkpoint(path):
            return path, tried
    return None, tried


def resolve_folder(root: Path, name: str) -> tuple[Optional[Path], list[Path]]:
    """First candidate folder holding ``config.json`` and ``model.safetensors``."""
    tried = _candidates(root, name)
    for path in tried:
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            return path, tried
    return None, tried


def load_pipeline_config(root: PathLike, filename: str = "pipeline.json",
                         model_paths: Optional[dict] = None, image_encoder: Optional[PathLike] = None
                         ) -> PipelineConfig:
    """Read and resolve a pipeline JSON.

    Args:
        root: the weights folder (e.g. ``TRELLIS.2-4B``).
        filename: ``pipeline.json`` or ``texturing_pipeline.json``.
        model_paths: role -> checkpoint path overrides (used instead of the JSON's entries).
        image_encoder: DINOv3 folder override.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"weights folder {root} not found")
    path = root / filename
    data = read_json(path)
    args = data["args"]
    models, missing = {}, {}
    entries = dict(args.get("models", {}))
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: 'models' must map roles to checkpoint paths")
    overrides = {role: _stem(value) for role, value in (model_paths or {}).items()}
    for role, name in {**entries, **overrides}.items():
        if role in overrides:
            tried = [overrides[role]]
            resolved = tried[0] if _is_checkpoint(tried[0]) else None
        else:
            resolved, tried = resolve_checkpoint(root, str(name))
        if resolved is None:
            missing[role] = (f"{path}: model {role!r} = {name!r} not found; looked for NAME.json + NAME.safetensors "
                             f"at: {', '.join(str(p) for p in tried)}. Download that checkpoint (for example "
                             f"with `huggingface-cli download`) next to the weights folder, or pass its path.")
        else:
            models[role] = resolved
    samplers = {}
    for stage in ("sparse_structure", "shape_slat", "tex_slat"):
        key = f"{stage}_sampler"
        if key in args:
            samplers[stage] = SamplerParams.from_json(args[key], f"{path}: {key}")
    norms = {}
    for key in ("shape_slat_normalization", "tex_slat_normalization"):
        norms[key] = Normalization.from_json(args[key], f"{path}: {key}") if key in args else None
    cond = args.get("image_cond_model", {}) or {}
    encoder_name = str(cond.get("args", {}).get("model_name", "facebook/dinov3-vitl16-pretrain-lvd1689m"))
    if image_encoder is not None:
        encoder = Path(image_encoder)
    else:
        encoder, _ = resolve_folder(root, encoder_name)
    rembg = (args.get("rembg_model") or {}).get("args", {}).get("model_name")
    default_type = str(args.get("default_pipeline_type", "1024_cascade"))
    if default_type not in PIPELINE_TYPES:
        raise ValueError(f"{path}: default_pipeline_type {default_type!r} is not one of {PIPELINE_TYPES}")
    return PipelineConfig(root=root, models=models, samplers=samplers,
                          shape_normalization=norms["shape_slat_normalization"],
                          tex_normalization=norms["tex_slat_normalization"], image_encoder=encoder,
                          image_encoder_name=encoder_name, background_model_name=rembg,
                          default_pipeline_type=default_type, low_vram=bool(args.get("low_vram", True)),
                          missing=missing)


def find_background_model(config: PipelineConfig) -> Optional[Path]:
    """The ONNX file of ``rembg_model`` (e.g. ``briaai/RMBG-2.0`` ships ``onnx/model.onnx``) if downloaded
    beside or inside the weights folder, else None."""
    if not config.background_model_name:
        return None
    for folder in _candidates(config.root, config.background_model_name):
        for name in ("onnx/model.onnx", "model.onnx"):
            if (folder / name).is_file():
                return folder / name
    return None


def image_encoder_error(config: PipelineConfig) -> FileNotFoundError:
    tried = ", ".join(str(p) for p in _candidates(config.root, config.image_encoder_name))
    return FileNotFoundError(
        f"image encoder {config.image_encoder_name!r} (DINOv3, a folder with config.json and model.safetensors) "
        f"not found; looked at: {tried}. Download it (it is gated on Hugging Face: accept the licence, then "
        f"`huggingface-cli download {config.image_encoder_name} --local-dir <folder>`) and pass "
        "image_encoder=<folder> (CLI: --image-encoder).")
