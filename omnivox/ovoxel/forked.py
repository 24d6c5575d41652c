"""Run a native library call in a forked child process and get its result back through a pipe.

Two third-party libraries of the exporter need it: xatlas can crash or run for minutes on pathological meshes
(the child can be stopped), and fast-simplification keeps its working arrays (~340 bytes per input face) in
process-wide C++ vectors that are never shrunk, so decimating a 45M-face mesh in-process would pin ~15 GB for the
rest of the process (a child returns the memory when it exits).
"""

from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Optional, Tuple


def fork_available() -> bool:
    """Whether this platform can fork (Linux, macOS): children then share the parent's memory copy-on-write."""
    return "fork" in multiprocessing.get_all_start_methods()


def _child(connection, fn, args):
    connection.send(fn(*args))
    connection.close()


def call_in_fork(fn: Callable[..., Any], args: tuple, timeout: Optional[float] = None) -> Tuple[Any, Optional[str]]:
    """``fn(*args)`` in a forked child: ``(result, None)``, or ``(None, problem)`` when the child crashed or ran past
    ``timeout`` seconds (it is then terminated). Needs `fork_available`; the result must be picklable."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(sender, fn, args))
    child.start()
    sender.close()
    result, problem = None, None
    try:
        if receiver.poll(timeout):
            result = receiver.recv()
        else:
            problem = f"took longer than {timeout} s"
    except EOFError:
        pass
    if child.is_alive():
        child.terminate()
    child.join()
    if result is None and problem is None:
        problem = f"crashed (exit code {child.exitcode})"
    return result, problem


def map_in_forks(fn: Callable[..., Any], jobs: list, workers: int) -> list:
    """``[fn(*args) for args in jobs]`` computed in up to ``workers`` forked children at a time, results in job order.

    Each job runs in a child of its own (the library's process-wide buffers go back to the system when it exits).
    A job whose child crashes is run again in this process. Needs `fork_available`; results must be picklable.
    """
    context = multiprocessing.get_context("fork")
    results: list = [None] * len(jobs)
    done = [False] * len(jobs)
    running: dict = {}  # receiver -> (index, process)
    pending = list(range(len(jobs)))
    from multiprocessing.connection import wait

    while pending or running:
        while pending and len(running) < max(1, workers):
            index = pending.pop(0)
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(target=_child, args=(sender, fn, jobs[index]))
            child.start()
            sender.close()
            running[receiver] = (index, child)
        for receiver in wait(list(running)):
            index, child = running.pop(receiver)
            try:
                results[index], done[index] = receiver.recv(), True
            except EOFError:
                pass  # crashed: redone below
            receiver.close()
            child.join()
    for index, finished in enumerate(done):
        if not finished:
            results[index] = fn(*jobs[index])
    return results
