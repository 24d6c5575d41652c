"""`ModelStore`: loads models lazily by role and puts them on the compute device as a `MemoryPlan` says.

Resident models move to the device once and stay. Offloaded models stay in host memory and visit the device for one
stage: on entry each parameter gets a device copy, on exit it points at its host tensor again, so nothing is copied
back. For a CUDA device the host tensors of an offloaded model move into page-locked memory on its first visit
(memory-mapped safetensors pages or pageable copies before): copies from there run at the bus's speed and
asynchronously, where pageable memory goes through a staging buffer at a fraction of it.

With ``weights_dtype="int8"`` or ``"fp8"`` the store quantizes every flow model and DINOv3 (in int8 for fp8:
`weights_dtype_for`) it loads (`omnivox.models.quantize`;
on the compute device, one layer at a time, when that is a GPU), unless the loader already returned it quantized.
`ModelStore.weights_bytes` counts the bytes the models really hold, so the memory planner sees the 8-bit sizes and an
offloading plan copies half the flow bytes per stage. `capped_device_memory` makes a budget binding for the CUDA
caching allocator (reserved memory included).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from omnivox.models.quantize import (check_weights_dtype_for, quantize_model, supports_8bit_weights,
                                     weights_dtype_for, weights_dtype_of)


# The `gc.collect` generation around offloaded stages: 1 collects generations 0 and 1 (recent objects).
YOUNG_GENERATIONS = 1


def module_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers at their current dtypes."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


class ModelStore:
    """Role -> model, loaded on first use by ``loader(role)`` (onto the host), placed per stage.

    Args:
        loader: builds the model of a role on the host.
        device: the compute device.
        weights_dtype: ``"int8"`` / ``"fp8"``: flow models get 8-bit block weights when loaded (module docstring);
            None keeps the loaded dtypes. fp8 on a CUDA device without fp8 matrix units is a ValueError.
    """

    def __init__(self, loader: Callable[[str], nn.Module], device: torch.device,
                 weights_dtype: Optional[str] = None) -> None:
        self._loader = loader
        self.device = torch.device(device)
        self.weights_dtype = check_weights_dtype_for(weights_dtype, self.device)
        self._models: dict = {}
        self._bytes: dict = {}  # role -> (model, bytes): every memory plan asks, and counting takes milliseconds
        self._resident: set = set()
        self._pinned: set = set()

    def get(self, role: str) -> nn.Module:
        """The model of ``role`` wherever it currently is (loading it onto the host the first time)."""
        if role not in self._models:
            model = self._loader(role)
            if self.weights_dtype is not None and supports_8bit_weights(model) and weights_dtype_of(model) is None:
                quantize_model(model, weights_dtype_for(model, self.weights_dtype),
                               work_device=self.device if self.device.type == "cuda" else None)
            self._models[role] = model
        return self._models[role]

    def weights_format(self, role: str) -> str:
        """How the weights of ``role`` are stored: ``"int8"`` / ``"fp8"`` (8-bit block weights), else the dtype
        holding most of its bytes (``"bfloat16"``, ``"float16"``, ``"float32"``)."""
        model = self.get(role)
        quantized = weights_dtype_of(model)
        if quantized is not None:
            return quantized
        by_dtype: dict = {}
        for tensor in list(model.parameters()) + list(model.buffers()):
            by_dtype[tensor.dtype] = by_dtype.get(tensor.dtype, 0) + tensor.numel() * tensor.element_size()
        return str(max(by_dtype, key=by_dtype.get)).removeprefix("torch.") if by_dtype else "empty"

    def resident_bytes(self) -> int:
        """Bytes of the models that stay on the device between stages (`on_device` without offloading)."""
        return sum(self.weights_bytes(role) for role in self._resident)

    def weights_bytes(self, role: str) -> int:
        model = self.get(role)
        cached = self._bytes.get(role)
        if cached is None or cached[0] is not model:
            cached = self._bytes[role] = (model, module_bytes(model))
        return cached[1]

    @contextmanager
    def on_device(self, roles, offload: bool) -> Iterator[dict]:
        """Make the models of ``roles`` usable on the device for the duration of the block.

        With ``offload`` they leave the device again afterwards (the device copies are dropped); otherwise
        they stay resident.
        """
        models = {role: self.get(role) for role in roles}
        host = self.device.type == "cpu"
        moved = []
        if offload and not host:
            # Sparse tensors of earlier stages can sit in reference cycles (index maps <-> caches); collect
            # them before this stage's weights arrive, so they do not add to its peak. Only the young generations:
            # a stage's garbage is young, while a full collection walks every long-lived object (~440K with the
            # full-size models loaded: 0.1-1 s each time, and offloading runs collected twice per stage).
            gc.collect(YOUNG_GENERATIONS)
        try:
            for role, model in models.items():
                if host or role in self._resident:
                    continue
                if offload:
                    if self.device.type == "cuda" and role not in self._pinned:
                        _pin(model)
                        self._pinned.add(role)
                    moved.append((model, _to_device(model, self.device)))
                else:
                    model.to(self.device)
                    self._resident.add(role)
            yield models
        finally:
            for model, saved in moved:
                _restore(model, saved)
            if moved and self.device.type == "cuda":
                gc.collect(YOUNG_GENERATIONS)  # device copies can hide in reference cycles of the finished stage
                torch.cuda.empty_cache()


def _pin(model: nn.Module) -> None:
    """Move the host tensors of ``model`` into page-locked memory (once; the pageable copies are released)."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.device.type == "cpu" and not tensor.data.is_pinned():
                tensor.data = tensor.data.pin_memory()


def _to_device(model: nn.Module, device: torch.device) -> list:
    saved = []
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            saved.append((tensor, tensor.data))
            tensor.data = tensor.data.to(device, non_blocking=True)
    return saved


def _restore(model: nn.Module, saved: list) -> None:
    with torch.no_grad():
        for tensor, data in saved:
            tensor.data = data


def memory_held_outside(store: ModelStore) -> int:
    """Bytes allocated on the store's CUDA device by anything but its resident models (the caller's tensors, another
    pipeline): a budget is the pipeline's own, and the allocator's cap binds the whole process, so the cap is raised
    by this much (`capped_device_memory`'s ``outside_bytes``). 0 on other devices."""
    if store.device.type != "cuda":
        return 0
    return max(0, torch.cuda.memory_allocated(store.device) - store.resident_bytes())


@contextmanager
def capped_device_memory(device, budget_bytes: Optional[int], outside_bytes: int = 0) -> Iterator[None]:
    """Hold the CUDA caching allocator of ``device`` to ``budget_bytes`` (plus ``outside_bytes`` that the process
    holds for others, `memory_held_outside`) of reserved memory inside the block.

    Without a cap the allocator keeps freed blocks cached and grows its reserve past what is in use (a 16 GB plan
    measured 8.9 GiB allocated against 12.3 GiB reserved); with it, an allocation that would pass the cap first
    returns cached blocks to the driver and retries, so reserved memory stays under the budget and a plan that
    underestimated fails with an out-of-memory error instead of silently using more. The previous limit is
    restored afterwards. No effect for None or a non-CUDA device.
    """
    device = torch.device(device)
    if budget_bytes is None or device.type != "cuda":
        yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    # The getter is newer than the setter; without it the limit was the default (none) unless someone set one.
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    previous = getter(index) if getter is not None else 1.0
    torch.cuda.set_per_process_memory_fraction(min(1.0, (budget_bytes + outside_bytes) / total), index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(previous, index)
