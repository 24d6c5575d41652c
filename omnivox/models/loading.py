"""Reading and writing checkpoints in the official TRELLIS.2 layout (spec models.md 10).

A checkpoint is a pair of files with one stem (spec 10.1)::

    ckpts/NAME.json          {"name": <class name>, "args": {<constructor arguments>}}
    ckpts/NAME.safetensors   flat state dict

`from_pretrained` reads that pair, builds the class named in the JSON through `MODEL_CLASSES` (the one
place where a string becomes a class), builds it on the meta device so no memory is spent on a random
initialisation, memory-maps the safetensors file, casts each tensor to the dtype its parameter runs in
(spec 10.2) and loads strictly: any missing, unexpected or mis-shaped key raises a `ValueError` that names
the key, the file and the expected shape. Peak host memory is about one copy of the model at its runtime
dtypes. `save_pretrained` writes the same pair, so our checkpoints look exactly like official ones.

The DINOv3 image encoder is external (Hugging Face layout): a folder with ``config.json`` and
``model.safetensors``; `from_pretrained` recognises a folder and loads it the same strict way.

8-bit weights (`omnivox.models.quantize`): ``from_pretrained(..., weights_dtype="int8" | "fp8")`` loads a flow
model with its block Linear layers in 8 bits. It reads ``NAME.int8.safetensors`` (``NAME.fp8.safetensors``) when
that file sits beside the pair, else it quantizes the released ``NAME.safetensors`` on the fly;
``save_pretrained`` of such a model writes that file (the JSON is the released one: the architecture is the
same). A quantized file is recognised by its name and checked by its metadata (``"omnivox.weights_dtype"``) and
its tensors' dtypes, strictly like any other checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import typing
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from omnivox.models.dinov3 import DINOv3Config, DINOv3ViT
from omnivox.models.flow import SLatFlowModel, SparseStructureFlowModel
from omnivox.models.quantize import (METADATA_KEY, WEIGHTS_DTYPES, check_weights_dtype, quantize_model,
                                     quantized_skeleton, supports_8bit_weights, weights_dtype_for,
                                     weights_dtype_of)
from omnivox.models.sc_vae import (FlexiDualGridVaeDecoder, FlexiDualGridVaeEncoder, SparseUnetVaeDecoder,
                                   SparseUnetVaeEncoder)
from omnivox.models.ss_decoder import SparseStructureDecoder
from omnivox.models.ss_encoder import SparseStructureEncoder

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# The JSON "name" of every released checkpoint -> the class that runs it. ElasticSLatFlowModel differs
# from SLatFlowModel only by a training-time memory controller (spec 6), so both names map to one class.
MODEL_CLASSES: dict[str, type] = {
    "SparseStructureFlowModel": SparseStructureFlowModel,
    "SLatFlowModel": SLatFlowModel,
    "ElasticSLatFlowModel": SLatFlowModel,
    "FlexiDualGridVaeEncoder": FlexiDualGridVaeEncoder,
    "FlexiDualGridVaeDecoder": FlexiDualGridVaeDecoder,
    "SparseUnetVaeEncoder": SparseUnetVaeEncoder,
    "SparseUnetVaeDecoder": SparseUnetVaeDecoder,
    "SparseStructureDecoder": SparseStructureDecoder,
    "SparseStructureEncoder": SparseStructureEncoder,
}

# Each model class is saved under its first name in MODEL_CLASSES.
_NAME_OF_CLASS: dict[type, str] = {}
for _name, _cls in MODEL_CLASSES.items():
    _NAME_OF_CLASS.setdefault(_cls, _name)

_LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"


# ---------------------------------------------------------------------------------------------- configs
def config_from_args(config_class: type, args: dict, source: str = "args"):
    """Build a config dataclass from a checkpoint JSON's ``args``, ignoring keys it does not know.

    Unknown keys (``use_checkpoint``, ``block_args``, ...) have no inference effect in the reference and
    are logged at INFO level. JSON lists become tuples where the field is a tuple.

    Raises:
        ValueError: a value the config rejects; the message names ``source``.
    """
    if not isinstance(args, dict):
        raise ValueError(f"{source}: 'args' must be a JSON object, got {type(args).__name__}")
    field_types = typing.get_type_hints(config_class)
    known = {}
    for field in dataclasses.fields(config_class):
        if field.name in args:
            value = args[field.name]
            if isinstance(value, list) and "Tuple" in str(field_types[field.name]):
                value = tuple(value)
            known[field.name] = value
    ignored = sorted(set(args) - set(known))
    if ignored:
        logger.info("%s: ignoring arguments without inference effect: %s", source, ", ".join(ignored))
    try:
        return config_class(**known)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: invalid {config_class.__name__}: {error}") from error


def config_to_args(config) -> dict:
    """The JSON ``args`` of a config dataclass (tuples written as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def build_model(name: str, args: dict, source: str = "args", device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Construct (randomly initialised) the model a checkpoint JSON describes.

    Args:
        name: the JSON ``name``; one of `MODEL_CLASSES`.
        args: the JSON ``args``.
        source: where the values came from, for error messages.
        device: where to allocate the parameters (``"meta"`` allocates nothing).

    Raises:
        ValueError: unknown ``name`` (the message lists the known names) or invalid ``args``.
    """
    if name not in MODEL_CLASSES:
        raise ValueError(f"{source}: unknown model name {name!r}; known names: {', '.join(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[name]
    config = config_from_args(cls.config_class, args, source)
    with torch.device(device):
        return cls(config)


# -------------------------------------------------------------------------------------------- file layer
def _check_not_lfs_pointer(path: Path) -> None:
    with open(path, "rb") as handle:
        head = handle.read(len(_LFS_POINTER_PREFIX))
    if head == _LFS_POINTER_PREFIX:
        raise ValueError(f"{path} is a Git LFS pointer file ({path.stat().st_size} bytes), not the data: "
                         "fetch the real file (e.g. `git lfs pull` in the checkpoint repository)")


def _checkpoint_paths(path: PathLike) -> tuple[Path, Path]:
    """``ckpts/NAME``, ``ckpts/NAME.json`` or ``ckpts/NAME.safetensors`` -> both files of the pair."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    json_path, weights_path = Path(f"{path}.json"), Path(f"{path}.safetensors")
    for file in (json_path, weights_path):
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint file {file} not found (a checkpoint is NAME.json + "
                                    "NAME.safetensors with the same stem)")
    return json_path, weights_path


def _read_json(path: Path) -> dict:
    _check_not_lfs_pointer(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def load_state_dict_strict(model: nn.Module, weights_path: PathLike, device: Union[str, torch.device] = "cpu",
                           rename: Optional[typing.Callable[[str], str]] = None) -> None:
    """Load a safetensors file into ``model`` strictly, casting each tensor to its parameter's dtype.

    ``model`` may live on the meta device: its parameters are then replaced by the loaded tensors
    (``assign=True``), so no memory is spent on a throw-away initialisation. On the CPU, a tensor whose stored
    dtype is already its runtime dtype stays backed by safetensors' memory map of the file (page cache, no
    copy); only tensors that need a cast are copied. Do not rewrite the file in place while such a model is
    in use.

    Args:
        model: the module; its ``state_dict()`` keys, shapes and dtypes are the contract.
        weights_path: the ``.safetensors`` file.
        device: where to place the loaded tensors.
        rename: optional map from file keys to model keys (for external layouts such as DINOv3's).

    Raises:
        ValueError: LFS pointer, unreadable file, or any missing / unexpected / mis-shaped key (all listed,
            each with the file and the expected shape).
    """
    from safetensors import SafetensorError, safe_open

    weights_path = Path(weights_path)
    _check_not_lfs_pointer(weights_path)
    expected = model.state_dict()
    ignored = set(getattr(model, "ignored_checkpoint_keys", ()))
    target = torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())  # safetensors wants an explicit index
    try:
        handle = safe_open(str(weights_path), framework="pt", device=str(target))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {error}") from error
    with handle:
        file_keys = {(rename(k) if rename else k): k for k in handle.keys()}
        problems = [f"missing key {k!r} (expected shape {list(expected[k].shape)})"
                    for k in sorted(set(expected) - set(file_keys))]
        problems += [f"unexpected key {k!r}" for k in sorted(set(file_keys) - set(expected) - ignored)]
        for key in sorted(set(expected) & set(file_keys)):
            shape = list(handle.get_slice(file_keys[key]).get_shape())
            if shape != list(expected[key].shape):
                problems.append(f"key {key!r} has shape {shape}, expected {list(expected[key].shape)}")
        if problems:
            shown = "\n  ".join(problems[:30]) + ("\n  ..." if len(problems) > 30 else "")
            raise ValueError(f"{weights_path} does not match {type(model).__name__} "
                             f"({len(problems)} problems):\n  {shown}")
        state = {key: handle.get_tensor(file_keys[key]).to(expected[key].dtype) for key in expected}
    model.load_state_dict(state, strict=True, assign=True)


# --------------------------------------------------------------------------------------------- public
def from_pretrained(path: PathLike, device: Union[str, torch.device] = "cpu",
                    config_overrides: Optional[dict] = None, weights_dtype: Optional[str] = None) -> nn.Module:
    """Load a checkpoint in the official layout.

    Args:
        path: ``ckpts/NAME`` (with or without ``.json`` / ``.safetensors``), or a Hugging Face DINOv3 folder
            holding ``config.json`` and ``model.safetensors``.
        device: device of the loaded parameters.
        config_overrides: JSON ``args`` to replace before building, e.g. ``{"dtype": "float32"}`` to run a
            flow model in float32 or ``{"use_fp16": False}`` for a VAE.
        weights_dtype: ``"int8"`` or ``"fp8"``: a flow model's block Linear layers in 8 bits (module docstring),
            from ``NAME.<weights_dtype>.safetensors`` if present, else quantized on ``device`` from the released
            file. None: the stored dtypes.

    Returns:
        The model in eval mode, each parameter in its runtime dtype.

    Raises:
        FileNotFoundError: a file of the pair is missing.
        ValueError: unknown class name, invalid args, LFS pointer or key/shape mismatch.
    """
    path = Path(path)
    check_weights_dtype(weights_dtype)
    if path.is_dir():
        model = _dinov3_from_folder(path, device, config_overrides)
        if weights_dtype is not None:
            quantize_model(model, weights_dtype_for(model, weights_dtype))
        return model.eval()
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    saved = quantized_weights_path(stem, weights_dtype) if weights_dtype is not None else None
    if saved is not None and saved.is_file():
        json_path, weights_path = Path(f"{stem}.json"), saved
        if not json_path.is_file():
            raise FileNotFoundError(f"checkpoint file {json_path} not found (it describes {saved})")
    else:
        if weights_dtype is None and not Path(f"{stem}.safetensors").is_file():
            saved_formats = [f for f in WEIGHTS_DTYPES if quantized_weights_path(stem, f).is_file()]
            if saved_formats:
                raise FileNotFoundError(f"{stem}.safetensors not found; {stem} has 8-bit weights only: pass "
                                        f"weights_dtype={saved_formats[0]!r}")
        json_path, weights_path = _checkpoint_paths(path)
    data = _read_json(json_path)
    if "name" not in data:
        raise ValueError(f"{json_path} has no 'name' (expected {{\"name\": ..., \"args\": ...}})")
    args = {**data.get("args", {}), **(config_overrides or {})}
    model = build_model(data["name"], args, str(json_path), device="meta")
    if weights_dtype is not None and not supports_8bit_weights(model):
        raise ValueError(f"{json_path}: weights_dtype={weights_dtype!r} is for the flow models and DINOv3, not "
                         f"{type(model).__name__}")
    if weights_path == saved:
        _check_quantized_file(saved, weights_dtype)
        load_state_dict_strict(quantized_skeleton(model, weights_dtype), saved, device)
    else:
        load_state_dict_strict(model, weights_path, device)
        if weights_dtype is not None:
            quantize_model(model, weights_dtype)
    return model.eval()


def quantized_weights_path(path: PathLike, weights_dtype: str) -> Path:
    """``ckpts/NAME`` -> ``ckpts/NAME.<weights_dtype>.safetensors``, where the 8-bit copy of a checkpoint lives."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return Path(f"{path}.{weights_dtype}.safetensors")


def _check_quantized_file(path: Path, weights_dtype: str) -> None:
    from safetensors import SafetensorError, safe_open

    _check_not_lfs_pointer(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            stored = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    if stored != weights_dtype:
        raise ValueError(f"{path} holds {stored or 'unquantized'} weights (metadata {METADATA_KEY!r}), not "
                         f"{weights_dtype}; delete it to quantize the released weights again")


def save_pretrained(model: nn.Module, path: PathLike) -> tuple[Path, Path]:
    """Write ``model`` as ``NAME.json`` + ``NAME.safetensors`` (or a DINOv3 model as an HF folder).

    Tensors are stored in their runtime dtypes, so loading the pair again gives bit-identical outputs. A model
    with 8-bit weights (`omnivox.models.quantize`) is written as ``NAME.json`` + ``NAME.<int8|fp8>.safetensors``,
    which ``from_pretrained(NAME, weights_dtype=...)`` reads back.

    Args:
        model: one of the classes in `MODEL_CLASSES`, or `DINOv3ViT`.
        path: ``dir/NAME`` (a ``.json`` / ``.safetensors`` suffix is dropped); for DINOv3 a folder.

    Returns:
        The paths of the JSON and the safetensors file written.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    metadata = {"format": "pt"}
    weights_dtype = weights_dtype_of(model)
    if isinstance(model, DINOv3ViT):
        path.mkdir(parents=True, exist_ok=True)
        json_path, weights_path = path / "config.json", path / "model.safetensors"
        data = model.config.to_hf_config()
    else:
        if type(model) not in _NAME_OF_CLASS:
            raise TypeError(f"save_pretrained: {type(model).__name__} is not a checkpoint class "
                            f"(known: {', '.join(MODEL_CLASSES)})")
        if path.suffix in (".json", ".safetensors"):
            path = path.with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)
        json_path, weights_path = Path(f"{path}.json"), Path(f"{path}.safetensors")
        data = {"name": _NAME_OF_CLASS[type(model)], "args": config_to_args(model.config)}
        if weights_dtype is not None:  # beside the released file, which keeps its name
            weights_path = quantized_weights_path(path, weights_dtype)
            metadata[METADATA_KEY] = weights_dtype
    save_file(state, str(weights_path), metadata=metadata)
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    return json_path, weights_path


def _dinov3_from_folder(folder: Path, device, config_overrides: Optional[dict]) -> DINOv3ViT:
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for file in (config_path, weights_path):
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found (a DINOv3 folder holds config.json and model.safetensors)")
    hf_config = {**_read_json(config_path), **(config_overrides or {})}
    config = DINOv3Config.from_hf_config(hf_config, str(config_path))
    with torch.device("meta"):
        model = DINOv3ViT(config)
    # transformers 5.x writes the layers as "model.layer.*"; the released file says "layer.*".
    load_state_dict_strict(model, weights_path, device, rename=lambda k: k.removeprefix("model."))
    return model
