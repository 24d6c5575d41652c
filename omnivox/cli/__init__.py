"""The `omnivox` command line: `app` (defined in `main.py`) with every topic's commands registered on it.

Each command module imports `app` from `omnivox.cli.main` (not from this package, which imports them: no cycle)
and registers its commands; importing them here makes ``omnivox.cli.app`` the whole command line.
"""

from omnivox.cli.main import app

# Command modules: importing one registers its commands on `app`. Keep their top-level imports light.
from omnivox.cli import ovoxel_commands  # noqa: E402,F401
from omnivox.cli import convert_commands  # noqa: E402,F401
from omnivox.cli import export_commands  # noqa: E402,F401
from omnivox.cli import data_commands  # noqa: E402,F401
from omnivox.cli import render_commands  # noqa: E402,F401
from omnivox.cli import generate_commands  # noqa: E402,F401
from omnivox.cli import app_commands  # noqa: E402,F401
from omnivox.cli import train_commands  # noqa: E402,F401

__all__ = ["app"]
