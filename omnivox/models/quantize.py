"""8-bit weights for the flow transformers: int8 weight-only and fp8 (e4m3), one scale per output channel.

The five flow checkpoints hold 1.29 G of their 1.32 G parameters in the Linear layers of their 30 blocks
(``to_qkv``, ``to_out``, ``to_q``, ``to_kv``, the MLP), stored in bf16. `quantize_model` replaces each of those
layers by a `QuantizedLinear` holding one byte per weight plus a float32 scale per output row, made from the
released weights when loading (``scale = max |row| / 127`` for int8, ``/ 448`` for fp8 e4m3; the weight is divided
by its row's scale and rounded to the nearest code). Everything else (timestep MLP, adaLN projection, input and
output layers, norms, biases) keeps its released dtype, so a 2.63 GB model becomes 1.36 GB.

How a `QuantizedLinear` computes ``x @ W.T + b`` (inputs and outputs stay in the compute dtype, bf16 on GPUs):

* **int8** (any device): the weight is dequantized to the compute dtype, then the ordinary GEMM runs. On CUDA a
  Triton kernel reads the codes and writes the bf16 weight in one pass; it is a transient of one layer (at most
  8192 x 1536 values). Weight-only int8 therefore halves weight memory and the bytes an offloading plan copies
  per stage, at the speed of bf16 plus one pass over the layer's weights. ``torch._weight_int8pack_mm`` (torch's
  own weight-only int8 op) computes the same product; on this project's CPU it was 44x slower than dequantize +
  GEMM at 4,096 rows (8.6 s against 0.2 s, torch 2.13), and at thousands of tokens the GEMMs are compute-bound,
  so the dequantizing path is used everywhere (``bench/bench_memory.py`` measures both on the GPU).
* **fp8** on GPUs with fp8 matrix units (compute capability 8.9 or newer, H100): the activations are quantized too,
  per row (absmax / 448, one Triton pass), and ``torch._scaled_mm`` multiplies the two fp8 operands with row-wise
  scales and the bias in its epilogue (W8A8 with dynamic activation scales). Calls of fewer than
  `FP8_MIN_ROWS` rows, other devices and the CPU dequantize and run the GEMM in the compute dtype instead.

Files: `omnivox.models.loading.from_pretrained` (``weights_dtype=``) quantizes on the fly or reads a saved copy,
``NAME.int8.safetensors`` / ``NAME.fp8.safetensors`` beside the released ``NAME.safetensors``, in the same flat
layout: each quantized layer's ``weight`` key holds the codes (int8 or float8_e4m3fn) and a ``weight_scale`` key
``(out,) float32`` is added; the file's metadata says ``"omnivox.weights_dtype": "int8"``.
"""

from __future__ import annotations

import functools
import warnings
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from omnivox._backend import triton_available
from omnivox.models.kernels.reference import FP8_MAX, dequantize_rows_reference, quantize_rows_fp8_reference

WEIGHTS_DTYPES = ("int8", "fp8")
STORAGE_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
# The largest code of each format: int8 keeps -127..127 (symmetric), e4m3 tops out at 448.
CODE_MAX = {"int8": 127.0, "fp8": FP8_MAX}
# fp8 calls with fewer rows dequantize instead: the GEMM is then too small for fp8 to gain anything, and the
# scaled GEMM wants row counts the tensor-core tiles like.
FP8_MIN_ROWS = 64
METADATA_KEY = "omnivox.weights_dtype"


def check_weights_dtype(weights_dtype: Optional[str]) -> Optional[str]:
    """``weights_dtype`` if it is None, ``"int8"`` or ``"fp8"``; a ValueError naming the choices otherwise."""
    if weights_dtype is not None and weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {WEIGHTS_DTYPES} or None, got {weights_dtype!r}")
    return weights_dtype


@functools.lru_cache(maxsize=None)
def fp8_matmul_supported(device: torch.device) -> bool:
    """Whether ``device`` has fp8 matrix units that ``torch._scaled_mm`` uses with row-wise scales and a bias
    (CUDA compute capability >= 8.9, and a torch build whose row-wise kernel runs: checked once on a tiny
    product, so a build without it falls back to dequantizing instead of failing in the middle of a run)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    if torch.cuda.get_device_capability(device) < (8, 9):
        return False
    a = torch.ones(16, 32, device=device).to(torch.float8_e4m3fn)
    b = torch.ones(16, 32, device=device).to(torch.float8_e4m3fn)
    try:
        out = torch._scaled_mm(a, b.t(), scale_a=torch.ones(16, 1, device=device),
                               scale_b=torch.full((1, 16), 0.5, device=device),
                               bias=torch.ones(16, device=device, dtype=torch.bfloat16), out_dtype=torch.bfloat16)
    except RuntimeError as error:  # e.g. "Rowwise scaling is not currently supported on your device"
        warnings.warn(f"fp8 GEMMs unavailable here ({error}); fp8 weights run dequantized", RuntimeWarning,
                      stacklevel=2)
        return False
    return bool((out.float() == 17.0).all())


def check_weights_dtype_for(weights_dtype: Optional[str], device) -> Optional[str]:
    """`check_weights_dtype`, and refuse fp8 on a CUDA device without fp8 matrix units (it would only run
    dequantized there, slower than bf16 and no smaller than int8)."""
    check_weights_dtype(weights_dtype)
    device = torch.device(device)
    if weights_dtype == "fp8" and device.type == "cuda" and not fp8_matmul_supported(device):
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else str(device)
        raise ValueError(f"weights_dtype='fp8' needs a GPU with fp8 matrix units (compute capability 8.9+, e.g. "
                         f"RTX 40xx, L4, H100); {name} has none: use weights_dtype='int8'")
    return weights_dtype


# ------------------------------------------------------------------------------------------ references
def quantize_weight(weight: torch.Tensor, weights_dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight (N, K)`` -> codes ``(N, K)`` (int8 or float8_e4m3fn) and scales ``(N,) float32``, per output row.

    ``code = round(w / scale)`` with ``scale = max |row| / CODE_MAX`` (fp8 rounds to its nearest representable
    value); an all-zero row gets scale 1 and zero codes. Computed in float32 on ``weight``'s device.
    """
    check_weights_dtype(weights_dtype)
    if weights_dtype is None:
        raise ValueError("weights_dtype must be 'int8' or 'fp8' to quantize")
    w = weight.detach().float()
    top = CODE_MAX[weights_dtype]
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / top, torch.ones_like(amax))
    scaled = (w / scale[:, None]).clamp(-top, top)
    if weights_dtype == "int8":
        scaled = torch.round(scaled)
    return scaled.to(STORAGE_DTYPES[weights_dtype]), scale


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`dequantize_rows_reference`, through one Triton pass for CUDA tensors."""
    if codes.is_cuda and triton_available():
        from omnivox.models.kernels.triton import weights8

        return weights8.dequantize_rows(codes, scale, dtype)
    return dequantize_rows_reference(codes, scale, dtype)


def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rows_fp8_reference`, through one Triton pass for CUDA tensors."""
    if x.is_cuda and triton_available():
        from omnivox.models.kernels.triton import weights8

        return weights8.quantize_rows_fp8(x)
    return quantize_rows_fp8_reference(x)


# ----------------------------------------------------------------------------------------------- layer
class QuantizedLinear(nn.Module):
    """A Linear layer whose weight is stored in 8 bits with one float32 scale per output channel (inference).

    State dict keys are those of `nn.Linear` plus one: ``weight (out, in)`` int8 or float8_e4m3fn codes,
    ``weight_scale (out,) float32``, ``bias (out,)`` in the compute dtype. ``.weight`` gives the dequantized
    weight in the compute dtype (a new tensor each time), for code that reads a Linear's weight directly;
    `forward` never builds it on the fp8 GEMM path.

    Args:
        in_features, out_features: as `nn.Linear`.
        bias: whether the layer has a bias.
        weights_dtype: ``"int8"`` or ``"fp8"``.
        compute_dtype: the dtype of inputs, outputs and bias (the released layer's dtype).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weights_dtype: str = "int8",
                 compute_dtype: torch.dtype = torch.bfloat16, device=None) -> None:
        super().__init__()
        if check_weights_dtype(weights_dtype) is None:
            raise ValueError("QuantizedLinear needs weights_dtype 'int8' or 'fp8'")
        self.in_features, self.out_features = in_features, out_features
        self.weights_dtype = weights_dtype
        self.compute_dtype = compute_dtype
        self.register_buffer("codes", torch.empty(out_features, in_features, dtype=STORAGE_DTYPES[weights_dtype],
                                                  device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = (nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device), requires_grad=False)
                     if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weights_dtype: str, work_device=None) -> "QuantizedLinear":
        """Quantize ``linear``'s weight (on ``work_device`` if given, e.g. the GPU; the result lives where
        ``linear`` lives)."""
        home = linear.weight.device
        if weights_dtype == "fp8" and work_device is not None:
            fp8_matmul_supported(torch.device(work_device))  # probe the GEMM now, outside any CUDA-graph capture
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, weights_dtype=weights_dtype,
                    compute_dtype=linear.weight.dtype, device="meta")
        weight = linear.weight.detach()
        codes, scale = quantize_weight(weight.to(work_device) if work_device is not None else weight, weights_dtype)
        layer.codes = codes.to(home)
        layer.weight_scale = scale.to(home)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().to(home).clone(), requires_grad=False)
        return layer

    @property
    def weight(self) -> torch.Tensor:
        return dequantize_rows(self.codes, self.weight_scale, self.compute_dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weights_dtype={self.weights_dtype}, compute_dtype={self.compute_dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out), x's dtype
        flat = x.reshape(-1, self.in_features)
        if self._uses_fp8_matmul(flat):
            codes, scale = quantize_rows_fp8(flat)
            out = torch._scaled_mm(codes, self.codes.t(), scale_a=scale, scale_b=self.weight_scale.view(1, -1),
                                   bias=self.bias, out_dtype=flat.dtype)
        else:
            bias = None if self.bias is None else self.bias.to(flat.dtype)
            out = F.linear(flat, dequantize_rows(self.codes, self.weight_scale, flat.dtype), bias)
        return out.view(*x.shape[:-1], self.out_features)

    def _uses_fp8_matmul(self, flat: torch.Tensor) -> bool:
        return (self.weights_dtype == "fp8" and flat.is_cuda and flat.dtype == torch.bfloat16
                and flat.shape[0] >= FP8_MIN_ROWS and self.in_features % 16 == 0 and self.out_features % 16 == 0
                and fp8_matmul_supported(flat.device) and triton_available())

    # The checkpoint layout: the codes sit under Linear's own key "weight".
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for key, value in self._state_items():
            destination[prefix + key] = value if keep_vars or value is None else value.detach()

    def _state_items(self):
        items = [("weight", self.codes), ("weight_scale", self.weight_scale)]
        return items + ([("bias", self.bias)] if self.bias is not None else [])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        assign = local_metadata.get("assign_to_params_buffers", False)
        known = set()
        for key, current in self._state_items():
            known.add(prefix + key)
            if prefix + key not in state_dict:
                missing_keys.append(prefix + key)
                continue
            value = state_dict[prefix + key]
            if value.shape != current.shape or value.dtype != current.dtype:
                error_msgs.append(f"{prefix + key}: got {tuple(value.shape)} {value.dtype}, expected "
                                  f"{tuple(current.shape)} {current.dtype} ({self.weights_dtype} weights)")
                continue
            attribute = {"weight": "codes"}.get(key, key)
            if assign:
                setattr(self, attribute,
                        nn.Parameter(value, requires_grad=False) if key == "bias" else value)
            else:
                with torch.no_grad():
                    current.copy_(value)
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in known)


# ----------------------------------------------------------------------------------------------- model
def quantizable_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """The Linear layers `quantize_model` replaces (names relative to ``model``): those inside a flow transformer's
    ``blocks`` and inside DINOv3's transformer layers (attention projections and MLP: 97 % of its 1.13 GiB of
    float32 weights, the largest model an offloading plan moves after the flows). Other models have none."""
    from omnivox.models.dinov3 import DINOv3ViT
    from omnivox.models.flow import _FlowTransformer

    if isinstance(model, _FlowTransformer):
        blocks, prefix = model.blocks, "blocks"
    elif isinstance(model, DINOv3ViT):
        blocks, prefix = model.layer, "layer"
    else:
        return
    for name, module in blocks.named_modules(prefix=prefix):
        if type(module) is nn.Linear:
            yield name, module


def weights_dtype_for(model: nn.Module, weights_dtype: str) -> str:
    """The 8-bit format ``model`` gets when ``weights_dtype`` is asked for: ``"fp8"`` only for models computing in
    bf16/fp16 (the flows), where the fp8 GEMM can run; a float32 model (DINOv3) dequantizes before its GEMM either
    way, and int8 codes are 16x finer than e4m3's 3-bit mantissa (DINOv3 on a real image, random weights: 1.6 %
    relative error of its tokens in int8 against 5.1 % in fp8), so it gets ``"int8"``."""
    layers = list(quantizable_linears(model))
    if weights_dtype == "fp8" and layers and layers[0][1].weight.dtype == torch.float32:
        return "int8"
    return weights_dtype


def supports_8bit_weights(model: nn.Module) -> bool:
    """Whether `quantize_model` quantizes anything in ``model`` (the flow transformers, DINOv3) or already has."""
    return any(True for _ in quantizable_linears(model)) or weights_dtype_of(model) is not None


def weights_dtype_of(model: nn.Module) -> Optional[str]:
    """``"int8"`` / ``"fp8"`` if ``model`` holds `QuantizedLinear` layers, else None."""
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            return module.weights_dtype
    return None


@torch.no_grad()
def quantize_model(model: nn.Module, weights_dtype: str, *, work_device=None) -> nn.Module:
    """Replace the block Linear layers of a flow transformer or of DINOv3 by `QuantizedLinear` layers, in place.

    Args:
        model: a flow model or DINOv3 (`quantizable_linears`); any other model raises TypeError.
        weights_dtype: ``"int8"`` or ``"fp8"``.
        work_device: where to compute the codes (e.g. the GPU, one layer at a time); the layers stay where
            they were. None: where the weights are.

    Returns:
        ``model``. A model already quantized to ``weights_dtype`` is returned unchanged; one quantized to the
        other format raises ValueError (its bf16 weights are gone).
    """
    if check_weights_dtype(weights_dtype) is None:
        raise ValueError("quantize_model needs weights_dtype 'int8' or 'fp8'")
    existing = weights_dtype_of(model)
    if existing is not None:
        if existing != weights_dtype:
            raise ValueError(f"the model already holds {existing} weights; load the released weights again to "
                             f"make {weights_dtype} ones")
        return model
    layers = list(quantizable_linears(model))
    if not layers:
        raise TypeError(f"{type(model).__name__} has no layers to quantize (8-bit weights are for the flow models "
                        "and DINOv3)")
    for name, linear in layers:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, QuantizedLinear.from_linear(linear, weights_dtype, work_device))
    return model


def quantized_skeleton(model: nn.Module, weights_dtype: str) -> nn.Module:
    """``model`` (on the meta device) with its quantizable layers replaced by empty `QuantizedLinear` layers, the
    target of loading a saved quantized file."""
    for name, linear in list(quantizable_linears(model)):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child,
                QuantizedLinear(linear.in_features, linear.out_features, linear.bias is not None,
                                weights_dtype=weights_dtype, compute_dtype=linear.weight.dtype, device="meta"))
    return model
