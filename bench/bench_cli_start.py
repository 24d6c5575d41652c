"""How long `omnivox` commands take to answer `--help`, `info` and argument errors, cold and warm.

Usage:
    python bench/bench_cli_start.py [--repeat 5] [--cold] [--baseline DIR] [--json OUT.json]

Every command runs in a fresh interpreter, as from a shell: ``python -c "from omnivox.cli import app; app()"``
with the command's arguments (what the ``omnivox`` console script does, minus the launcher of the Python
install, e.g. a pyenv shim). Reported per command: whether torch or numba got imported, the *cold* time (the
first run after ``sync; echo 3 > /proc/sys/vm/drop_caches``, with ``--cold``; needs root and drops the page
cache of the whole machine), the median and best of ``--repeat`` *warm* runs, and the warm runs' median CPU
time (user + system of the child): on a loaded machine the wall time grows with the load, the CPU time much
less, so it estimates the wall time on an idle one.

Baselines in the same run: ``python -c pass`` (the interpreter alone) and ``import torch`` / ``import numba``
(what every command paid before), and, with ``--baseline DIR``, the same commands on another checkout's
``omnivox`` package (e.g. ``git archive <commit> omnivox | tar -x -C DIR``), put first on ``PYTHONPATH``.
Before the cold runs, every command runs once so both trees have their bytecode caches written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Runs the CLI in-process and reports the heavy modules it imported on the last line of stderr.
DRIVER = """
import sys, json
import omnivox
from omnivox.cli import app
code = 0
try:
    app(sys.argv[1:], prog_name="omnivox")
except SystemExit as exit:
    code = exit.code or 0
heavy = sorted(name for name in ("torch", "numba") if name in sys.modules)
print("\\n@@" + json.dumps({"code": code, "heavy": heavy, "package": omnivox.__file__}), file=sys.stderr)
"""
REFERENCES = [("python -c pass (interpreter)", "pass"), ("import numba", "import numba"),
              ("import torch", "import torch")]


def commands(work: Path) -> list:
    """(label, arguments, target seconds) of the light paths."""
    vxz, folder = work / "small.vxz", work / "folder"
    return [
        ("omnivox --help", ["--help"], 0.5),
        ("omnivox convert --help", ["convert", "--help"], 0.5),
        ("omnivox info small.vxz", ["info", vxz], 1.0),
        ("omnivox convert missing.glb out.vxz", ["convert", work / "missing.glb", work / "out.vxz"], 1.0),
        ("omnivox export small.vxz FOLDER", ["export", vxz, folder], 1.0),
        ("omnivox render FOLDER -o x.png", ["render", folder, "-o", work / "x.png"], 1.0),
        ("omnivox generate img.png -w NOWHERE -o x.glb", ["generate", work / "img.png", "-w", work / "nowhere", "-o",
                                                          work / "x.glb"], 1.0),
        ("omnivox train -c missing.json ...", ["train", "-c", work / "missing.json", "-o", work / "run", "-d", folder],
         1.0),
    ]


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(code_or_args, pythonpath: str | None, cwd: Path) -> tuple:
    """(wall seconds, CPU seconds, report or None) of one fresh interpreter, started in ``cwd`` (``-c`` puts it
    first on the path, so it must not hold an ``omnivox`` package)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    if isinstance(code_or_args, str):
        argv = [sys.executable, "-c", code_or_args]
    else:
        argv = [sys.executable, "-c", DRIVER, *map(str, code_or_args)]
    start, cpu_start = time.perf_counter(), _children_cpu()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu_start
    report = None
    if not isinstance(code_or_args, str):
        _, _, tail = done.stderr.rpartition("\n@@")
        report = json.loads(tail) if tail else {"error": done.stderr[-500:]}
    return seconds, cpu, report


def measure(what, pythonpath, repeat: int, cold: bool, cwd: Path) -> dict:
    row = {}
    if cold:
        drop_caches()
        row["cold_s"], _, row["report"] = run_once(what, pythonpath, cwd)
    warm, cpu = [], []
    for _ in range(repeat):
        seconds, cpu_seconds, report = run_once(what, pythonpath, cwd)
        warm.append(seconds)
        cpu.append(cpu_seconds)
        row.setdefault("report", report)
    row["warm_median_s"], row["warm_best_s"] = statistics.median(warm), min(warm)
    row["warm_cpu_median_s"] = statistics.median(cpu)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="also time a run after dropping the page cache (root)")
    parser.add_argument("--baseline", type=Path, help="folder holding another checkout's omnivox package")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    from omnivox.ovoxel.io import write_vxz

    work = Path(tempfile.mkdtemp(prefix="omnivox-cli-start-"))
    write_vxz(work / "small.vxz", np.array([[0, 0, 0], [1, 0, 0], [3, 2, 1]]),
              {"base_color": np.full((3, 3), 200, np.uint8)})
    (work / "folder").mkdir()
    (work / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    trees = {"now": None}
    if args.baseline is not None:
        trees["baseline"] = str(args.baseline.resolve())
    cases = commands(work)

    for pythonpath in trees.values():  # bytecode caches written, so cold runs measure imports, not compiling
        for _, argv, _ in cases:
            report = run_once(argv, pythonpath, work)[2]
            expected = Path(pythonpath or Path(__file__).resolve().parents[1]) / "omnivox" / "__init__.py"
            if Path(report.get("package", "")) != expected:
                raise SystemExit(f"{argv}: ran {report.get('package')}, expected {expected}")
    results = {"machine": f"{platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()}",
               "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M %Z"), "rows": []}
    for label, code in REFERENCES:
        results["rows"].append({"command": label, "target_s": None, "now": measure(code, None, args.repeat,
                                                                                   args.cold, work)})
    for label, argv, target in cases:
        row = {"command": label, "target_s": target}
        for name, pythonpath in trees.items():
            row[name] = measure(argv, pythonpath, args.repeat, args.cold, work)
        results["rows"].append(row)
    results["load_after"] = os.getloadavg()

    def cell(entry, key):
        return f"{entry[key]:.2f}" if entry and key in entry else "-"

    def heavy(entry):
        report = (entry or {}).get("report") or {}
        return ", ".join(report.get("heavy", [])) or "none"

    columns = ["command", "target s", "imports", "cold s", "warm median s", "warm best s", "warm CPU s"]
    if "baseline" in trees:
        columns += ["baseline imports", "baseline cold s", "baseline warm median s", "baseline warm CPU s"]
    print(f"{results['machine']}; Python {results['python']}; {results['date']}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in results["rows"]:
        now, base = row["now"], row.get("baseline")
        cells = [row["command"], f"{row['target_s']:g}" if row["target_s"] else "-",
                 heavy(now) if now.get("report") else "-", cell(now, "cold_s"), cell(now, "warm_median_s"),
                 cell(now, "warm_best_s"), cell(now, "warm_cpu_median_s")]
        if "baseline" in trees:
            cells += [heavy(base) if base else "-", cell(base, "cold_s"), cell(base, "warm_median_s"),
                      cell(base, "warm_cpu_median_s")]
        print("| " + " | ".join(cells) + " |")
    print(f"load average after: {results['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
