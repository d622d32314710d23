"""The `llava-fa` command line: one Typer app holding the commands of the sibling modules.

The command modules define plain functions and import nothing from here, so this is the only
module that knows them all; a new command is a function in its own module and one line below.
Importing the app stays cheap: the commands import torch, transformers and the methods when they run.
"""

from __future__ import annotations

import sys

import typer

from llava_fa.assets import AssetError
from llava_fa.commands import bench, chat, compress, demo, export, testbed
from llava_fa.commands import eval as evaluate
from llava_fa.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Compress multimodal models after training: LLaVA-FA, SAB-LVLM and baselines.")
app.command("eval")(evaluate.eval_command)
app.command("bench")(bench.bench)
app.command("chat")(chat.chat)
app.command("compress", cls=compress.CompressCommand)(compress.compress)
app.command("demo")(demo.demo)
app.command("export")(export.export)

testbed_app = typer.Typer(no_args_is_help=True, help=testbed.HELP)
testbed_app.command("fetch")(testbed.fetch)
testbed_app.command("build")(testbed.build)
app.add_typer(testbed_app, name="testbed")


def main() -> None:
    """The `llava-fa` entry point: input errors become one line on stderr and exit code 2."""
    try:
        app()
    except (UserError, AssetError, FileNotFoundError, ValueError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
