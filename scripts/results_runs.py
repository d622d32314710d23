"""The report's run list, examples/bench_testbed.yaml, and the tables of docs/RESULTS.md drawn from it.

The YAML is the only list of runs (`llava-fa bench` runs it; scripts/render_results.py and
scripts/plots.py read it): a run joins the report by being added there, and the YAML's order is the
order within every table (the binary and sab-ablation tables move their reference rows). Each table
takes its runs by method, options and name. Names follow METHOD LETTERS + BUDGET (bits, or bpw
without its dot) + what differs (`fa3q_odccal`, `lqer2r8`), so:
- rtn-gptq: the plain RTN/GPTQ grid, runs named exactly METHOD + bits (+ "g" + group size when it is
  not the default); their flags spell bits and group size with compress's --bits / --group-size, as
  the grid was first run;
- fa: LLaVA-FA in its own form (rfft2, PolarQuant, ODC on, codes stored), every budget (but see
  FA_TABLE_EXCLUDES);
- baselines: every run that is neither fa, nor the binarization family, nor the grid;
- binary: the binarization family at its published defaults (no options), then the grid's GPTQ
  3-bit run as a reference;
- sab-ablation: SAB at its defaults, ARB-RC (exactly SAB with Lambda off), then SAB with options;
- ablation: the fa runs at the 3-bit point (names `fa3...`): per structure the reference, then one
  change each.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llava_fa.bench import BenchRun, load_runs
from llava_fa.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# LLAVA_FA_RUN_LIST names another run list (examples/bench_testbed2.yaml: testbed 2's sweep specs)
RUN_LIST = Path(os.environ.get("LLAVA_FA_RUN_LIST") or ROOT / "examples" / "bench_testbed.yaml")
UNCOMPRESSED = "base"  # the uncompressed testbed's record: the reference row, not a run of the list
GRID_FLAGS = {"bits": "--bits", "group_size": "--group-size"}  # compress's own flags for these options
FA_ABLATION_PREFIX = "fa3"
# Listed with the ablation only, as the committed report always had it; dropping this exclusion adds
# its row to the fa table.
FA_TABLE_EXCLUDES = frozenset({"fa3j_odccal"})


@functools.cache
def runs() -> tuple[BenchRun, ...]:
    """The runs of examples/bench_testbed.yaml, read by the bench loader (which rejects unknown keys)."""
    return tuple(load_runs(RUN_LIST))


def run_named(name: str) -> BenchRun | None:
    return next((r for r in runs() if r.name == name), None)


def _flag_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)  # YAML's true, not Python's True


def compress_flags(run: BenchRun) -> str:
    """The `llava-fa compress` flags of a run, as the report prints them and sweep.sh passes them."""
    words, grid = ["-m", run.method], in_plain_grid(run)
    for key, value in run.options.items():
        if key in GRID_FLAGS and grid:
            words += [GRID_FLAGS[key], _flag_value(value)]
        else:
            words += ["-O", f"{key}={_flag_value(value)}"]
    if run.nsamples is not None:
        words += ["--nsamples", str(run.nsamples)]
    if run.calib is not None:
        words += ["--calib", run.calib]
    return " ".join(words)


def sweep_specs(skip: Callable[[str], bool] = lambda name: False) -> list[str]:
    """NAME:FLAGS for scripts/device/sweep.sh, the uncompressed reference first; `skip` drops runs."""
    specs = [f"{UNCOMPRESSED}:"] + [f"{r.name}:{compress_flags(r)}" for r in runs()]
    return [s for s in specs if not skip(s.partition(":")[0])]


# --- method of a run name ---------------------------------------------------------------------------

def method_in_run_list(name: str) -> str | None:
    run = run_named(name)
    return run.method if run else None


@functools.cache
def name_prefixes() -> tuple[tuple[str, str], ...]:
    """(prefix, method), longest first: every method of the list and the leading letters of its run names."""
    pairs = {r.method: r.method for r in runs()}
    pairs.update({re.match(r"[a-z-]*", r.name).group(): r.method for r in runs()})
    pairs.pop("", None)
    return tuple(sorted(pairs.items(), key=lambda kv: (-len(kv[0]), kv[0])))


def method_from_name(name: str) -> str:
    """The run list's method for `name`, else the method its leading letters name (`svdllm40` ->
    svd-llm), else the name without trailing digits and underscores."""
    listed = method_in_run_list(name)
    if listed:
        return listed
    return next((m for prefix, m in name_prefixes() if name.startswith(prefix)), name.rstrip("0123456789_"))


@functools.cache
def is_binary_method(method: str) -> bool:
    """The binarization family: the methods built on llava_fa.methods.binary's BinaryMethod."""
    from llava_fa.methods.base import get_method
    from llava_fa.methods.binary import BinaryMethod

    try:
        return issubclass(get_method(method), BinaryMethod)
    except ConfigError:  # not a method (a record named otherwise)
        return False


# --- tables -----------------------------------------------------------------------------------------

def in_plain_grid(run: BenchRun) -> bool:
    """RTN/GPTQ named exactly METHOD + bits, + "g" + group size when that is not the method's default."""
    from llava_fa.methods.base import build_config

    if run.method not in ("rtn", "gptq"):
        return False
    config = build_config(run.method, run.options)
    default_group = build_config(run.method).group_size
    suffix = "" if config.group_size == default_group else f"g{config.group_size}"
    return run.name == f"{run.method}{config.bits}{suffix}"


def in_fa_own_form(run: BenchRun) -> bool:
    """LLaVA-FA as designed: a half spectrum (rfft2, or rfft along the input axis), PolarQuant codes, ODC on,
    codes stored (not low-rank only)."""
    from llava_fa.methods.base import build_config

    if run.method != "fa" or run.name in FA_TABLE_EXCLUDES:
        return False
    c = build_config("fa", run.options)
    return c.transform in ("rfft2", "rfft") and c.quantizer == "polar" and c.odc != "off" and c.structure != "lowrank"


def rtn_gptq_rows(rs: tuple[BenchRun, ...]) -> list[BenchRun]:
    return [r for r in rs if in_plain_grid(r)]


def fa_rows(rs: tuple[BenchRun, ...]) -> list[BenchRun]:
    return [r for r in rs if in_fa_own_form(r)]


def baseline_rows(rs: tuple[BenchRun, ...]) -> list[BenchRun]:
    return [r for r in rs if r.method != "fa" and not is_binary_method(r.method) and not in_plain_grid(r)]


def binary_rows(rs: tuple[BenchRun, ...]) -> list[BenchRun]:
    family = [r for r in rs if is_binary_method(r.method) and not r.options]
    reference = [r for r in rtn_gptq_rows(rs) if r.method == "gptq" and r.options.get("bits") == 3]
    return family + reference


def sab_ablation_rows(rs: tuple[BenchRun, ...]) -> list[BenchRun]:
    at_defaults = [r for r in rs if r.method == "sab" and not r.options]
    lambda_off = [r for r in rs if r.method == "arb-rc" and not r.options]
    return at_defaults + lambda_off + [r for r in rs if r.method == "sab" and r.options]


def fa_ablation_rows(rs: tuple[BenchRun, ...]) -> list[BenchRun]:
    return [r for r in rs if r.method == "fa" and r.name.startswith(FA_ABLATION_PREFIX)]


@dataclass(frozen=True)
class Table:
    title: str
    select: Callable[[tuple[BenchRun, ...]], list[BenchRun]]

    def rows(self) -> list[BenchRun]:
        return self.select(runs())


# In the report's order.
TABLES = {
    "rtn-gptq": Table("RTN and GPTQ (group 64, asymmetric) on the language decoder", rtn_gptq_rows),
    "fa": Table("LLaVA-FA (`fa`) on the language decoder", fa_rows),
    "baselines": Table("Other baselines at 1.1-4 bpw", baseline_rows),
    "binary": Table("Binarization family and SAB-LVLM (published defaults; GPTQ 3-bit as a reference)", binary_rows),
    "sab-ablation": Table("SAB-LVLM ablations (ARB-RC = SAB with Lambda off, exactly)", sab_ablation_rows),
    "ablation": Table("LLaVA-FA ablations at about 3.2 bpw (rfft2 + PolarQuant 2+4 + data-free ODC + quant-only "
                      "is the reference row)", fa_ablation_rows),
}
