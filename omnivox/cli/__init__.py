"""The `omnivox` command line. Each topic registers its commands on `app` from its own module."""

import typer

app = typer.Typer(
    name="omnivox",
    help="TRELLIS.2 in pure Python + PyTorch: O-Voxel conversion, 3D generation and training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help and one-line usage errors: rich's boxes cost ~0.1-0.25 s of imports per command (issue 25).
    rich_markup_mode=None,
)

# Command modules: importing one registers its commands on `app`. Keep their top-level imports light.
from omnivox.cli import ovoxel_commands  # noqa: E402,F401
from omnivox.cli import convert_commands  # noqa: E402,F401
from omnivox.cli import export_commands  # noqa: E402,F401
from omnivox.cli import data_commands  # noqa: E402,F401
from omnivox.cli import render_commands  # noqa: E402,F401
from omnivox.cli import generate_commands  # noqa: E402,F401
from omnivox.cli import app_commands  # noqa: E402,F401
from omnivox.cli import train_commands  # noqa: E402,F401
