"""What a pipeline keeps between runs to run fast: `RunContext` (its CUDA graphs, their memory pool, the worker
thread, the latest memory plan), and `GraphedCall`, the CUDA-graph replay of a network call (was
``omnivox.models.cuda_graphs``).

`GraphedCall`: replay a network call as a CUDA graph, one launch per call instead of thousands of small kernels.

At a few thousand tokens the flow transformers are bound by kernel launches (each of the 30 blocks issues dozens
of small norm / RoPE / modulation kernels), so the GPU idles while the host queues work. A sampler calls the same
network on the same token set with the same shapes at every step, which is what CUDA graphs are for: capture the
call once, then replay it with new input values.

`GraphedCall` wraps a function of tensors. Per input signature (shapes, dtypes, device) the first call runs
eagerly (it doubles as the warm-up that initialises cuBLAS / SDPA / Triton state and fills lazy caches, such as
a `SparseTensor`'s sequence lengths, outside the capture), the second call captures the graph, and every later
call copies its inputs into the graph's static buffers and replays it. Outputs are cloned, because the next
replay overwrites the graph's output buffer. With ``warmup=False`` (for a function whose kernels have already
run in this process, at any shapes) the first call captures and replays at once: the eager call costs a
launch-bound forward, ~30 ms more than a replay for a 1.3B flow at a few thousand tokens. If that capture fails,
the signature falls back to the warm-up order.

Requirements on ``fn`` (the flow forward passes meet them): no host synchronisation after its first call, the
same kernels for the same shapes, and every tensor it reads besides its arguments (weights, a token set, a
concatenated condition) alive and unchanged while the wrapper is used. On the CPU, or where capture fails, the
wrapper just calls ``fn``.

Example:
    >>> import torch

from omnivox.pipelines.memory import MemoryPlan
    >>> double = GraphedCall(lambda x: 2 * x)
    >>> double(torch.ones(2)).tolist()                  # CPU tensors: an ordinary call
    [2.0, 2.0]
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
        warmup: run each signature once eagerly before capturing it (see the module docstring).
        pool: a memory pool (``torch.cuda.graph_pool_handle()``) to share with other wrappers whose calls never
            interleave with this one's, e.g. the successive sampling stages of a pipeline. A new wrapper then
            reuses the memory its predecessors' graphs left in the pool instead of allocating fresh device
            memory during capture (``cudaMalloc`` waits for the device, so a capture could not overlap the
            previous stage's kernels).
    """

    def __init__(self, fn: Callable[..., torch.Tensor], enabled: bool = True, warmup: bool = True,
                 pool=None) -> None:
        self.fn = fn
        self.enabled = enabled
        self.warmup = warmup
        self._seen: set = set()       # signatures called once eagerly (warm-up done)
        self._graphs: dict = {}       # signature -> (static inputs, static output, CUDAGraph) or None (eager)
        self._pool = pool
        self._stream = None           # the side stream captures run on (capture cannot use the default stream)
        self.replays = 0              # how many calls were served by a replay (for tests and benchmarks)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not args or not all(isinstance(a, torch.Tensor) and a.is_cuda for a in args):
            return self.fn(*args)
        key = tuple((tuple(a.shape), a.dtype, a.device, a.stride()) for a in args)
        if key not in self._graphs:
            if self.warmup and key not in self._seen:
                self._seen.add(key)
                return self.fn(*args)
            captured = self._capture(args, quiet=key not in self._seen)
            if captured is None and key not in self._seen:  # failed without warm-up: warm up, capture next call
                self._seen.add(key)
                return self.fn(*args)
            self._graphs[key] = captured
        entry = self._graphs[key]
        if entry is None:
            return self.fn(*args)
        inputs, output, graph = entry
        for buffer, value in zip(inputs, args):
            buffer.copy_(value)
        graph.replay()
        self.replays += 1
        return output.clone()

    def captured_graphs(self) -> list:
        """The ``torch.cuda.CUDAGraph`` objects captured so far. Holding them (and nothing else of this wrapper)
        keeps the memory pool alive for a later wrapper that shares it; they must not be replayed alone."""
        return [entry[2] for entry in self._graphs.values() if entry is not None]

    def _capture(self, args, quiet: bool = False) -> Optional[tuple]:
        # Not `torch.cuda.graph(...)`: entering it synchronises the device and empties the allocator's cache
        # (and, in some torch versions, runs gc.collect()) to free memory for the graph. In a pipeline that
        # stalls the host until every queued kernel is done, so a capture could never overlap GPU work; at
        # ~0.1 s per capture that was most of the remaining cost of capturing. Recording needs none of it.
        inputs = [a.clone() for a in args]
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=args[0].device)
        self._stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(self._stream):
                graph.capture_begin(pool=self._pool)
                try:
                    output = self.fn(*inputs)
                finally:
                    graph.capture_end()
        except RuntimeError as error:  # something in fn cannot be captured: stay eager for this signature
            if not quiet:
                warnings.warn(f"CUDA-graph capture failed, running eagerly: {error}", RuntimeWarning, stacklevel=3)
            torch.cuda.synchronize()
            return None
        torch.cuda.current_stream().wait_stream(self._stream)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"GraphedCall needs fn to return one tensor, got {type(output).__name__}")
        return inputs, output, graph


@dataclass
class RunContext:
    """The run-time state a pipeline keeps between stages and runs (not its models, not per-call arguments).

    Attributes:
        captured_roles: flows already captured as CUDA graphs in this process: their kernels are compiled and
            their libraries initialised, so later graphs are captured on the first call (no eager warm-up).
        graph_pool: the CUDA-graph memory pool shared by every stage (`torch.cuda.graph_pool_handle`), made on
            first use.
        image_encoder_graph: the image encoder's graph (its input shape never changes: one graph per process).
        pool_keeper: the latest stage's graphs, kept until the next stage has captured its own: a graph memory
            pool is returned to the device (cudaFree, which waits for all queued work) when its last graph dies,
            and would then be allocated again (cudaMalloc) for the next capture.
        last_plan: the memory plan of the latest run (behind the deprecated ``pipeline.last_plan``).
    """

    captured_roles: set = field(default_factory=set)
    graph_pool: object = None
    image_encoder_graph: Optional[GraphedCall] = None
    pool_keeper: list = field(default_factory=list)
    last_plan: Optional[MemoryPlan] = None
    _executor: Optional[ThreadPoolExecutor] = None

    def worker(self) -> ThreadPoolExecutor:
        """One background thread per pipeline for CPU work that overlaps GPU work (mesh orientation)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnivox-cpu")
        return self._executor

    def shared_graph_pool(self):
        """The graph memory pool of every stage (made on first use; CUDA only)."""
        if self.graph_pool is None:
            self.graph_pool = torch.cuda.graph_pool_handle()
        return self.graph_pool

    def image_encoder_call(self, model: torch.nn.Module) -> GraphedCall:
        """The graphed forward of ``model`` (a new one when the image encoder was replaced)."""
        if self.image_encoder_graph is None or self.image_encoder_graph.fn.__self__ is not model:
            self.image_encoder_graph = GraphedCall(model.forward)
        return self.image_encoder_graph

    def keep_graphs(self, role: str, *networks: GraphedCall) -> None:
        """After a stage whose graphs replayed: ``role`` counts as captured and its graphs (only the graph
        objects: they hold the pool, not the stage's tensors) live until the next stage has captured its own.
        A multi-view stage passes one wrapper per distinct call (view, or views and null condition)."""
        self.captured_roles.add(role)
        self.pool_keeper = [graph for network in networks for graph in network.captured_graphs()]
