"""The export runs where the pipeline ran (issue 16, item 1): no silent fall back to the CPU after a GPU run."""

from typer.testing import CliRunner

from omnivox.cli import app
from tests.cli.conftest import RGBA_IMAGE

runner = CliRunner()


def test_generate_bakes_the_glb_on_the_pipelines_device(tiny_weights, assets, tmp_path, monkeypatch):
    from omnivox.ovoxel import export

    devices = []
    original = export.to_glb

    def recording_to_glb(*args, **kwargs):
        devices.append(kwargs.get("device"))
        return original(*args, **kwargs)

    monkeypatch.setattr(export, "to_glb", recording_to_glb)
    result = runner.invoke(app, ["generate", str(assets / RGBA_IMAGE), "-w", str(tiny_weights), "-o",
                                 str(tmp_path / "x.glb"), "--pipeline", "512", "--texture-size", "64", "--faces",
                                 "2000", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x.glb").read_bytes()[:4] == b"glTF"
    # The pipeline's own device object, not None (which means "the CPU" whatever the pipeline ran on).
    assert len(devices) == 1 and devices[0] is not None and str(devices[0]) == "cpu"
