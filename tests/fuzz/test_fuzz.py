"""Fuzz regression: hostile variants of real files (`tests/fuzz/mutants.py`, seeded) through info, convert, export
and render. Every case ends in a clean error (exit 1, one line ``omnivox CMD: ...``, no traceback) or a valid
output, and no file outside the case's folder is opened (audit hook). Bombs run in one subprocess under an
address-space cap (``RLIMIT_AS``) and a timeout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.mutants import OUTSIDE_NAME, Case, cases

REPO = Path(__file__).resolve().parents[2]
SEED = 17
MEMORY_CAP = 6 * 2**30  # address space of the bomb subprocess (torch and numba map ~2-3 GiB on import)
HANG_GUARD_S = 240
MUST_LOAD = {"obj_latin1"}  # legitimate files among the mutants

_OPENED: list = []
_RECORDING = [False]


def _audit(event, args):
    if _RECORDING[0] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)


def _arguments(command: str, entry: Path, out: Path) -> list:
    return {
        "info": ["info", entry],
        "convert": ["convert", entry, out / "o.vxz", "-r", "16", "--device", "cpu"],
        "export": ["export", entry, out / "o.glb", "--device", "cpu", "--texture-size", "64"],
        "render": ["render", entry, "-o", out / "o.png", "-r", "16", "--views", "1", "--device", "cpu"],
        "render_voxels": ["render", entry, "-o", out / "o.png", "--voxels", "-r", "16", "--views", "1", "--device",
                          "cpu"],
    }[command]


def _message_lines(output: str) -> list:
    output = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", output)  # terminal cursor moves
    output = re.sub(r"[\w ]+:\s+\d+%\|[^|]*\|[^\]]*\]", "", output)  # progress-bar redraws
    return [line for line in re.split(r"[\r\n]", output) if line.strip()]


def _judge(case: Case, command: str, code: int, output: str, out: Path) -> str:
    """'' when the outcome is acceptable, else what is wrong."""
    verb = "render" if command.startswith("render") else command
    if "Traceback" in output:
        return f"traceback: {output[-400:]}"
    if code == 1:
        lines = [line for line in _message_lines(output) if not line.startswith("Warning")]
        if len(lines) != 1 or not lines[0].startswith(f"omnivox {verb}: "):
            return f"exit 1 without one clean line: {lines[-3:]}"
        return ""
    if code != 0:
        return f"exit code {code}: {output[-300:]}"
    if command == "convert":
        from omnivox.ovoxel.io import read_vxz

        coords, _ = read_vxz(out / "o.vxz")
        return "" if len(coords) else "convert wrote an empty file without --allow-empty"
    produced = {"export": "o.glb", "render": "o.png", "render_voxels": "o.png"}.get(command)
    if produced and not (out / produced).is_file():
        return f"exit 0 but no {produced}"
    return ""


def _materialise(case: Case, folder: Path) -> tuple:
    asset, outside, out = folder / "asset", folder / "outside", folder / "out"
    for path in (asset, outside, out):
        path.mkdir(parents=True)
    (outside / OUTSIDE_NAME).write_bytes(bytes(range(256)) * 4)
    (outside / "x.mtl").write_text("newmtl m\nKd 1 0 0\n")
    for name, data in case.files.items():
        (asset / name).write_bytes(data.replace(b"{outside}", str(outside).encode()))
    for name, target in case.symlinks.items():
        (asset / name).symlink_to(target.replace("{outside}", str(outside)))
    return asset / case.entry, outside, out


@pytest.fixture(scope="module")
def fuzz_cases(tmp_path_factory):
    from typer.testing import CliRunner

    from omnivox.cli import app
    from tests.conftest import _assets_dir

    assets = _assets_dir()

    folder = tmp_path_factory.mktemp("fuzz_source")
    result = CliRunner().invoke(app, ["convert", str(assets / "mesh" / "joined_tetrahedra.obj"),
                                      str(folder / "real.vxz"), "-r", "16", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    vxz = (folder / "real.vxz").read_bytes()
    return cases(assets, vxz, SEED), vxz


def test_generator_is_seeded_and_covers_every_kind(fuzz_cases, assets):
    fuzz_cases, vxz = fuzz_cases
    assert [(c.name, c.files) for c in cases(assets, vxz, SEED)] == [(c.name, c.files) for c in fuzz_cases]
    assert [c.files for c in cases(assets, vxz, SEED + 1)] != [c.files for c in fuzz_cases]
    names = " ".join(c.name for c in fuzz_cases)
    for kind in ("truncate", "bitflip", "zeros", "huge_count", "nan", "index", "deep_json", "traversal", "bomb",
                 "_as_"):
        assert kind in names, kind
    assert 60 <= len(fuzz_cases) <= 150


def test_every_case_ends_cleanly_without_reading_outside(fuzz_cases, tmp_path):
    from typer.testing import CliRunner

    from omnivox.cli import app

    problems = []
    for case in fuzz_cases[0]:
        if case.bomb:
            continue
        entry, outside, out = _materialise(case, tmp_path / case.name)
        for command in case.commands:
            _OPENED.clear()
            _RECORDING[0] = True
            try:
                result = CliRunner().invoke(app, [str(a) for a in _arguments(command, entry, out)])
            finally:
                _RECORDING[0] = False
            output = result.output
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                output += f"\nTraceback (uncaught {type(result.exception).__name__}: {result.exception})"
            problem = _judge(case, command, result.exit_code, output, out)
            if any(k in case.name for k in ("nan", "inf")) and result.exit_code != 1:
                problem += " non-finite values were accepted"
            if any(k in case.name for k in ("traversal", "mtllib", "map_")) and (
                    result.exit_code != 1 or not re.search(r"refused|never fetched", output)):
                problem += " an outside reference was not refused"
            if case.name in MUST_LOAD and result.exit_code != 0:
                problem += " a legitimate file was refused"
            leaked = [p for p in _OPENED if p.startswith(str(outside)) or p == "/etc/hostname"]
            if leaked:
                problem += f" read outside its folder: {leaked}"
            if problem:
                problems.append(f"{case.name} / {command}: {problem}")
    assert not problems, "\n".join(problems)


_BOMB_SCRIPT = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from typer.testing import CliRunner
from omnivox.cli import app
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args)
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += "\\nTraceback (uncaught %s: %s)" % (type(result.exception).__name__, result.exception)
    print(json.dumps([result.exit_code, output]), flush=True)
"""


def test_bombs_end_cleanly_under_a_memory_cap(fuzz_cases, tmp_path):
    runs = []
    for case in fuzz_cases[0]:
        if case.bomb:
            entry, _, out = _materialise(case, tmp_path / case.name)
            runs.extend((case, command, out, [str(a) for a in _arguments(command, entry, out)])
                        for command in case.commands)
    assert runs
    completed = subprocess.run(
        [sys.executable, "-c", _BOMB_SCRIPT.format(cap=MEMORY_CAP), json.dumps([r[3] for r in runs])],
        capture_output=True, text=True, timeout=HANG_GUARD_S, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    results = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("[")]
    assert len(results) == len(runs), completed.stderr[-2000:]
    problems = []
    for (case, command, out, _), (code, output) in zip(runs, results):
        problem = _judge(case, command, code, output, out) or ("" if code == 1 else "a bomb was accepted")
        if problem:
            problems.append(f"{case.name} / {command}: {problem}")
    assert not problems, "\n".join(problems)
