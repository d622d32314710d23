"""`llava-fa bench`: a sweep of compression runs with one JSON record each, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from llava_fa.commands.common import check_model_inputs, check_text_source, reported_as_user_errors


def records_table(records: list[dict]) -> Table:
    """One row per bench record: the headline numbers of each run."""
    table = Table(title="llava-fa bench")
    for col in ("run", "method", "bpw", "PPL", "easy-VQA", "KL", "top-1", "compress s", "peak MiB"):
        table.add_column(col, justify="left" if col in ("run", "method") else "right")
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    for r in records:
        table.add_row(r["name"], r["method"], fmt(r["bpw"], ".3f"), fmt(r["perplexity"], ".2f"),
                      fmt(r["vqa_accuracy"], ".2%"), fmt(r["kl"], ".3f"), fmt(r["top1_agreement"], ".2%"),
                      fmt(r["compress_seconds"], ".1f"), fmt(r["peak_memory_mib"], ".0f"))
    return table


def bench(
    runs: Path = typer.Argument(..., help="YAML/JSON list of runs: {name, method, options, nsamples}."),
    out: Path = typer.Option(..., "--out", help="Folder of records (NAME.json); existing records are skipped."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder.", show_default="the testbed"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="easy-VQA test questions (default: all)."),
    ppl_windows: Optional[int] = typer.Option(None, "--ppl-windows", min=0, help="Perplexity windows (default: all)."),
    seqlen: int = typer.Option(2048, "--seqlen", min=2, help="Perplexity window length."),
    text: Optional[str] = typer.Option(None, "--text", help="Perplexity text file.",
                                       show_default="the WikiText-2 test file"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    keep_models: bool = typer.Option(False, "--keep-models", help="Keep the compressed folders under OUT/models."),
) -> None:
    """Compress and evaluate every run of a list; one JSON record per run; resumes where it stopped."""
    from llava_fa.bench import check_runs, load_runs, run_bench
    from llava_fa.commands.testbed import default_testbed_dir, ensure_testbed
    from llava_fa.runtime import resolve_device

    err = Console(stderr=True)
    with reported_as_user_errors():  # every run and output, before the testbed is built or a model loads
        run_list = load_runs(runs)
        dev = resolve_device(device)
        check_text_source(text, needed=ppl_windows != 0)
        check_runs(run_list, model or default_testbed_dir(), out)
    if model is not None:
        check_model_inputs(model)
    with reported_as_user_errors():
        records = run_bench(model or ensure_testbed(), run_list, out, device=dev, limit=limit, ppl_windows=ppl_windows,
                            seqlen=seqlen, text_source=text, keep_models=keep_models, on_info=err.print)
    Console().print(records_table(records))
