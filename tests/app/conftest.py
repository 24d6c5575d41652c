"""Fixtures for the app tests: one tiny random-weight weights folder per session, and a server launcher."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.conftest import HANG_GUARD_S

CROWN = "images/0a34fae7ba57cb8870df5325b9c30ea474def1b0913c19c596655b85a79fdee4.webp"  # RGBA, 774x774
CAR = "images/ToyCar_screenshot_large.jpg"  # RGB, 1870x1033, 670 KB


@pytest.fixture(scope="session")
def test_weights(tmp_path_factory) -> Path:
    """A tiny TRELLIS.2 weights folder (image to 3D and texturing) written by `make_test_pipeline`."""
    from omnivox.pipelines.testing import make_test_pipeline

    return make_test_pipeline(tmp_path_factory.mktemp("weights"), texturing=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A command-line server started in its own process on a free loopback port (`url`), with its log."""

    def __init__(self, args: list, log: Path, ready_path: str, timeout: float = HANG_GUARD_S):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", "from omnivox.cli import app; app()", *args,
                                          "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready after {timeout} s:\n{self.log_text()}")
            time.sleep(0.25)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
