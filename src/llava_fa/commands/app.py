"""The `llava-fa` command line: one Typer app holding the commands of the sibling modules.

The command modules define plain functions and import nothing from here, so this is the only
module that knows them all; a new command is a function in its own module and one line below.
Importing the app stays cheap: the commands import torch, transformers and the methods when they run.
"""

from __future__ import annotations

import errno
import gc
import sys

import typer

from llava_fa.assets import AssetError
from llava_fa.commands import allocate, bench, bench_decode, chat, compress, demo, export, testbed
from llava_fa.commands import eval as evaluate
from llava_fa.commands.common import CleanHelpCommand
from llava_fa.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Compress multimodal models after training: LLaVA-FA, SAB-LVLM and baselines.")
app.command("eval", cls=CleanHelpCommand)(evaluate.eval_command)
app.command("allocate", cls=CleanHelpCommand)(allocate.allocate)
app.command("bench", cls=CleanHelpCommand)(bench.bench)
app.command("bench-decode", cls=CleanHelpCommand)(bench_decode.bench_decode)
app.command("chat", cls=CleanHelpCommand)(chat.chat)
app.command("compress", cls=compress.CompressCommand)(compress.compress)
app.command("demo", cls=CleanHelpCommand)(demo.demo)
app.command("export", cls=CleanHelpCommand)(export.export)

testbed_app = typer.Typer(no_args_is_help=True, help=testbed.HELP)
testbed_app.command("fetch", cls=CleanHelpCommand)(testbed.fetch)
testbed_app.command("build", cls=CleanHelpCommand)(testbed.build)
app.add_typer(testbed_app, name="testbed")


# OSErrors that are the user's situation, not a bug: one line with the fix instead of a traceback.
_OS_FIXES = {errno.ENOSPC: "free space on that disk or write elsewhere",
             errno.EDQUOT: "free space within your quota or write elsewhere",
             errno.EACCES: "choose a path you can read and write, or change its permissions",
             errno.EPERM: "choose a path you can read and write, or change its permissions",
             errno.EROFS: "choose a path on a writable file system"}


def main() -> None:
    """The `llava-fa` entry point: input errors become one line on stderr and exit code 2."""
    try:
        app()
    except (UserError, AssetError, FileNotFoundError, ValueError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except OSError as e:
        if e.errno not in _OS_FIXES:
            raise
        typer.secho(f"error: {e}. Fix: {_OS_FIXES[e.errno]}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    finally:
        # The process ends here (typer exits even on success). Interpreter shutdown runs full garbage
        # collections over every object still alive, mostly the millions that importing torch and
        # transformers made: 1.1-1.3 s of every command, measured (0.2 s with this). Those collections
        # skip frozen objects; what they would free, the process's end frees. Every output file is
        # closed and in place by now (atomic writes), so no finalizer is left with work to do.
        gc.freeze()
