"""The job queue: FIFO order and positions, one job at a time per resource, cancellation, failures, bounds."""

import threading
import time

import pytest

from omnivox.app.jobs import JobCancelled, JobQueue, JobState, QueueFull
from tests.conftest import HANG_GUARD_S


def _until(predicate, timeout=HANG_GUARD_S):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def _write(name):
    def work(resource, ctx):
        path = ctx.output_dir / f"{name}.txt"
        path.write_text(f"{name} on {resource}")
        return path
    return work


def test_jobs_run_in_order_with_visible_positions(tmp_path):
    gate = threading.Event()
    order = []

    def blocked(resource, ctx):
        gate.wait(HANG_GUARD_S)
        order.append("first")
        return _write("first")(resource, ctx)

    with JobQueue(["dev0"], tmp_path / "jobs") as queue:
        first = queue.submit("generate", blocked)
        _until(lambda: queue.status(first.id)["state"] == "running")
        second = queue.submit("generate", lambda r, c: (order.append("second"), _write("second")(r, c))[1])
        third = queue.submit("texture", lambda r, c: (order.append("third"), _write("third")(r, c))[1])
        assert queue.status(first.id)["position"] == 0
        assert queue.status(second.id)["position"] == 1
        assert queue.status(third.id)["position"] == 2
        assert queue.counts() == {"queued": 2, "running": 1, "finished": 0, "workers": 1}
        gate.set()
        assert queue.wait(third.id, timeout=HANG_GUARD_S).state is JobState.DONE
        assert order == ["first", "second", "third"]
        assert queue.result(second.id).read_text() == "second on dev0"
        assert queue.status(third.id)["kind"] == "texture"


def test_one_job_at_a_time_per_resource(tmp_path):
    lock = threading.Lock()
    active = {"dev0": 0, "dev1": 0}
    peak = {"dev0": 0, "dev1": 0}
    total_peak = [0]

    def work(resource, ctx):
        with lock:
            active[resource] += 1
            peak[resource] = max(peak[resource], active[resource])
            total_peak[0] = max(total_peak[0], sum(active.values()))
        time.sleep(0.02)
        with lock:
            active[resource] -= 1
        return _write("x")(resource, ctx)

    with JobQueue(["dev0", "dev1"], tmp_path / "jobs") as queue:
        jobs = [queue.submit("generate", work) for _ in range(8)]
        for job in jobs:
            assert queue.wait(job.id, timeout=HANG_GUARD_S).state is JobState.DONE
    assert peak == {"dev0": 1, "dev1": 1}
    assert total_peak[0] == 2  # both devices were used at once


def test_cancel_queued_and_running_jobs(tmp_path):
    started = threading.Event()
    steps = []

    def long_job(resource, ctx):
        for step in range(1000):
            started.set()
            ctx.report("shape", step, 1000, index=2, stages=3)
            steps.append(step)
            time.sleep(0.005)
        return _write("never")(resource, ctx)

    with JobQueue(["dev0"], tmp_path / "jobs") as queue:
        running = queue.submit("generate", long_job)
        waiting = queue.submit("generate", _write("waiting"))
        assert started.wait(10)
        _until(lambda: queue.status(running.id)["progress"]["step"] >= 2)
        progress = queue.status(running.id)["progress"]
        assert progress["stage"] == "shape" and progress["total"] == 1000
        assert progress["text"].startswith("stage 2/3 shape: step ")
        assert queue.cancel(waiting.id) is True
        assert queue.status(waiting.id)["state"] == "cancelled"
        assert queue.cancel(running.id) is True
        assert queue.wait(running.id, timeout=HANG_GUARD_S).state is JobState.CANCELLED
        assert len(steps) < 1000
        assert queue.result(running.id) is None
        assert queue.cancel(running.id) is False  # already finished
        after = queue.submit("generate", _write("after"))  # the worker survived
        assert queue.wait(after.id, timeout=HANG_GUARD_S).state is JobState.DONE


def test_failure_is_recorded_and_the_worker_survives(tmp_path):
    def broken(resource, ctx):
        raise ValueError("no voxels survived")

    with JobQueue(["dev0"], tmp_path / "jobs") as queue:
        bad = queue.submit("generate", broken)
        good = queue.submit("generate", _write("good"))
        assert queue.wait(bad.id, timeout=HANG_GUARD_S).state is JobState.FAILED
        assert queue.status(bad.id)["error"] == "ValueError: no voxels survived"
        assert queue.wait(good.id, timeout=HANG_GUARD_S).state is JobState.DONE


def test_bounds_on_pending_and_remembered_jobs(tmp_path):
    gate = threading.Event()
    with JobQueue(["dev0"], tmp_path / "jobs", max_pending=2, keep_finished=3) as queue:
        blocker = queue.submit("generate", lambda r, c: (gate.wait(HANG_GUARD_S), _write("b")(r, c))[1])
        queue.submit("generate", _write("q"))
        with pytest.raises(QueueFull, match="limit 2"):
            queue.submit("generate", _write("refused"))
        gate.set()
        queue.wait(blocker.id, timeout=HANG_GUARD_S)
        outputs = []
        for i in range(6):
            job = queue.submit("generate", _write(f"n{i}"))
            queue.wait(job.id, timeout=HANG_GUARD_S)
            outputs.append((job.id, queue.result(job.id).parent))
        assert queue.counts()["finished"] == 3
        for job_id, folder in outputs[:3]:
            with pytest.raises(KeyError):
                queue.status(job_id)
            assert not folder.exists()  # forgotten jobs' outputs are deleted
        for job_id, folder in outputs[3:]:
            assert queue.status(job_id)["state"] == "done" and folder.is_dir()


def test_context_raises_when_cancelled(tmp_path):
    seen = []

    def work(resource, ctx):
        ctx._job.cancel_event.set()
        try:
            ctx.report("sparse_structure", 1, 12)
        except JobCancelled:
            seen.append("raised")
            raise
        return _write("x")(resource, ctx)

    with JobQueue(["dev0"], tmp_path / "jobs") as queue:
        job = queue.submit("generate", work)
        assert queue.wait(job.id, timeout=HANG_GUARD_S).state is JobState.CANCELLED
    assert seen == ["raised"]


def test_invalid_construction(tmp_path):
    with pytest.raises(ValueError, match="at least one resource"):
        JobQueue([], tmp_path)
    with pytest.raises(ValueError, match="max_pending"):
        JobQueue(["x"], tmp_path, max_pending=0)


def test_finished_jobs_release_their_inputs(tmp_path):
    """A remembered job must not keep its request's inputs (the decoded image) alive: that grew a server's memory
    by the image size per request."""
    import gc
    import weakref

    class Payload:
        pass

    payload = Payload()
    alive = weakref.ref(payload)

    def make_work(data):
        return lambda resource, ctx: _write(str(id(data)))(resource, ctx)

    with JobQueue(["dev0"], tmp_path / "jobs") as queue:
        job = queue.submit("generate", make_work(payload))
        del payload
        assert queue.wait(job.id, timeout=HANG_GUARD_S).state is JobState.DONE
        gc.collect()
        assert alive() is None
        assert queue.status(job.id)["state"] == "done"  # still remembered, just without its inputs
