"""A job queue for generation requests: one worker thread per device, so one job at a time per GPU.

The web app and the HTTP service both submit work here. A job is a function `work(resource, context) -> Path`
where `resource` is whatever the worker owns (the resident pipelines of one device) and `context` lets the job
report progress, notice cancellation and find its private output folder. Requests wait in one FIFO list; each
idle worker takes the oldest. Callers see the state, the place in the queue and the progress of every job.

Cancellation is cooperative: a queued job is removed at once; a running job stops at its next progress report
(`JobContext.report` raises `JobCancelled`), which the pipelines make once per sampling step.

Memory stays bounded over a long-running server: the queue refuses work beyond `max_pending` jobs, and only the
latest `keep_finished` finished jobs are remembered; older ones are forgotten and their output folders deleted.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> def work(resource, ctx):
    ...     ctx.report("stage", 1, 1)
    ...     path = ctx.output_dir / "out.txt"
    ...     path.write_text(resource)
    ...     return path
    >>> with JobQueue(["cpu"], tempfile.mkdtemp()) as queue:
    ...     job = queue.submit("demo", work)
    ...     queue.wait(job.id, timeout=10).state
    <JobState.DONE: 'done'>
"""

from __future__ import annotations

import collections
import enum
import logging
import shutil
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

logger = logging.getLogger(__name__)

Resource = TypeVar("Resource")


class JobState(str, enum.Enum):
    """Where a job is in its life: queued -> running -> done | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class JobCancelled(Exception):
    """Raised inside a running job when someone cancelled it; the worker records the job as cancelled."""


class QueueFull(RuntimeError):
    """The queue already holds `max_pending` unfinished jobs."""


@dataclass
class Progress:
    """The latest progress report of a job: `step` of `total` in `stage` (stage `index` of `stages`)."""

    stage: str = ""
    step: int = 0
    total: int = 0
    index: int = 0
    stages: int = 0

    def describe(self) -> str:
        """One line for people, e.g. "stage 2/3 shape: step 5/12"."""
        if not self.stage:
            return "starting"
        where = f"stage {self.index}/{self.stages} " if self.stages else ""
        steps = f": step {self.step}/{self.total}" if self.total else ""
        return f"{where}{self.stage}{steps}"


@dataclass
class Job:
    """One request. Read its fields through `JobQueue.status`, which takes the queue's lock."""

    id: str
    kind: str
    work: Callable[[Any, "JobContext"], Path] | None = field(repr=False)
    output_dir: Path
    state: JobState = JobState.QUEUED
    progress: Progress = field(default_factory=Progress)
    result: Path | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)


class JobContext:
    """What a running job gets besides its resource: progress reporting, cancellation and its output folder."""

    def __init__(self, job: Job, lock: threading.Lock):
        self._job = job
        self._lock = lock

    @property
    def output_dir(self) -> Path:
        """A folder only this job writes to; deleted when the queue forgets the job."""
        return self._job.output_dir

    @property
    def cancelled(self) -> bool:
        return self._job.cancel_event.is_set()

    def check_cancelled(self) -> None:
        """Raise `JobCancelled` if the job was cancelled (call between expensive steps)."""
        if self._job.cancel_event.is_set():
            raise JobCancelled(self._job.id)

    def report(self, stage: str, step: int = 0, total: int = 0, *, index: int = 0, stages: int = 0) -> None:
        """Record progress, then raise `JobCancelled` if the job was cancelled meanwhile."""
        with self._lock:
            self._job.progress = Progress(stage, int(step), int(total), int(index), int(stages))
        self.check_cancelled()


class JobQueue(Generic[Resource]):
    """FIFO job queue served by one worker thread per resource (one resource = the models on one device).

    Args:
        resources: one entry per worker; each job runs with exactly one of them, never two jobs at once.
        workdir: parent folder of the jobs' output folders.
        max_pending: the most unfinished (queued or running) jobs; `submit` raises `QueueFull` beyond it.
        keep_finished: how many finished jobs stay visible (and keep their outputs) before being forgotten.
    """

    def __init__(self, resources: Sequence[Resource], workdir: str | Path, *, max_pending: int = 32,
                 keep_finished: int = 64):
        if len(resources) == 0:
            raise ValueError("JobQueue needs at least one resource (one per device)")
        if max_pending < 1 or keep_finished < 1:
            raise ValueError(f"max_pending and keep_finished must be >= 1, got {max_pending}, {keep_finished}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.max_pending = max_pending
        self.keep_finished = keep_finished
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._waiting: collections.deque[Job] = collections.deque()
        self._finished: collections.deque[str] = collections.deque()
        self._closing = False
        self._workers = [threading.Thread(target=self._serve, args=(resource,), name=f"omnivox-worker-{i}",
                                          daemon=True) for i, resource in enumerate(resources)]
        for worker in self._workers:
            worker.start()

    # ---- submitting and looking up ------------------------------------------------------------------------
    def submit(self, kind: str, work: Callable[[Resource, JobContext], Path]) -> Job:
        """Queue `work`; returns the job at once. Raises `QueueFull` when `max_pending` jobs are unfinished."""
        job_id = uuid.uuid4().hex
        with self._lock:
            if self._closing:
                raise RuntimeError("the job queue is closed")
            unfinished = sum(1 for job in self._jobs.values() if not job.state.finished)
            if unfinished >= self.max_pending:
                raise QueueFull(f"{unfinished} jobs are already waiting or running (limit {self.max_pending})")
            job = Job(job_id, kind, work, self.workdir / job_id)
            self._jobs[job_id] = job
            self._waiting.append(job)
            self._wake.notify()
        return job

    def status(self, job_id: str) -> dict:
        """A JSON-ready snapshot of a job. Raises `KeyError` for unknown (or forgotten) ids.

        `position` is the number of jobs ahead in the queue plus one for a queued job (1 = next), 0 otherwise.
        """
        with self._lock:
            job = self._jobs[job_id]
            position = self._position(job)
            return {
                "id": job.id,
                "kind": job.kind,
                "state": job.state.value,
                "position": position,
                "progress": {"stage": job.progress.stage, "step": job.progress.step, "total": job.progress.total,
                             "index": job.progress.index, "stages": job.progress.stages,
                             "text": job.progress.describe()},
                "error": job.error,
                "created": job.created,
                "started": job.started,
                "finished": job.finished,
                "has_result": job.result is not None,
            }

    def result(self, job_id: str) -> Path | None:
        """The output file of a finished job, None until then. Raises `KeyError` for unknown ids."""
        with self._lock:
            return self._jobs[job_id].result

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job. Returns False when it had already finished. `KeyError` if unknown."""
        with self._lock:
            job = self._jobs[job_id]
            if job.state.finished:
                return False
            job.cancel_event.set()
            if job.state is JobState.QUEUED:
                self._waiting.remove(job)
                self._finish(job, JobState.CANCELLED)
            return True

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job finishes (or `timeout` seconds pass); returns the job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake:
            job = self._jobs[job_id]
            while not job.state.finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._wake.wait(left)
            return job

    def counts(self) -> dict:
        """How many jobs are queued, running and remembered as finished."""
        with self._lock:
            running = sum(1 for job in self._jobs.values() if job.state is JobState.RUNNING)
            return {"queued": len(self._waiting), "running": running, "finished": len(self._finished),
                    "workers": len(self._workers)}

    # ---- shutting down ------------------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything, stop the workers and delete the outputs."""
        with self._wake:
            self._closing = True
            for job in list(self._waiting):
                job.cancel_event.set()
                self._finish(job, JobState.CANCELLED)
            self._waiting.clear()
            for job in self._jobs.values():
                job.cancel_event.set()
            self._wake.notify_all()
        for worker in self._workers:
            worker.join(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "JobQueue[Resource]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals (call with the lock held unless said otherwise) -----------------------------------------
    def _position(self, job: Job) -> int:
        if job.state is not JobState.QUEUED:
            return 0
        return self._waiting.index(job) + 1

    def _finish(self, job: Job, state: JobState) -> None:
        job.state = state
        job.finished = time.time()
        job.work = None  # the closure holds the request's inputs (a decoded image is megabytes); drop them now
        self._finished.append(job.id)
        while len(self._finished) > self.keep_finished:
            old = self._jobs.pop(self._finished.popleft())
            shutil.rmtree(old.output_dir, ignore_errors=True)
        self._wake.notify_all()

    def _serve(self, resource: Resource) -> None:
        """Worker loop (runs in its own thread, without the lock while a job works)."""
        while True:
            with self._wake:
                while not self._waiting and not self._closing:
                    self._wake.wait()
                if self._closing:
                    return
                job = self._waiting.popleft()
                job.state = JobState.RUNNING
                job.started = time.time()
                self._wake.notify_all()
            context = JobContext(job, self._lock)
            state, result, error = JobState.FAILED, None, None
            try:
                job.output_dir.mkdir(parents=True, exist_ok=True)
                context.check_cancelled()
                result = job.work(resource, context)
                context.check_cancelled()
                state = JobState.DONE
            except JobCancelled:
                state = JobState.CANCELLED
            except Exception as exc:  # a failed job must not take the worker down
                error = f"{type(exc).__name__}: {exc}"
                logger.error("job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
            with self._lock:
                job.result = result if state is JobState.DONE else None
                job.error = error
                self._finish(job, state)
