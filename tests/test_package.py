"""Package-level behaviour that every command relies on."""

import os
import subprocess
import sys
from pathlib import Path

import omnivox


def test_numba_cache_lives_outside_the_package():
    # numba's default cache folders inside an installed package shadowed a later editable install.
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    code = "import omnivox, os; print(os.environ['NUMBA_CACHE_DIR'])"
    folder = Path(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                 check=True).stdout.strip())
    package = Path(omnivox.__file__).resolve().parent
    assert folder.is_absolute() and package not in folder.resolve().parents
    env["NUMBA_CACHE_DIR"] = "/tmp/mine"  # a caller's choice wins
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "/tmp/mine"
