"""The HTTP service over a real socket: `omnivox serve` in its own process, driven with httpx.

The server runs the tiny random-weight pipelines from `make_test_pipeline` on the CPU, with a 1 MiB upload limit.
No test bounds how long the server takes (a loaded 2-core machine is several times slower than an idle one); waits
end when the job does, and fail only when the server dies or reports no progress for `HANG_GUARD_S`.
"""

import io
import json
import struct
import time
import zlib

import httpx
import pytest
import trimesh

from tests.app.conftest import CAR, CROWN, Process
from tests.conftest import HANG_GUARD_S

UPLOAD_LIMIT_MB = 1
# The cheapest real generation: the 512 pipeline, one sampler step per stage, small textures.
FAST = {"pipeline_type": "512", "sparse_structure_steps": 1, "shape_slat_steps": 1, "tex_slat_steps": 1,
        "texture_size": 512, "decimation_target": 5000}


@pytest.fixture(scope="module")
def server(test_weights, tmp_path_factory):
    process = Process(["serve", "--weights", str(test_weights), "--device", "cpu", "--max-upload-mb",
                       str(UPLOAD_LIMIT_MB), "--max-image-side", "2048"],
                      tmp_path_factory.mktemp("serve") / "serve.log", "/v1/health", timeout=HANG_GUARD_S)
    yield process
    process.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=HANG_GUARD_S) as client:
        yield client


def _submit(client, image_bytes, name="crown.webp", **fields):
    return client.post("/v1/generate", files={"image": (name, image_bytes)}, data={**FAST, **fields})


def _poll(client, server, job_id, until):
    """Poll the job until `until(status)` holds; returns (that status, every distinct progress text seen).

    However long the job takes: this fails only if the server process exits, or if the job's state, queue position
    and progress all stay the same for HANG_GUARD_S (a hang, not a slow machine)."""
    seen, last, changed = [], None, time.monotonic()
    while True:
        status = client.get(f"/v1/jobs/{job_id}").json()
        text = status["progress"]["text"]
        if not seen or seen[-1] != text:
            seen.append(text)
        if until(status):
            return status, seen
        if (status["state"], status["position"], text) != last:
            last, changed = (status["state"], status["position"], text), time.monotonic()
        assert server.proc.poll() is None, f"the server exited:\n{server.log_text()}"
        assert time.monotonic() - changed < HANG_GUARD_S, f"job {job_id} hangs at {status}"
        time.sleep(0.1)


def _wait(client, server, job_id):
    """Poll until the job finishes; returns (final status, every distinct progress text seen)."""
    return _poll(client, server, job_id, lambda status: status["state"] in ("done", "failed", "cancelled"))


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def test_generate_end_to_end(client, server, assets):
    response = _submit(client, (assets / CROWN).read_bytes(), seed=7, shape_slat_steps=2)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "generate" and job["state"] in ("queued", "running")
    status, seen = _wait(client, server, job["id"])
    assert status["state"] == "done", status
    assert status["has_result"] and status["error"] is None
    # Progress came per stage: the 512 pipeline's three sampling stages, then export.
    assert status["progress"]["stage"] == "export"
    assert any(text.startswith("stage ") for text in seen), seen
    glb = client.get(f"/v1/jobs/{job['id']}/result.glb")
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    assert glb.content[:4] == b"glTF"
    mesh = trimesh.load(io.BytesIO(glb.content), file_type="glb", force="mesh")
    assert len(mesh.faces) > 100
    assert mesh.visual.material.baseColorTexture is not None  # a baked PBR texture, not a bare mesh
    spec = client.get("/openapi.json").json()
    assert {"/v1/generate", "/v1/texture", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result.glb",
            "/v1/jobs/{job_id}/cancel"} <= set(spec["paths"])
    assert "delete" in spec["paths"]["/v1/jobs/{job_id}"]


def test_generate_from_several_views_of_one_object(client, server, assets):
    """Several `image` parts are views of one object: one job, one GLB; bad view sets get clear 4xx answers."""
    from PIL import Image

    crown = Image.open(assets / CROWN)
    views = []
    for side in (256, 200, 224):  # small PNGs of different sizes keep the request under the upload limit
        buffer = io.BytesIO()
        crown.resize((side, side)).save(buffer, format="PNG")
        views.append((f"view{side}.png", buffer.getvalue()))
    files = [("image", view) for view in views]
    response = client.post("/v1/generate", files=files, data={**FAST, "multiview_mode": "multidiffusion"})
    assert response.status_code == 202, response.text
    status, _ = _wait(client, server, response.json()["id"])
    assert status["state"] == "done", status
    glb = client.get(f"/v1/jobs/{status['id']}/result.glb")
    assert glb.status_code == 200 and glb.content[:4] == b"glTF"
    response = client.post("/v1/generate", files=files, data={**FAST, "multiview_mode": "average"})
    assert response.status_code == 422 and "multiview_mode must be one of" in response.text
    car = ("car.jpg", (assets / CAR).read_bytes())
    response = client.post("/v1/generate", files=[("image", views[0]), ("image", car)], data=FAST)
    assert response.status_code == 422 and "view(s) 2 of 2 has no transparent background" in response.text
    response = client.post("/v1/generate", files=[("image", views[0])] * 9, data=FAST)
    assert response.status_code == 422 and "at most 8 views" in response.text


def test_generate_with_the_game_profile(client, server, assets):
    """profile=game gives the game-ready file (MSFT_lod with lods=1), read back by an independent reader."""
    response = _submit(client, (assets / CROWN).read_bytes(), profile="game", lods=1, decimation_target=800)
    assert response.status_code == 202, response.text
    status, _ = _wait(client, server, response.json()["id"])
    assert status["state"] == "done", status
    glb = client.get(f"/v1/jobs/{status['id']}/result.glb")
    assert glb.status_code == 200 and glb.content[:4] == b"glTF"
    scene = trimesh.load(io.BytesIO(glb.content), file_type="glb")
    assert 0 < sum(len(g.faces) for g in scene.geometry.values())
    header = json.loads(glb.content[20:20 + int.from_bytes(glb.content[12:16], "little")])
    assert "MSFT_lod" in header.get("extensionsUsed", [])
    response = _submit(client, (assets / CROWN).read_bytes(), watertight=True)
    assert response.status_code == 422 and "only apply with profile 'game'" in response.text


def test_texture_end_to_end(client, server, assets):
    response = client.post("/v1/texture", files={"mesh": ("wallhole.obj", (assets / "mesh/wallhole.obj").read_bytes()),
                                                 "image": ("crown.webp", (assets / CROWN).read_bytes())},
                           data={"resolution": 512, "texture_size": 512, "tex_slat_steps": 1})
    assert response.status_code == 202, response.text
    status, _ = _wait(client, server, response.json()["id"])
    assert status["state"] == "done", status
    glb = client.get(f"/v1/jobs/{status['id']}/result.glb")
    mesh = trimesh.load(io.BytesIO(glb.content), file_type="glb", force="mesh")
    source = trimesh.load(assets / "mesh/wallhole.obj", force="mesh")
    assert len(mesh.faces) > 0 and mesh.visual.material.baseColorTexture is not None
    # The user's mesh keeps its place and size (coordinates are not normalised away).
    assert abs(mesh.bounds - source.bounds).max() < 1e-3 * source.scale


def test_texture_with_the_game_profile(client, server, assets):
    """/v1/texture with profile=game: the user's mesh decimated to the budget, MSFT_lod levels, the report beside
    the file; read back by an independent reader, in the mesh's own place and size."""
    files = {"mesh": ("wallhole.obj", (assets / "mesh/wallhole.obj").read_bytes()),
             "image": ("crown.webp", (assets / CROWN).read_bytes())}
    data = {"resolution": 512, "texture_size": 512, "tex_slat_steps": 1, "profile": "game",
            "decimation_target": 2000, "lods": 1}
    response = client.post("/v1/texture", files=files, data=data)
    assert response.status_code == 202, response.text
    status, _ = _wait(client, server, response.json()["id"])
    assert status["state"] == "done", status
    glb = client.get(f"/v1/jobs/{status['id']}/result.glb")
    assert glb.status_code == 200 and glb.content[:4] == b"glTF"
    header = json.loads(glb.content[20:20 + int.from_bytes(glb.content[12:16], "little")])
    assert "MSFT_lod" in header.get("extensionsUsed", [])
    scene = trimesh.load(io.BytesIO(glb.content), file_type="glb")
    level0 = max(scene.geometry.values(), key=lambda g: len(g.faces))
    assert 0 < len(level0.faces) <= 2000
    source = trimesh.load(assets / "mesh/wallhole.obj", force="mesh")
    assert abs(level0.bounds - source.bounds).max() < 2e-2 * source.scale
    response = client.post("/v1/texture", files=files, data={**data, "profile": "plain"})
    assert response.status_code == 422 and "only apply with profile 'game'" in response.text


def _png_header_only(width, height):
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IEND", b"")


def test_bad_input_gets_clear_4xx(client, assets):
    crown = (assets / CROWN).read_bytes()
    response = _submit(client, b"GIF89a? not really" * 20, name="notes.gif")
    assert response.status_code == 422
    assert "image 'notes.gif' is not an image file Pillow can read" in response.json()["detail"]
    response = _submit(client, _png_header_only(6000, 300), name="wide.png")
    assert response.status_code == 422 and "6000x300 pixels; the largest side allowed is 2048" in response.text
    response = _submit(client, (assets / CAR).read_bytes(), name="car.jpg")  # RGB, and no background model
    assert response.status_code == 422 and "'car.jpg' has no transparent background" in response.text
    response = _submit(client, crown, texture_size=3000)
    assert response.status_code == 422 and "texture_size must be one of" in response.text
    response = _submit(client, crown, pipeline_type="2048")
    assert response.status_code == 422 and "pipeline_type must be one of" in response.text
    response = _submit(client, crown, shape_slat_steps=0)
    assert response.status_code == 422 and "shape_slat_steps must be in 1..100" in response.text
    response = client.post("/v1/generate", data=FAST)  # no image at all
    assert response.status_code == 422 and "image" in response.text
    response = client.post("/v1/texture", files={"mesh": ("model.fbx", b"x" * 100), "image": ("c.webp", crown)})
    assert response.status_code == 422 and "unsupported file type '.fbx'" in response.text
    gltf = (assets / "gltf/Avocado/Avocado.gltf").read_bytes()  # names Avocado.bin: could read server files
    response = client.post("/v1/texture", files={"mesh": ("Avocado.gltf", gltf), "image": ("c.webp", crown)})
    assert response.status_code == 422 and "refers to the external file 'Avocado.bin'" in response.text
    assert client.get("/v1/health").json()["queue"]["queued"] == 0  # nothing bad was queued


def test_oversized_upload_is_refused(client):
    response = _submit(client, b"\xff" * (UPLOAD_LIMIT_MB * 1024 * 1024 + 10), name="huge.png")
    assert response.status_code == 413
    assert f"exceeds the upload limit of {UPLOAD_LIMIT_MB * 1024 * 1024} bytes" in response.json()["detail"]


def test_unknown_job_is_404(client):
    for method, path in (("GET", "/v1/jobs/0123abc"), ("GET", "/v1/jobs/0123abc/result.glb"),
                         ("DELETE", "/v1/jobs/0123abc"), ("POST", "/v1/jobs/0123abc/cancel")):
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert "no job with id '0123abc'" in response.json()["detail"]


def _next_report(progress: dict) -> tuple:
    """(stage index, step) of the progress report a job makes after `progress`: the samplers report every step,
    counted from 1, and stage index 0 is the work before the first stage."""
    if progress["index"] == 0:
        return 1, 1
    if progress["step"] < progress["total"]:
        return progress["index"], progress["step"] + 1
    return progress["index"] + 1, 1


def test_cancel_queued_and_running_jobs(client, server, assets):
    crown = (assets / CROWN).read_bytes()
    # Enough steps that the job is still sampling when the cancel arrives.
    running = _submit(client, crown, sparse_structure_steps=100, shape_slat_steps=100, tex_slat_steps=100).json()
    waiting = _submit(client, crown).json()
    _poll(client, server, running["id"], lambda status: status["state"] != "queued")
    assert client.get(f"/v1/jobs/{waiting['id']}").json()["position"] == 1  # visible place in the queue
    cancelled = client.delete(f"/v1/jobs/{waiting['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    response = client.post(f"/v1/jobs/{running['id']}/cancel")
    assert response.status_code == 200
    status, _ = _wait(client, server, running["id"])
    assert status["state"] == "cancelled"
    # A running job stops at its next progress report (one per sampler step), however slow the machine is.
    at_cancel, final = response.json()["progress"], status["progress"]
    assert (final["index"], final["step"]) <= _next_report(at_cancel), (at_cancel, final)
    response = client.get(f"/v1/jobs/{running['id']}/result.glb")
    assert response.status_code == 409 and "it is cancelled" in response.json()["detail"]


def test_memory_is_steady_over_30_requests(client, server, assets):
    """30 sequential generate + download rounds; the server's RSS, as the median of rounds 25-29, may not exceed
    the median of rounds 10-14 by 24 MiB, or if it does, the next 15 rounds may not grow it by that much again. Keeping each finished job's decoded input image (2.3 MB for this one)
    grows it by about 34 MiB over those 15 rounds and fails this test. Medians of later windows, because the RSS
    of a healthy server moves in allocator steps of about 27 MiB, up and down, during its first 10-15 rounds
    (seen 2026-12-07: e.g. 677 -> 701 MiB at round 6, then flat; in-process, the same jobs grow it 4 MiB in 24)."""
    import statistics

    crown = (assets / CROWN).read_bytes()
    rss = []

    def rounds(count: int) -> None:
        for _ in range(count):
            job = _submit(client, crown, seed=len(rss)).json()
            status, _ = _wait(client, server, job["id"])
            assert status["state"] == "done", status
            assert client.get(f"/v1/jobs/{job['id']}/result.glb").content[:4] == b"glTF"
            rss.append(_rss_bytes(server.pid))

    def growth(first: int, second: int) -> float:  # median RSS of rounds second..+4 minus that of first..+4
        return statistics.median(rss[second:second + 5]) - statistics.median(rss[first:first + 5])

    rounds(30)
    if growth(10, 25) >= 24 * 2**20:
        # Once in a full CI run (not reproduced alone) the RSS rose 85 MiB between the windows: a leak keeps rising,
        # an allocator step does not, so 15 more rounds decide. A kept 2.3 MB image grows both windows by ~34 MiB.
        rounds(15)
        assert growth(25, 40) < 24 * 2**20, [f"{r / 2**20:.0f} MiB" for r in rss]


def test_texture_without_texturing_weights_is_a_clear_404(tmp_path, assets):
    """Weights without texturing_pipeline.json: `/v1/texture` says what is missing instead of a bare "Not Found"
    (in-process: the app over a queue of image-to-3D-only models, as `omnivox serve` builds it)."""
    from fastapi.testclient import TestClient

    from omnivox.app.jobs import JobQueue
    from omnivox.app.server import create_app
    from omnivox.app.tasks import load_models
    from omnivox.pipelines.testing import make_test_pipeline

    weights = make_test_pipeline(tmp_path / "weights")  # image to 3D only
    models = load_models(weights, "cpu")
    assert models.texturing is None
    with JobQueue([models], tmp_path / "jobs") as queue, TestClient(create_app(queue, models)) as client:
        response = client.post("/v1/texture", files={
            "mesh": ("wallhole.obj", (assets / "mesh/wallhole.obj").read_bytes()),
            "image": ("crown.webp", (assets / CROWN).read_bytes())})
        assert response.status_code == 404
        assert response.json()["detail"].startswith(
            f"texturing weights not found: {weights / 'texturing_pipeline.json'} does not exist")
        health = client.get("/v1/health").json()
        assert health["texturing"] is False and health["queue"]["queued"] == health["queue"]["running"] == 0
        assert "/v1/texture" in client.get("/openapi.json").json()["paths"]  # documented, with its 404
