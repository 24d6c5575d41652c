"""The typer `app` of the `omnivox` command line.

The command modules (``*_commands.py``) register their commands on it with ``from omnivox.cli.main import app``;
``omnivox/cli/__init__.py`` imports them all and re-exports `app` (the console-script entry point).
"""

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
