"""What `llava-fa compress` shows and writes: a short summary (the full table with --verbose), progress
counted in layers, and the report as a PNG beside the checkpoint."""

import json

import pytest
from rich.console import Console

import compress_fixtures as F
from llava_fa.commands.compress import WORST_LAYERS, report_table, summary_table
from llava_fa.pipeline.report import REPORT_PLOT, render_report_plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """A tiny LLaVA compressed once by the command (RTN, no calibration): its folder and output."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("report")
    dense = F.save_llava_dir(root / "dense")
    out = root / "q"
    proc = subprocess.run([sys.executable, "-m", "llava_fa", "compress", str(dense), "--method", "rtn", "--bits", "4",
                           "--group-size", "32", "--nsamples", "0", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, env={**__import__("os").environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    return dense, out, proc.stdout, proc.stderr


def _text(table) -> str:
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(table)
    return console.export_text()


def test_compress_prints_a_summary_and_writes_the_plot(compressed):
    _, out, stdout, stderr = compressed
    stdout, stderr = " ".join(stdout.split()), " ".join(stderr.split())  # tables and messages wrap
    report = json.loads((out / "compress_report.json").read_text())
    assert len(report["layers"]) == 14
    stages = report["stage_seconds"]  # where the time went, measured per stage
    assert {"load", "compress", "forward"} <= set(stages) and sum(stages.values()) <= report["wall_seconds"]
    assert "total (14 layers)" in stdout and f"the {WORST_LAYERS} layers with the largest error" in stdout
    assert "--verbose" in stdout
    assert "14 linear layers selected" in stderr and REPORT_PLOT in stderr
    assert (out / REPORT_PLOT).read_bytes().startswith(PNG_SIGNATURE)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_summary_keeps_the_worst_layers_and_the_totals(compressed):
    report = json.loads((compressed[1] / "compress_report.json").read_text())
    summary = summary_table(report)
    assert summary.row_count == WORST_LAYERS + 1  # the worst layers and the total row
    full = report_table(report)
    assert full.row_count == len(report["layers"]) + 1
    worst = max(report["layers"], key=lambda r: r["rel_error"])
    assert worst["name"].rsplit(".", 1)[-1] in _text(summary)


def test_verbose_prints_every_layer(run, compressed, tmp_path):
    dense = compressed[0]
    code, stdout, stderr = run("compress", dense, "--method", "rtn", "--bits", "4", "--group-size", "32",
                               "--nsamples", "0", "--device", "cpu", "--out", tmp_path / "q", "--verbose")
    assert code == 0, stderr
    assert "total (14 layers)" in stdout and "largest error" not in stdout
    assert stdout.count("\n") > 14


def test_plot_of_a_report_without_activation_errors():
    layers = [{"name": f"model.layers.{i}.mlp.up_proj", "bpw": 4.0 + i / 10, "rel_error": 0.1 * i,
               "act_error": None} for i in range(3)]
    png = render_report_plot({"method": "rtn", "layers": layers, "summary": {"bpw": 4.1}})
    assert png.startswith(PNG_SIGNATURE)
