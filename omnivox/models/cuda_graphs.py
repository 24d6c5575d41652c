"""Replay a network call as a CUDA graph: one launch per call instead of thousands of small kernels.

At a few thousand tokens the flow transformers are bound by kernel launches (each of the 30 blocks issues dozens
of small norm / RoPE / modulation kernels), so the GPU idles while the host queues work. A sampler calls the same
network on the same token set with the same shapes at every step, which is what CUDA graphs are for: capture the
call once, then replay it with new input values.

`GraphedCall` wraps a function of tensors. Per input signature (shapes, dtypes, device) the first call runs
eagerly (it doubles as the warm-up that initialises cuBLAS / SDPA / Triton state and fills lazy caches, such as
a `SparseTensor`'s sequence lengths, outside the capture), the second call captures the graph, and every later
call copies its inputs into the graph's static buffers and replays it. Outputs are cloned, because the next
replay overwrites the graph's output buffer.

Requirements on ``fn`` (the flow forward passes meet them): no host synchronisation after its first call, the
same kernels for the same shapes, and every tensor it reads besides its arguments (weights, a token set, a
concatenated condition) alive and unchanged while the wrapper is used. On the CPU, or where capture fails, the
wrapper just calls ``fn``.

Example:
    >>> import torch
    >>> double = GraphedCall(lambda x: 2 * x)
    >>> double(torch.ones(2)).tolist()                  # CPU tensors: an ordinary call
    [2.0, 2.0]
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch

__all__ = ["GraphedCall"]


class GraphedCall:
    """``fn(*tensors) -> tensor``, replayed from a CUDA graph per input signature (see the module docstring).

    All graphs of one wrapper share a memory pool: calls run one after another on one stream and outputs are
    copied out right after each replay, so one graph reusing another's scratch memory is harmless, and the
    wrapper holds about one forward's working memory rather than one per signature. Dropping the wrapper frees
    the graphs and their memory.

    Args:
        fn: the function to capture; its arguments are CUDA tensors (other arguments are not supported).
        enabled: False makes every call eager (a switch for callers and tests).
    """

    def __init__(self, fn: Callable[..., torch.Tensor], enabled: bool = True) -> None:
        self.fn = fn
        self.enabled = enabled
        self._seen: set = set()       # signatures called once eagerly (warm-up done)
        self._graphs: dict = {}       # signature -> (static inputs, static output, CUDAGraph) or None (eager)
        self._pool = None
        self.replays = 0              # how many calls were served by a replay (for tests and benchmarks)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not args or not all(isinstance(a, torch.Tensor) and a.is_cuda for a in args):
            return self.fn(*args)
        key = tuple((tuple(a.shape), a.dtype, a.device, a.stride()) for a in args)
        if key not in self._seen:
            self._seen.add(key)
            return self.fn(*args)
        if key not in self._graphs:
            self._graphs[key] = self._capture(args)
        entry = self._graphs[key]
        if entry is None:
            return self.fn(*args)
        inputs, output, graph = entry
        for buffer, value in zip(inputs, args):
            buffer.copy_(value)
        graph.replay()
        self.replays += 1
        return output.clone()

    def _capture(self, args) -> Optional[tuple]:
        inputs = [a.clone() for a in args]
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                output = self.fn(*inputs)
        except RuntimeError as error:  # something in fn cannot be captured: stay eager for this signature
            warnings.warn(f"CUDA-graph capture failed, running eagerly: {error}", RuntimeWarning, stacklevel=3)
            torch.cuda.synchronize()
            return None
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"GraphedCall needs fn to return one tensor, got {type(output).__name__}")
        return inputs, output, graph
