"""The `llava-fa` command line. Each command group lives in `llava_fa/commands/`."""

from __future__ import annotations

import sys

import typer

from llava_fa.assets import AssetError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Compress multimodal models after training: LLaVA-FA, SAB-LVLM and baselines.")


class UserError(Exception):
    """A problem with the user's input; printed without a traceback, exit code 2."""


def _register() -> None:
    # Imported here so that `import llava_fa.cli` stays cheap and each group registers itself.
    from llava_fa.commands import eval as eval_cmd  # noqa: F401
    from llava_fa.commands import testbed  # noqa: F401
    from llava_fa.commands import bench, chat, compress, demo  # noqa: F401


def main() -> None:
    _register()
    try:
        app()
    except (UserError, AssetError, FileNotFoundError, ValueError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
