"""The web app's job following, in process: status lines, results, and cancellation when the page goes away.

(The page itself is exercised in a real browser by test_browser.py.)
"""

import threading
import time

import pytest

gr = pytest.importorskip("gradio")

from omnivox.app import web  # noqa: E402
from omnivox.app.jobs import JobQueue  # noqa: E402
from tests.conftest import HANG_GUARD_S


def _stepping_job(steps, delay, gate=None):
    def work(resource, ctx):
        if gate is not None:
            gate.wait(10)
        for step in range(1, steps + 1):
            ctx.report("shape_slat", step, steps, index=2, stages=3)
            time.sleep(delay)
        path = ctx.output_dir / "result.glb"
        path.write_bytes(b"glTF")
        return path
    return work


def test_follow_reports_queue_progress_and_outcome(tmp_path):
    gate = threading.Event()
    with JobQueue(["cpu"], tmp_path / "jobs") as queue:
        first = queue.submit("generate", _stepping_job(1, 0.0, gate))
        second = queue.submit("generate", _stepping_job(3, 0.05))
        while queue.status(first.id)["state"] != "running":
            time.sleep(0.005)
        lines = web._follow(queue, second.id, poll_seconds=0.01)
        assert next(lines) == "Waiting in the queue: position 1 (1 running on 1 device)."
        gate.set()
        rest = list(lines)
        assert any(line.startswith("Running: stage 2/3 shape_slat: step ") for line in rest), rest
        assert rest[-1].startswith("**Done** in ")
        viewer, download, video, panel = web._results(queue, second.id)
        assert viewer == str(queue.result(second.id))
        assert download.visible is True and video.visible is False and panel.visible is False  # no previews made
        assert web._results(queue, first.id)[0] is not None


def test_leaving_the_page_cancels_the_job(tmp_path):
    with JobQueue(["cpu"], tmp_path / "jobs") as queue:
        job = queue.submit("generate", _stepping_job(1000, 0.01))
        lines = web._follow(queue, job.id, poll_seconds=0.01)
        next(lines)
        lines.close()  # gradio closes the generator when the visitor leaves or presses Cancel
        assert queue.wait(job.id, timeout=HANG_GUARD_S).state.value == "cancelled"
        assert web._results(queue, job.id)[0] is None
        assert web._cancel(queue, job.id) == "Nothing to cancel."
        other = queue.submit("generate", _stepping_job(1000, 0.01))
        assert web._cancel(queue, other.id) == "**Cancelled.**"
        assert queue.wait(other.id, timeout=HANG_GUARD_S).state.value == "cancelled"
