"""`llava-fa compress MODEL --method NAME --out DIR`: compress a model's linear layers."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from llava_fa.commands.common import (CALIB_OPTION, DEVICE_OPTION, DTYPE_HELP, IGNORE_OPTION, NSAMPLES_OPTION,
                                      SEQLEN_OPTION, TARGET_OPTION, CleanHelpCommand, check_output_file,
                                      reported_as_user_errors)
from llava_fa.errors import UserError

if TYPE_CHECKING:
    from llava_fa.recipe import Recipe

METHOD_HELP = "Compression method."
BY_METHOD = "the method's"  # the default of an option several methods share


def print_method_help(name: Optional[str]) -> None:
    """`--help-method NAME`: the method's options, then exit; runs before --out or MODEL are checked."""
    if name is None:
        return
    from llava_fa.methods.base import describe_method

    with reported_as_user_errors():
        text = describe_method(name)
    typer.echo(text)
    raise typer.Exit(0)


class CompressCommand(CleanHelpCommand):
    """The compress command, whose `--method` help lists the available methods.

    Listing them imports every method (and torch), so it happens only when help is shown, not when
    the command line starts."""

    def format_help(self, ctx, formatter) -> None:
        from llava_fa.methods.base import available_methods

        for param in self.params:
            if param.name == "method":
                param.help = (f"{METHOD_HELP} One of: {', '.join(available_methods())}. "
                              f"`--help-method NAME` prints a method's -O options.")
        super().format_help(ctx, formatter)


# --bits, --group-size, ... are shared by several methods: each is passed on only when given, and a
# method without that option rejects it (e.g. --act-order with rtn). Others go through --option.
def compress(
    model: str = typer.Argument(..., help="Hugging Face model directory, or `testbed`."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the compressed checkpoint to."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help=METHOD_HELP, show_default="rtn"),
    # Acts in its callback, before MODEL and --out are required; the function never receives it.
    help_method: Optional[str] = typer.Option(None, "--help-method", metavar="NAME", is_eager=True,
                                              callback=print_method_help, expose_value=False,
                                              help="Print method NAME's -O options (meaning, default); exit."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML/JSON recipe; flags override it."),
    bits: Optional[int] = typer.Option(None, "--bits", help="Bits per code, 1..8."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="Columns per group (-1: one per row)."),
    sym: Optional[bool] = typer.Option(None, "--sym/--asym", help="Symmetric grid.", show_default=BY_METHOD),
    damp: Optional[float] = typer.Option(None, "--damp", help="GPTQ damping, fraction of mean diag(H)."),
    block_size: Optional[int] = typer.Option(None, "--block-size", help="GPTQ columns per lazy-update block."),
    act_order: Optional[bool] = typer.Option(None, "--act-order/--no-act-order",
                                             help="GPTQ: columns by decreasing H_jj.", show_default=BY_METHOD),
    option: list[str] = typer.Option([], "--option", "-O", metavar="KEY=VALUE", show_default=False,
                                     help="Any method option (repeatable); --help-method NAME lists them."),
    target: list[str] = TARGET_OPTION,
    ignore: list[str] = IGNORE_OPTION,
    vision: Optional[bool] = typer.Option(None, "--vision/--no-vision", help="Compress the vision tower too.",
                                          show_default="no-vision"),
    projector: Optional[bool] = typer.Option(None, "--projector/--no-projector", help="Compress the projector too.",
                                             show_default="no-projector"),
    calib: Optional[str] = CALIB_OPTION,
    nsamples: Optional[int] = NSAMPLES_OPTION,
    seqlen: Optional[int] = SEQLEN_OPTION,
    seed: Optional[int] = typer.Option(None, "--seed", show_default="0", help="Calibration sampling seed."),
    device: str = DEVICE_OPTION,
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", show_default=".OUT.work", help="Shards for resuming."),
    restart: bool = typer.Option(False, "--restart", help="Discard the shards of an earlier run."),
    stream: bool = typer.Option(True, "--stream/--no-stream",
                                help="Read each decoder layer from the safetensors files at its turn and write it "
                                     "once compressed (memory: about one layer); --no-stream loads the whole model."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace --out if it exists and llava-fa wrote it (never another folder)."),
    report_json: Optional[Path] = typer.Option(None, "--report", help="Also write the per-layer report here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print the full per-layer table, not the summary."),
) -> None:
    """Compress the language decoder's linear layers (and optionally vision tower / projector)."""
    from llava_fa.pipeline.distributed import launched_rank
    from llava_fa.runtime import quiet_transformers

    rec = build_recipe(recipe, method, dict(bits=bits, group_size=group_size, sym=sym, damp=damp,
                                            block_size=block_size, act_order=act_order), option, target, ignore,
                       vision, projector, calib, nsamples, seqlen, seed)
    dev = check_compress_inputs(model, rec, out, device, dtype, overwrite, work_dir, report_json)
    quiet_transformers()
    writer = launched_rank() == 0  # under torchrun, rank 0 alone prints and writes
    err = Console(stderr=True, quiet=quiet or not writer, soft_wrap=True)  # messages stay one line (greppable logs)
    err.print(f"compressing {model} with {rec.method} on {dev}")
    figure = ReportFigure()
    report = run_with_progress(err, model, rec, out, device=str(dev), dtype=dtype, work_dir=work_dir,
                               restart=restart, overwrite=overwrite, stream=stream, on_report=figure.draw)
    if writer:
        write_reports(err, report, out, report_json, verbose, figure)


class ReportFigure:
    """The report's PNG, drawn by a thread from the moment the report is complete: matplotlib's import
    and drawing (about 2 s) then overlap the checkpoint's save, whose copy, hashing and fsync mostly
    run outside the interpreter lock, instead of following it."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llava-fa-figure")  # no thread until `draw`
        self._png: Future | None = None

    def draw(self, report: dict) -> None:
        from llava_fa.pipeline.report import render_report_plot

        self._png = self._pool.submit(render_report_plot, report)

    def png(self) -> bytes:
        """The PNG's bytes, once drawn (the drawing's own error, if any, raised here)."""
        try:
            return self._png.result()
        finally:
            self._pool.shutdown()


def write_reports(err: Console, report: dict, out: Path, report_json: Optional[Path], verbose: bool,
                  figure: ReportFigure) -> None:
    """The report as --report JSON and its figure as a PNG beside the checkpoint; on the terminal, its
    summary (or, `verbose`, every layer) and where the files are."""
    from llava_fa.io.files import atomic_write_bytes, write_json_atomic
    from llava_fa.pipeline.report import REPORT_PLOT

    if report_json is not None:
        write_json_atomic(report_json, report)
    with reported_as_user_errors():
        atomic_write_bytes(out / REPORT_PLOT, figure.png())
    if not err.quiet:
        Console().print(report_table(report) if verbose else summary_table(report))
    s = report["summary"]
    err.print(f"wrote {out}: {s['layers']} layers, {s['bpw']:.4f} bits per weight, "
              f"{report['wall_seconds']:.1f} s; per-layer report: {out / 'compress_report.json'} and "
              f"{out / REPORT_PLOT}")


def check_compress_inputs(model: str, rec: Recipe, out: Path, device: str, dtype: str, overwrite: bool,
                          work_dir: Optional[Path], report_json: Optional[Path]):
    """Every flag and output of `llava-fa compress`, checked before anything loads; returns the device."""
    from llava_fa.io.checkpoint import check_model_folder
    from llava_fa.pipeline import check_options, resolve_model_path
    from llava_fa.runtime import resolve_device, resolve_dtype

    with reported_as_user_errors():
        dev = resolve_device(device)
        resolve_dtype(dtype, dev)
        path = resolve_model_path(model)
        check_options(rec, out, overwrite, model_path=path, work_dir=work_dir)
        check_model_folder(path)
    check_output_file(report_json, "--report", (path,))
    return dev


def run_with_progress(err: Console, model: str, rec: Recipe, out: Path, **pipeline_options) -> dict:
    """`compress_checkpoint` under a progress bar on `err`, its warnings printed there too."""
    from llava_fa.pipeline import compress_checkpoint

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("layers"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err,
                        disable=err.quiet)
    warning_printer = _RichWarnings(err)
    logging.getLogger("llava_fa").addHandler(warning_printer)
    try:
        with progress:
            task = progress.add_task("loading and calibrating", total=None)

            def on_block(done: int, total: int, label: str) -> None:
                progress.update(task, description=f"{label} done (block {done}/{total})")

            try:
                with reported_as_user_errors():
                    return compress_checkpoint(model, rec, out, on_info=err.print, on_block=on_block,
                                               on_row=lambda row: progress.advance(task),
                                               on_layers=lambda n: progress.update(task, total=n),
                                               **pipeline_options)
            except KeyboardInterrupt:
                progress.stop()
                err.print("interrupted: finished layers are kept in the work dir; run the same command again to "
                          "resume (or pass --restart to start over)")
                raise typer.Exit(130) from None
    finally:
        logging.getLogger("llava_fa").removeHandler(warning_printer)


def build_recipe(recipe_file, method, flags, options, targets, ignore, vision, projector, calib, nsamples, seqlen,
                 seed) -> Recipe:
    """The recipe file (or the defaults) with the command line's flags on top."""
    from llava_fa.recipe import Recipe

    with reported_as_user_errors():
        rec = Recipe.from_file(recipe_file) if recipe_file is not None else Recipe()
    if method is not None:
        if recipe_file is not None and method != rec.method:
            rec.options, rec.layer_options = {}, {}  # the file's options belong to its method
        rec.method = method
    rec.options.update({k: v for k, v in flags.items() if v is not None})
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option expects KEY=VALUE, got {item!r}")
        rec.options[key.strip()] = value.strip()
    if targets:
        rec.targets = list(targets)
    if ignore:
        rec.ignore = list(rec.ignore) + list(ignore)
    for key, value in (("vision", vision), ("projector", projector)):
        if value is not None:
            setattr(rec, key, value)
    cal = rec.calibration
    for key, value in (("source", calib), ("nsamples", nsamples), ("seqlen", seqlen), ("seed", seed)):
        if value is not None:
            setattr(cal, key, value)
    return rec


WORST_LAYERS = 5  # rows of the terminal summary


def summary_table(report: dict) -> Table:
    """The totals and the layers with the largest error (activation error, else weight error)."""
    rows = report["layers"]

    def error(r: dict) -> float:
        return r["act_error"] if r["act_error"] is not None else r["rel_error"]

    worst = sorted(rows, key=error, reverse=True)[:WORST_LAYERS]
    short = {**report, "layers": worst}
    table = report_table(short, prefix=_common_prefix([r["name"] for r in rows]))
    table.title = f"{report['method']}: the {len(worst)} layers with the largest error, of {len(rows)}"
    table.caption = (f"{table.caption + '; ' if table.caption else ''}all {len(rows)} layers: --verbose, "
                     f"compress_report.json / .png beside the checkpoint")
    return table


def report_table(report: dict, prefix: str | None = None) -> Table:
    names = [r["name"] for r in report["layers"]]
    prefix = _common_prefix(names) if prefix is None else prefix
    table = Table(title=f"{report['method']} {report['method_config']}",
                  caption=f"layer names after {prefix!r}" if prefix else None)
    for col, justify in (("layer", "left"), ("shape", "right"), ("method", "left"), ("bpw", "right"),
                         ("rel err", "right"), ("act err", "right"), ("s", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for r in report["layers"]:
        act = "-" if r["act_error"] is None else f"{r['act_error']:.4f}"
        table.add_row(r["name"][len(prefix):], f"{r['out_features']}x{r['in_features']}", r["method"],
                      f"{r['bpw']:.3f}", f"{r['rel_error']:.4f}", act, f"{r['seconds']:.2f}")
    s = report["summary"]
    act = "-" if s["mean_act_error"] is None else f"{s['mean_act_error']:.4f}"
    table.add_row(f"total ({s['layers']} layers)", f"{s['weights']:,}", report["method"], f"{s['bpw']:.3f}",
                  f"{s['mean_rel_error']:.4f}", act, f"{s['seconds']:.1f}", style="bold")
    return table


def _common_prefix(names: list[str]) -> str:
    """The longest shared dotted prefix (ending in "."), to keep the table narrow."""
    if not names:
        return ""
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common) + "." if common else ""


class _RichWarnings(logging.Handler):
    """Prints the toolkit's warnings on the command's console, so they do not break the progress bar."""

    def __init__(self, console: Console):
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(f"[yellow]warning:[/] {record.getMessage()}")
