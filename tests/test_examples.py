"""The example run lists load, their options build valid configs, and the testbed list is the
report's run list (scripts/render_results.py --bench-yaml), so the two cannot drift apart."""

import importlib.util
from pathlib import Path

import pytest

from llava_fa import bench
from llava_fa.methods.base import build_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["bench_testbed.yaml", "bench_cpu_small.yaml"])
def test_example_run_lists_build(name):
    runs = bench.load_runs(ROOT / "examples" / name)
    for run in runs:
        build_config(run.method, run.options)


def test_testbed_run_list_is_the_reports():
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "scripts" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "examples" / "bench_testbed.yaml").read_text() == module.bench_yaml()
