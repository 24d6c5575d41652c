"""Running a stage's assets as Ray tasks on a cluster (``omnivox data ... --ray ADDRESS``).

Decision: **Ray Core tasks, not Ray Data.** Every stage is already "one asset in, a few files out, one record
row back"; the outputs go straight to the user's shared filesystem and only the small `Outcome` comes back.
Ray Core maps that one to one: each asset is a task with declared resources (CPU cores and memory for
`convert`, a GPU fraction for `render` / `encode`), the driver keeps a bounded number in flight, takes each
outcome as it arrives (`ray.wait`) and records it with the very code the local runner uses (`run_stage`'s
``record``: the same `RecordWriter` part files, progress bar, counts). Ray Data would add a dataset of rows
whose results we would have to stream back anyway to write the records, its own retry and batching policies on
top of ours, and the ``ray[data]`` dependencies (pyarrow, pandas); plain ``ray`` suffices here.

What is identical to the local runner (`omnivox.data.runner`):

* the per-asset function: a task runs `runner.process_asset(work, task)` (the stage's ``work`` under the same
  exception guard), so a Ray run and a local run write byte-identical files and rows (given the same threads
  per asset: see docs/benchmarks/data.md);
* records are written by the driver only, one flushed row per finished asset, so a killed driver loses only
  the assets in flight (re-run the same command; outputs are replaced atomically, never duplicated);
* a worker that dies (killed, out of memory, segfault) has its asset retried once (Ray's ``max_retries=1``);
  an asset whose worker dies twice is recorded as failed with `runner.WORKER_DIED_TWICE`, and
  ``--retry-failed`` tries it again;
* torch and numba use as many threads as the task declares CPUs.

One difference: a task killed by Ray's memory monitor (not by the kernel) is retried by Ray as often as its
``task_oom_retries`` setting allows (unlimited by default in recent versions); ``RAY_task_oom_retries=1`` in the
environment of ``ray start`` and of the driver should record such an asset as failed instead (untested).

Stages whose work loads a model (`encode`) set ``keep_work_loaded``: then a pool of actors, each holding the
work object (and so its model) for the whole run, takes the assets one call at a time with the same
declared resources, retry rule and records. An actor is a fresh worker process: importing torch, creating a
CUDA context and loading the checkpoints cost it about 6 s on an H100 host (inferred from the 2026-12-07 run in
docs/benchmarks/data.md), once per pool. So a stage with several models (`encode` with a shape and a material
encoder) runs them as one stage and one pool, each actor holding every model, instead of one pool per model
(that doubled the start-up and made a 22-latent run 6x slower than the local runner). The driver logs the
pool's start-up (``actors_ready_s`` on the `logging` record).

What the workers must see: the dataset root and the raw assets (and the encoder checkpoints) under the same
absolute paths as the driver (a shared filesystem mounted alike on every node), and the same omnivox
version with its dependencies. `check_workers` verifies both on every node before the first asset.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence

INSTALL_HINT = 'Ray is not installed: pip install "omnivox[ray]"'
GIB = 1 << 30
# How many tasks the driver keeps submitted per slot the cluster can run at once: enough that a slot never
# waits for the driver, few enough that an 800K-asset stage does not sit in the scheduler's queues.
IN_FLIGHT_PER_SLOT = 2
RESOURCE_REFRESH_S = 30.0  # re-read the cluster's size this often (nodes may join or leave)

logger = logging.getLogger(__name__)


class RayClusterError(RuntimeError):
    """The cluster cannot run the stage (unreachable, a node without the files or omnivox, no node big enough);
    the message is one line saying what to change."""


@dataclass(frozen=True)
class TaskResources:
    """What one asset's task declares to the Ray scheduler."""

    num_cpus: float = 1.0
    memory: int = 0  # bytes; 0 = not declared
    num_gpus: float = 0.0

    def describe(self) -> str:
        parts = [f"{self.num_cpus:g} CPU"]
        if self.memory:
            parts.append(f"{self.memory / GIB:.1f} GiB")
        if self.num_gpus:
            parts.append(f"{self.num_gpus:g} GPU")
        return ", ".join(parts)


@dataclass(frozen=True)
class RayCluster:
    """Where to run and what each task may override (the command line's ``--ray`` and ``--task-*`` options).

    ``address``: ``"auto"`` (the cluster this machine belongs to: ``RAY_ADDRESS`` or one started here with
    ``ray start``; if there is none, a private instance on this machine), ``"HOST:PORT"`` (a cluster's GCS),
    or ``"ray://HOST:10001"`` (Ray Client). ``None`` fields keep each stage's default `TaskResources`.
    """

    address: str = "auto"
    cpus_per_task: Optional[float] = None
    memory_per_task: Optional[int] = None
    gpus_per_task: Optional[float] = None

    def resources(self, default: TaskResources) -> TaskResources:
        overrides = {"num_cpus": self.cpus_per_task, "memory": self.memory_per_task, "num_gpus": self.gpus_per_task}
        return replace(default, **{name: value for name, value in overrides.items() if value is not None})


@dataclass(frozen=True)
class RayStage:
    """How one stage runs on the cluster: resources per asset, and whether workers keep the work loaded."""

    cluster: RayCluster
    resources: TaskResources
    keep_work_loaded: bool = False  # actors holding the work object (a loaded model) instead of plain tasks
    must_see: Sequence[str] = field(default_factory=tuple)  # paths every worker node must be able to read


def import_ray():
    """``ray``, or ImportError with the one-line install hint."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return ray


@contextlib.contextmanager
def connected(cluster: RayCluster) -> Iterator[None]:
    """Connect this process to the cluster for the block, unless it already is (then leave it connected)."""
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    address = None if cluster.address == "auto" else cluster.address
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RayClusterError(f"cannot connect to the Ray cluster at {cluster.address}: {message}") from error
    try:
        yield
    finally:
        ray.shutdown()


def _set_threads(num_cpus: float) -> None:
    """Each asset's torch and numba work uses the cores its task declared (Ray sets only OMP_NUM_THREADS)."""
    from omnivox.data.runner import limit_threads

    limit_threads(max(1, int(math.ceil(num_cpus))))


def _task_body(work, task, num_cpus: float):
    """What one Ray task runs: the local runner's per-asset function, nothing else."""
    from omnivox.data.runner import process_asset

    _set_threads(num_cpus)
    return process_asset(work, task)


class _AssetWorker:
    """Actor body for work that keeps a model loaded: one instance per worker slot, one asset per call."""

    def __init__(self, work, num_cpus: float) -> None:
        _set_threads(num_cpus)
        self.work = work
        load = getattr(work, "load", None)
        if load is not None:
            load()  # fail here (one clear error for the whole stage), not once per asset

    def ready(self) -> bool:
        return True

    def run(self, task):
        from omnivox.data.runner import process_asset

        return process_asset(self.work, task)


def _worker_environment(paths: Sequence[str]) -> dict:
    """What a node's worker sees: the omnivox version, and which of ``paths`` it cannot read."""
    import os
    import socket

    import omnivox

    return {"host": socket.gethostname(), "version": omnivox.__version__,
            "missing": [path for path in paths if not os.access(path, os.R_OK)]}


def _alive_nodes(ray) -> List[dict]:
    return [node for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0]


def check_workers(ray, stage: RayStage) -> List[dict]:
    """Run a probe on every node with CPUs: same omnivox version as the driver, and the stage's paths visible.

    Raises `RayClusterError` (one line) naming the first node that fails, so a misconfigured cluster stops before
    the first asset instead of recording every asset as failed.
    """
    import omnivox
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = _alive_nodes(ray)
    probe = ray.remote(_worker_environment)
    refs = [probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote([str(path) for path in stage.must_see]) for node in nodes]
    try:
        reports = ray.get(refs, timeout=300)
    except ray.exceptions.GetTimeoutError as error:
        raise RayClusterError("a Ray node did not answer the start-up probe within 300 s") from error
    except ray.exceptions.RayError as error:
        cause = str(error.cause if getattr(error, "cause", None) else error).strip().splitlines()[0]
        raise RayClusterError(f"a Ray worker cannot run omnivox ({cause}); install the same omnivox on every "
                              "node") from error
    for node, report in zip(nodes, reports):
        if report["version"] != omnivox.__version__:
            raise RayClusterError(f"Ray node {report['host']} has omnivox {report['version']}, the driver "
                               f"{omnivox.__version__}: install the same version on every node")
        if report["missing"]:
            raise RayClusterError(f"Ray node {report['host']} cannot read {report['missing'][0]}: mount the shared "
                               "filesystem at the same path on every node")
    return nodes


def _fits(resources: TaskResources, available: Dict[str, float]) -> int:
    """How many tasks of ``resources`` fit in ``available`` (a node's or the cluster's totals)."""
    counts = [available.get("CPU", 0.0) / resources.num_cpus] if resources.num_cpus else []
    if resources.num_gpus:
        counts.append(available.get("GPU", 0.0) / resources.num_gpus)
    if resources.memory:
        counts.append(available.get("memory", 0.0) / resources.memory)
    return int(math.floor(min(counts) + 1e-9)) if counts else 1


def cluster_slots(ray, resources: TaskResources) -> int:
    """Tasks of ``resources`` the cluster runs at once (nodes summed: a task runs on one node).

    Raises `RayClusterError` (one line) when no node can run even one: the scheduler would otherwise wait forever.
    """
    nodes = _alive_nodes(ray)
    slots = sum(_fits(resources, node["Resources"]) for node in nodes)
    if slots == 0:
        largest = max(nodes, key=lambda node: node["Resources"].get("CPU", 0)) if nodes else {"Resources": {}}
        have = largest["Resources"]
        raise RayClusterError(f"no node of the Ray cluster can run a task needing {resources.describe()} "
                              f"(largest node: {have.get('CPU', 0):g} CPU, {have.get('memory', 0) / GIB:.1f} GiB, "
                              f"{have.get('GPU', 0):g} GPU); lower --task-cpus / --task-memory / --task-gpus")
    return slots


def _describe_cluster(ray, address: str) -> str:
    nodes = _alive_nodes(ray)
    totals = ray.cluster_resources()
    where = getattr(ray.get_runtime_context(), "gcs_address", address)  # a Ray Client context may not have it
    return (f"Ray cluster at {where}: {len(nodes)} node(s), {totals.get('CPU', 0):g} CPU, "
            f"{totals.get('GPU', 0):g} GPU, {totals.get('memory', 0) / GIB:.0f} GiB")


def _failure_of(ray, error: BaseException) -> str:
    """The reason recorded for an asset whose task ended in a Ray error rather than an `Outcome`."""
    from omnivox.data.runner import WORKER_DIED_TWICE

    if isinstance(error, ray.exceptions.OutOfMemoryError):
        return "killed by Ray's memory monitor (out of memory; declare more with --task-memory)"
    if isinstance(error, (ray.exceptions.WorkerCrashedError, ray.exceptions.RayActorError)):
        return WORKER_DIED_TWICE
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def run_on_ray(tasks: Sequence, work: Callable, record: Callable, stage: RayStage, progress: bool = True) -> None:
    """Run ``work`` on every task on the connected cluster, calling ``record(task, outcome)`` as each finishes.

    The caller (`runner.run_stage`) owns the records, the progress bar and the counts; this function only
    schedules. On any exception (Ctrl-C) the submitted tasks are cancelled and the exception propagates.
    """
    ray = import_ray()
    with connected(stage.cluster):
        check_workers(ray, stage)
        slots = cluster_slots(ray, stage.resources)
        if progress:
            from tqdm import tqdm

            # Through tqdm, so the line lands above the stage's progress bar instead of inside it.
            tqdm.write(f"{_describe_cluster(ray, stage.cluster.address)}; each task {stage.resources.describe()}, "
                       f"{slots} at once", file=sys.stderr)
        if stage.keep_work_loaded:
            _run_actors(ray, list(tasks), work, record, stage, slots, progress)
        else:
            _run_tasks(ray, list(tasks), work, record, stage, slots)


def _finished(ray, refs: List, timeout: Optional[float]) -> List:
    """The refs that are done: waits for the first (up to ``timeout``), then takes every other finished one in
    the same pass, so the driver calls ``ray.wait`` once per batch of outcomes, not once per asset (with
    thousands in flight, each call scans them all)."""
    ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
    if not ready or len(refs) == 1:
        return ready
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    return ready


def _run_tasks(ray, tasks: List, work: Callable, record: Callable, stage: RayStage, slots: int) -> None:
    resources = stage.resources
    remote = ray.remote(_task_body).options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                                            memory=resources.memory or None, max_retries=1,
                                            retry_exceptions=False)
    work_ref = ray.put(work)  # shipped once, not with every task
    pending = list(reversed(tasks))  # pop() from the end keeps the original order
    in_flight: Dict = {}
    refreshed = time.monotonic()
    try:
        while pending or in_flight:
            if time.monotonic() - refreshed > RESOURCE_REFRESH_S:  # nodes may have joined or left
                slots = max(1, sum(_fits(resources, node["Resources"]) for node in _alive_nodes(ray)))
                refreshed = time.monotonic()
            while pending and len(in_flight) < IN_FLIGHT_PER_SLOT * slots:
                task = pending.pop()
                in_flight[remote.remote(work_ref, task, resources.num_cpus)] = task
            for ref in _finished(ray, list(in_flight), RESOURCE_REFRESH_S):
                task = in_flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as error:
                    from omnivox.data.runner import Outcome

                    outcome = Outcome(task.key, error=_failure_of(ray, error))
                record(task, outcome)
    except BaseException:
        for ref in in_flight:
            ray.cancel(ref)  # not forced: the task gets KeyboardInterrupt, atomic_write removes its temp file
        raise


def _run_actors(ray, tasks: List, work: Callable, record: Callable, stage: RayStage, slots: int,
                progress: bool) -> None:
    from omnivox.data.runner import WORKER_DIED_TWICE, Outcome

    resources = stage.resources
    actor_class = ray.remote(_AssetWorker).options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                                                   memory=resources.memory or None, max_restarts=-1,
                                                   max_task_retries=0)
    # The work object goes inline with each constructor (it is small until loaded), not through the object
    # store: a restarted actor must find its arguments even after the driver's references are gone.
    started = time.perf_counter()
    actors = [actor_class.remote(work, resources.num_cpus) for _ in range(max(1, min(slots, len(tasks))))]
    try:
        ray.get([actor.ready.remote() for actor in actors])
    except ray.exceptions.RayError as error:
        cause = getattr(error, "cause", None) or error
        text = str(cause).strip().splitlines()
        reason = text[-1] if text else cause
        raise RayClusterError(f"a Ray worker could not load the stage's model: {reason}") from error
    # Each actor is a fresh process (torch import, CUDA context, checkpoints): seconds that a short run feels.
    ready_s = time.perf_counter() - started
    logger.info("%d actor(s) loaded the stage's work in %.1f s", len(actors), ready_s,
                extra={"actors": len(actors), "actors_ready_s": ready_s})
    if progress:
        from tqdm import tqdm

        tqdm.write(f"{len(actors)} Ray actor(s) loaded the stage's model in {ready_s:.1f} s", file=sys.stderr)
    pending = list(reversed(tasks))
    # Worker deaths per task (not per key: a stage may hold several tasks of one asset, e.g. one per encoder).
    crashes: Dict[int, int] = {}
    in_flight: Dict = {}  # ref -> (task, actor index)
    busy = [0] * len(actors)
    try:
        while pending or in_flight:
            for index, actor in enumerate(actors):
                while pending and busy[index] < IN_FLIGHT_PER_SLOT:
                    task = pending.pop()
                    in_flight[actor.run.remote(task)] = (task, index)
                    busy[index] += 1
            for ref in _finished(ray, list(in_flight), None):
                task, index = in_flight.pop(ref)
                busy[index] -= 1
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayActorError:
                    # The actor died with this call queued or running; Ray restarts it. Same rule as the local
                    # pool: retried once, a second death on the same asset is recorded.
                    crashes[id(task)] = crashes.get(id(task), 0) + 1
                    if crashes[id(task)] < 2:
                        pending.append(task)
                        continue
                    outcome = Outcome(task.key, error=WORKER_DIED_TWICE)
                except ray.exceptions.RayError as error:
                    outcome = Outcome(task.key, error=_failure_of(ray, error))
                record(task, outcome)
    except BaseException:
        for ref in in_flight:
            ray.cancel(ref)
        raise
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)

