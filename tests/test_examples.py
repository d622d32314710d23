"""The example run lists load and their options build valid configs; examples/bench_testbed.yaml is
the report's run list (scripts/render_results.py reads its tables and sweep specs from it), so every
run there is in the report, runs the same configuration in the sweep, and is what the analysis names."""

import importlib
import shlex
import sys
from pathlib import Path

import pytest

from llava_fa import bench
from llava_fa.methods.base import build_config

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """A module of scripts/ (the results_* modules import each other by name, so scripts/ joins the path)."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    return importlib.import_module(name)


@pytest.mark.parametrize("name", ["bench_testbed.yaml", "bench_cpu_small.yaml"])
def test_example_run_lists_build(name):
    runs = bench.load_runs(ROOT / "examples" / name)
    for run in runs:
        build_config(run.method, run.options)


def test_every_testbed_run_is_in_a_table_of_the_report():
    runs_module = _script("results_runs")
    listed = [r.name for r in bench.load_runs(ROOT / "examples" / "bench_testbed.yaml")]
    shown = {r.name for table in runs_module.TABLES.values() for r in table.rows()}
    assert [n for n in listed if n not in shown] == []
    assert shown <= set(listed)


def test_sweep_flags_give_the_bench_runs_configs():
    """The GPU rows came from sweep.sh with these flags; `llava-fa bench` runs the YAML: same configs."""
    runs_module = _script("results_runs")
    flag_options = {"--bits": "bits", "--group-size": "group_size"}
    for run in bench.load_runs(ROOT / "examples" / "bench_testbed.yaml"):
        words, options, nsamples = shlex.split(runs_module.compress_flags(run)), {}, None
        for flag, value in zip(words, words[1:]):
            if flag == "-O":
                key, _, options[key] = value.partition("=")
            elif flag in flag_options:
                options[flag_options[flag]] = value
            elif flag == "--nsamples":
                nsamples = int(value)
        assert words[words.index("-m") + 1] == run.method and nsamples == run.nsamples
        assert build_config(run.method, options) == build_config(run.method, run.options), run.name


def test_the_analysis_names_runs_of_the_list():
    analysis = _script("results_analysis")
    listed = {r.name for r in bench.load_runs(ROOT / "examples" / "bench_testbed.yaml")}
    named = {name for a, b, _ in analysis.FINDINGS for name in (a, b)}
    assert named <= listed
