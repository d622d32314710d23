"""What several commands share: help texts of common options, clean help pages, checks of the files a
command writes, and how library errors reach the user."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from typer.core import TyperCommand

from llava_fa.errors import LlavaFAError, UserError

DTYPE_HELP = ("auto (float32 on CPU, the checkpoint's own dtype on CUDA), float32, tf32 (float32 with TF32 matmuls "
              "on CUDA), bfloat16, float16.")
FORWARD_MODE_HELP = ("How compressed layers run: auto (default: compressed in GPU memory, the dense weight "
                     "cached on CPU), cached, dequant, fused (affine), spectral (fourier).")

# Options that `compress` and `allocate` declare alike (one definition, the same help everywhere).
TARGET_OPTION = typer.Option([], "--target", "-t", metavar="PATTERN", show_default="the language decoder's linear "
                             "layers", help="Module name, class name or re:REGEX (repeatable).")
IGNORE_OPTION = typer.Option([], "--ignore", "-i", metavar="PATTERN", show_default=False,
                             help="Pattern of modules to leave alone (repeatable).")
CALIB_OPTION = typer.Option(None, "--calib", show_default="auto", help="auto, wikitext, builtin, easyvqa, mixed or "
                            "a .txt path.")
NSAMPLES_OPTION = typer.Option(None, "--nsamples", show_default="32", help="Calibration samples, 0: none.")
SEQLEN_OPTION = typer.Option(None, "--seqlen", show_default="256", help="Tokens per text sample.")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, cuda:1, ...")


@contextmanager
def reported_as_user_errors() -> Iterator[None]:
    """Turn the library's input errors into UserErrors: one line on stderr, exit code 2, no traceback."""
    try:
        yield
    except LlavaFAError as e:
        raise UserError(str(e)) from None


class CleanHelpCommand(TyperCommand):
    """A command whose help shows no type placeholder (`<bool>`) on flags, which take no value.

    Typer shows an option's metavar in place of its type; an empty one leaves the column blank."""

    def format_help(self, ctx, formatter) -> None:
        for param in self.get_params(ctx):
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        super().format_help(ctx, formatter)


def check_output_file(path: Optional[Path], what: str, inputs: tuple[Optional[Path], ...] = ()) -> None:
    """A file a command writes when it is done (--report, --json), checked before any work: not a
    folder, not inside an input model folder, and in a place that can be written."""
    if path is None:
        return
    from llava_fa.io.files import check_apart, check_writable

    if Path(path).is_dir():
        raise UserError(f"{what} {path} is a folder. Fix: give a file path for {what}")
    with reported_as_user_errors():
        for source in inputs:
            if source is not None:
                check_apart(Path(path), Path(source), what)
        check_writable(Path(path), what)


def check_model_inputs(model_dir: Path, forward_mode: Optional[str] = None) -> None:
    """A model folder a command will load (config.json and the other JSON files accepted, the forward
    mode available for its compressed layers), checked before anything loads."""
    from llava_fa.io.checkpoint import check_forward_mode, check_model_folder

    with reported_as_user_errors():
        check_model_folder(model_dir)
        if forward_mode is not None:
            check_forward_mode(model_dir, forward_mode)


def check_text_source(text: Optional[str], needed: bool = True) -> None:
    """The perplexity text a command will read (--text FILE, 'datasets' or the shared WikiText-2 file)."""
    from llava_fa.evaluation.perplexity import DATASETS_SOURCE, default_text_path, load_text

    if not needed or text == DATASETS_SOURCE:
        return
    path = Path(text) if text is not None else default_text_path()
    if not path.is_file():
        try:
            load_text(text)  # raises its own message, which names the fixes
        except FileNotFoundError as e:
            raise UserError(str(e)) from None
