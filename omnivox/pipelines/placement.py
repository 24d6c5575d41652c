"""`ModelStore`: loads models lazily by role and puts them on the compute device as a `MemoryPlan` says.

Resident models move to the device once and stay. Offloaded models stay in host memory (memory-mapped from their
safetensors files where no cast was needed) and visit the device for one stage: on entry each parameter gets a
device copy, on exit it points at its host tensor again, so nothing is copied back.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn


def module_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers at their current dtypes."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


class ModelStore:
    """Role -> model, loaded on first use by ``loader(role)`` (onto the host), placed per stage.

    Args:
        loader: builds the model of a role on the host.
        device: the compute device.
    """

    def __init__(self, loader: Callable[[str], nn.Module], device: torch.device) -> None:
        self._loader = loader
        self.device = torch.device(device)
        self._models: dict = {}
        self._bytes: dict = {}  # role -> (model, bytes): every memory plan asks, and counting takes milliseconds
        self._resident: set = set()

    def get(self, role: str) -> nn.Module:
        """The model of ``role`` wherever it currently is (loading it onto the host the first time)."""
        if role not in self._models:
            self._models[role] = self._loader(role)
        return self._models[role]

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
            # them before this stage's weights arrive, so they do not add to its peak.
            gc.collect()
        try:
            for role, model in models.items():
                if host or role in self._resident:
                    continue
                if offload:
                    moved.append((model, _to_device(model, self.device)))
                else:
                    model.to(self.device)
                    self._resident.add(role)
            yield models
        finally:
            for model, saved in moved:
                _restore(model, saved)
            if moved and self.device.type == "cuda":
                gc.collect()  # device copies can hide in reference cycles of the finished stage
                torch.cuda.empty_cache()


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
