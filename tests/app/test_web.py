"""The web app in process: job following (status lines, results, cancellation when the page goes away) and the
texture tab's wiring from its controls to the texturing pipeline's options.

(The page itself is exercised in a real browser by test_browser.py.)
"""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

gr = pytest.importorskip("gradio")

from omnivox.app import tasks, web  # noqa: E402
from omnivox.app.jobs import JobQueue  # noqa: E402
from omnivox.ovoxel.game import GameProfile  # noqa: E402
from tests.app.conftest import CROWN  # noqa: E402
from tests.conftest import HANG_GUARD_S  # noqa: E402


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


class _RecordingTexturing:
    """Stands in for the texturing pipeline (whose output test_browser.py and test_server.py check): keeps the
    options of each run and returns what the texture task saves, a textured trimesh or, with a game profile, an
    object with ``save(path)``."""

    background_remover = None  # the test image has an alpha channel

    def __init__(self):
        self.runs = []

    def run(self, mesh, **options):
        self.runs.append(options)
        if options["profile"] is not None:
            return _GameFile()
        box = trimesh.creation.box()
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.new("RGB", (4, 4), (200, 80, 40)))
        box.visual = trimesh.visual.TextureVisuals(uv=np.zeros((len(box.vertices), 2)), material=material)
        return box


class _GameFile:
    def save(self, path):
        Path(path).write_bytes(b"glTF")


def _handler(demo, name: str):
    (handler,) = [block for block in demo.fns.values() if getattr(block.fn, "__name__", "") == name]
    return handler


def test_texture_tab_passes_the_game_options_to_the_pipeline(test_weights, assets, tmp_path):
    """The texture tab's controls, found by element id, reach the texturing pipeline as a `GameProfile` (budget,
    levels of detail, watertight, texture size); unticked, the same levels and watertight settings give a plain
    run rather than an error."""
    models = tasks.load_models(test_weights)
    models.texturing = recorder = _RecordingTexturing()
    crown = Image.open(assets / CROWN)
    with JobQueue([models], tmp_path / "jobs") as queue:
        demo = web.build_app(queue, models, previews=None, poll_seconds=0.01)
        on_texture = _handler(demo, "on_texture")
        page = {"texture-mesh": str(assets / "mesh/wallhole.obj"), "texture-image": crown, "texture-seed": 7,
                "texture-resolution": "512", "texture-texture-size": "1024",
                "texture-game-profile": True, "texture-faces": 3000.0, "texture-lods": 2.0,
                "texture-watertight": True}  # sliders may hand over floats

        def click(**changes):
            values = {**page, **changes}
            lines = list(on_texture.fn(*[values[block.elem_id] for block in on_texture.inputs]))
            assert lines[-1][0].startswith("**Done** in "), lines
            assert queue.result(lines[-1][1]).read_bytes()[:4] == b"glTF"
            return recorder.runs[-1]

        game = click()
        assert game["profile"] == GameProfile(faces=3000, lods=2, watertight=True, texture_size=1024)
        assert (game["resolution"], game["seed"], game["texture_size"]) == (512, 7, 1024)
        assert click(**{"texture-watertight": False, "texture-lods": 0.0})["profile"] == GameProfile(
            faces=3000, texture_size=1024)
        plain = click(**{"texture-game-profile": False})
        assert plain["profile"] is None and plain["texture_size"] == 1024
        assert len(recorder.runs) == 3
