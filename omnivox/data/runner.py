"""Running one stage over a shard of a dataset: sharding, a process pool, progress, records, crash safety.

Every stage is a list of `Task`s (one per asset) and a module-level function ``work(task) -> Outcome`` that
writes the asset's outputs and returns the rows to record. `run_stage`:

* keeps only this rank's tasks (`in_shard`: a hash of the key modulo ``world_size``, so the split is
  deterministic, covers every key exactly once, and does not move when other assets are added or finish);
* runs them in-process (``workers=0``) or in a process pool (spawned workers, SIGINT ignored in workers, which
  exit within seconds when the main process dies by any signal: `die_with_parent`,
  numba and torch limited to one thread each so N workers use N cores), with at most ``2 * workers`` tasks in
  flight;
* appends each outcome's rows to per-run part files (`RecordWriter`) as soon as it arrives, so a crash loses
  at most the assets in flight;
* on Ctrl-C terminates its workers, closes the part files and re-raises;
* if a worker process dies (out of memory, a segfault), restarts the pool and retries the assets that were
  in flight; an asset in flight during two such deaths is recorded as failed.

With ``ray`` (a `omnivox.data.ray_runner.RayStage`), the same tasks run as Ray tasks on a cluster instead of
the pool; each calls the same `process_asset` and the driver records the outcomes with the same code.

Outputs are written with `atomic_write` (a rank-tagged temp file in the same folder, then ``os.replace``), so
a file either exists complete or not at all; `remove_stale_temps` deletes what a killed run of the same rank
left behind.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import logging
import multiprocessing
import os
import queue as queue_module
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from omnivox.data.metadata import RecordWriter

if TYPE_CHECKING:
    from omnivox.data.ray_runner import RayStage

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
WORKER_DIED_TWICE = "worker process died twice on this asset (out of memory?)"


@dataclass
class Task:
    """One asset's work: ``key`` identifies it (sha256 or, before hashing, its path); ``payload`` is picklable."""

    key: str
    payload: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What a worker reports: rows per stage folder (each with ``sha256``) and, if it failed, the reason."""

    key: str
    rows: Dict[str, dict] = field(default_factory=dict)
    error: Optional[str] = None


@dataclass
class StageSummary:
    """Counts of one run of a stage on one shard."""

    total: int = 0  # tasks in this shard
    skipped: int = 0  # already done (or failed earlier, without --retry-failed)
    done: int = 0
    failed: int = 0


def in_shard(key: str, rank: int, world_size: int, salt: str = "") -> bool:
    """Whether ``key`` belongs to shard ``rank`` of ``world_size`` (stable hash of ``salt + key``).

    A different ``salt`` gives an independent split, used to divide one rank's shard between its GPUs.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return int(hashlib.sha256((salt + key).encode("utf-8")).hexdigest()[:16], 16) % world_size == rank


def temp_tag(rank: int, device_slot: tuple = (0, 1)) -> str:
    """Who owns a temp file: the rank, plus the device slot when a rank runs one process per device."""
    return str(rank) if device_slot[1] == 1 else f"{rank}d{device_slot[0]}"


def temp_path(path: Path, rank: int | str) -> Path:
    """Hidden temp name beside ``path``, tagged with its writer (`temp_tag`) so cleanups never collide."""
    return path.with_name(f".{path.name}.r{rank}.tmp")


def atomic_write(path: PathLike, write: Callable[[Path], None], rank: int | str = 0) -> None:
    """Call ``write(temp)`` then rename the temp file onto ``path`` (complete or absent, never partial)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(path, rank)
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def remove_stale_temps(folders: Iterable[PathLike], rank: int | str) -> int:
    """Delete temp files and folders a killed run of this writer left in ``folders`` (``rank`` or a `temp_tag`;
    other writers' files are untouched, so concurrent ranks and device processes never delete each other's)."""
    count = 0
    suffix = f".r{rank}.tmp"
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.name.startswith(".") and entry.name.endswith(suffix):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                count += 1
    return count


def die_with_parent(parent_pid: int, poll_s: float = 1.0, grace_s: float = 3.0) -> None:
    """Make this (worker) process exit soon after ``parent_pid`` dies, whatever signal killed the parent.

    On Linux the kernel sends SIGTERM on the parent's death (``prctl(PR_SET_PDEATHSIG)``); everywhere a daemon
    thread also watches ``os.getppid()`` and sends the same SIGTERM when the parent changes. SIGTERM raises
    SystemExit in the main thread, so ``atomic_write`` removes its temp file and no partial output remains;
    ``grace_s`` seconds after the signal the process ends with ``os._exit`` whatever it is doing (native code,
    or a pool worker that caught the SystemExit as a task's result and went back to its queue).
    """
    import sys
    import threading
    import time

    def hard_exit(code: int) -> None:
        time.sleep(grace_s)
        os._exit(code)

    def terminate(signum, frame):
        threading.Thread(target=hard_exit, args=(128 + signum,), daemon=True).start()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        hard_exit(1)

    threading.Thread(target=watch, name="omnivox-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the watch began
        os.kill(os.getpid(), signal.SIGTERM)


def limit_threads(threads: int) -> None:
    """torch and numba use ``threads`` threads in this process (a pool worker's or a Ray task's cores).

    Results depend on it: parallel reductions sum in a different order, so two engines that must write
    identical files give each asset the same number of threads.
    """
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # numba is a core dependency; tolerate its absence only in a stripped environment
        pass


def _init_worker(threads: int, parent_pid: Optional[int] = None) -> None:
    # The parent handles Ctrl-C and terminates the pool; workers must not die half-way through a write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        die_with_parent(parent_pid)
    limit_threads(threads)


def process_asset(work: Callable[[Task], Outcome], task: Task) -> Outcome:
    """Process one asset: ``work(task)``, with any exception turned into a failed `Outcome` carrying its reason.

    The one per-asset entry point of every engine: the local pool, the in-process loop and Ray's tasks and
    actors (`omnivox.data.ray_runner`) all call it, so they write the same files and records.
    """
    try:
        return work(task)
    except MemoryError:
        return Outcome(task.key, error="MemoryError: out of memory")
    except Exception as error:  # noqa: BLE001 - a per-asset failure is recorded with its reason, never fatal
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return Outcome(task.key, error=f"{type(error).__name__}: {message}"[:500])


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="asset", smoothing=0.05, disable=not enabled, dynamic_ncols=True)


def run_stage(tasks: Sequence[Task], work: Callable[[Task], Outcome], writers: Mapping[str, RecordWriter],
              failure_rows: Callable[[Task, str], Dict[str, dict]], workers: int = 0, desc: str = "",
              threads_per_worker: int = 1, progress: bool = True, mp_context: str = "spawn",
              ray: Optional["RayStage"] = None) -> StageSummary:
    """Run ``work`` on every task and record the outcomes.

    Args:
        tasks: this shard's tasks that still need doing (filter with `in_shard` and the stage's records first).
        work: module-level function (picklable) doing one task; its exceptions become failure records.
        writers: stage folder name -> `RecordWriter` for the rows an outcome reports under that name.
        failure_rows: rows to record for a failed task (done flags False, the reason in the error column).
        workers: processes (0 = run in this process).
        desc: progress bar label.
        threads_per_worker: torch/numba threads in each worker.
        progress: show the tqdm bar (rate and ETA) on stderr.
        mp_context: multiprocessing start method for the pool.
        ray: run every task on a Ray cluster instead (`omnivox.data.ray_runner`; ``workers`` is then unused).

    Returns:
        `StageSummary` with ``done`` and ``failed`` counts (``total``/``skipped`` are the caller's).
    """
    summary = StageSummary()
    bar = _progress(len(tasks), desc, progress)

    def record(task: Task, outcome: Outcome) -> None:
        # A worker may describe its own failure (rows + error); otherwise the stage builds the failure rows.
        rows = outcome.rows if outcome.rows or outcome.error is None else failure_rows(task, outcome.error)
        for name, row in rows.items():
            writers[name].write(row)
        if outcome.error is None:
            summary.done += 1
        else:
            summary.failed += 1
            logger.info("%s failed: %s", task.key, outcome.error)
        bar.update(1)
        bar.set_postfix(failed=summary.failed, refresh=False)

    try:
        if ray is not None:
            if tasks:  # nothing to do needs no cluster
                from omnivox.data.ray_runner import run_on_ray

                run_on_ray(tasks, work, record, ray, progress=progress)
        elif workers <= 0:
            for task in tasks:
                record(task, process_asset(work, task))
        else:
            _run_pool(tasks, work, record, workers, threads_per_worker, mp_context)
    finally:
        bar.close()
        for writer in writers.values():
            writer.close()
    return summary


def _run_pool(tasks, work, record, workers: int, threads: int, mp_context: str) -> None:
    pending: List[Task] = list(reversed(tasks))  # pop() from the end keeps the original order
    crashes: Dict[str, int] = {}
    context = multiprocessing.get_context(mp_context)
    while pending:
        pool = futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                           initargs=(threads, os.getpid()))
        in_flight: Dict[futures.Future, Task] = {}
        stopped = False
        try:
            while pending or in_flight:
                while pending and len(in_flight) < 2 * workers:
                    task = pending.pop()
                    in_flight[pool.submit(process_asset, work, task)] = task
                finished, _ = futures.wait(in_flight, return_when=futures.FIRST_COMPLETED)
                broken = None
                for future in finished:
                    if isinstance(future.exception(), futures.process.BrokenProcessPool):
                        broken = future.exception()  # stays in flight: retried below
                        continue
                    record(in_flight.pop(future), future.result())
                if broken is not None:
                    raise broken
        except futures.process.BrokenProcessPool:
            # A worker died without reporting; retry what was in flight, blaming repeat offenders.
            for task in in_flight.values():
                crashes[task.key] = crashes.get(task.key, 0) + 1
                if crashes[task.key] >= 2:
                    record(task, Outcome(task.key, error=WORKER_DIED_TWICE))
                else:
                    pending.append(task)
            logger.warning("a worker process died; restarting the pool (%d assets retried)", len(in_flight))
        except BaseException:
            stopped = True
            _terminate(pool)
            raise
        finally:
            if not stopped:
                pool.shutdown(wait=True, cancel_futures=True)


def _terminate(pool: futures.ProcessPoolExecutor) -> None:
    """Stop the pool now (Ctrl-C): cancel queued work and terminate this process's worker children."""
    pool.shutdown(wait=False, cancel_futures=True)
    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(timeout=5)


def _device_main(function: Callable[..., StageSummary], kwargs: dict, queue, parent_pid: Optional[int] = None
                 ) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        die_with_parent(parent_pid)
    queue.put(function(**kwargs))


def run_per_device(function: Callable[..., StageSummary], kwargs: dict, devices: Sequence[str],
                   mp_context: str = "spawn") -> StageSummary:
    """GPU stages: one process per device, each running ``function(**kwargs, devices=[device], device_slot=(i, n))``.

    ``function`` must take ``devices`` and ``device_slot`` and keep only the keys with
    ``in_shard(key, i, n, salt="device")`` inside its own rank's shard. Ctrl-C terminates the processes.
    CUDA needs the ``spawn`` start method (the default).
    """
    context = multiprocessing.get_context(mp_context)
    queue = context.Queue()
    processes = [context.Process(target=_device_main, args=(function, {**kwargs, "devices": [device],
                                                                        "device_slot": (i, len(devices))}, queue,
                                                                  os.getpid()))
                 for i, device in enumerate(devices)]
    total = StageSummary()
    try:
        for process in processes:
            process.start()
        received = 0
        while received < len(processes):
            try:
                part = queue.get(timeout=1.0)
            except queue_module.Empty:
                if not any(p.is_alive() for p in processes) and queue.empty():
                    break  # a process died without reporting; its exit code is checked below
                continue
            received += 1
            for name in ("total", "skipped", "done", "failed"):
                setattr(total, name, getattr(total, name) + getattr(part, name))
        for process in processes:
            process.join()
    except BaseException:
        for process in processes:
            if process.is_alive():
                process.terminate()
        raise
    bad = [p.exitcode for p in processes if p.exitcode]
    if bad:
        raise RuntimeError(f"{len(bad)} device process(es) exited with codes {bad}")
    return total
