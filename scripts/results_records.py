"""The sweep's records in words and table rows: docs/results/testbed_h100/NAME.json (`llava-fa eval
--json`) and NAME.report.json (`llava-fa compress --report`), and the CPU subset's bench records."""

from __future__ import annotations

import functools
import json

from results_runs import ROOT, UNCOMPRESSED, is_binary_method, method_in_run_list, runs

RESULTS = ROOT / "docs" / "results" / "testbed_h100"
SUBSET = ROOT / "docs" / "results" / "bench_cpu_small"
NO_FIDELITY = {"kl": 0.0, "top1_agreement": 1.0}  # the uncompressed record is its own reference


@functools.cache  # the analysis reads the same records many times
def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


@functools.cache
def load_report(name: str) -> dict | None:
    path = RESULTS / f"{name}.report.json"
    return json.loads(path.read_text()) if path.exists() else None


def method_of(name: str) -> str:
    """The method a run used: from its compress report, else from the run list."""
    report = load_report(name)
    if report is not None:
        return report["method"]
    return method_in_run_list(name) or name


def table_row(name: str, flags: str) -> str:
    """One row of a results table: | run | flags | bpw | PPL | easy-VQA | KL | top-1 | act. err | s |."""
    r = load(name)
    if r is None:
        return f"| {name} | `{flags}` | not run | | | | | | |"
    summary = (load_report(name) or {}).get("summary", {})
    fid = r.get("fidelity") or NO_FIDELITY
    act, secs = summary.get("mean_act_error"), (load_report(name) or {}).get("wall_seconds")
    return (f"| {name} | `{flags or 'uncompressed'}` | {r['size']['decoder_linear']['bpw']:.3f} | "
            f"{r['perplexity']['ppl']:.2f} | {r['vqa']['fast']['accuracy']:.2%} | {fid['kl']:.3f} | "
            f"{fid['top1_agreement']:.2%} | {'' if act is None else f'{act:.4f}'} | {'' if secs is None else f'{secs:.0f}'} |")


def compress_seconds(name: str) -> float:
    return load_report(name)["wall_seconds"]


def compare(a: str, b: str, what: str) -> str:
    """One generated sentence comparing run a with run b on every measure."""
    ra, rb = load(a), load(b)
    if ra is None or rb is None:
        return f"- {what}: not both run."

    def measures(r):
        fid = r.get("fidelity") or NO_FIDELITY
        return (r["size"]["decoder_linear"]["bpw"], r["perplexity"]["ppl"], r["vqa"]["fast"]["accuracy"], fid["kl"])

    def verdict(better: bool) -> str:
        return "better" if better else "worse"
    (ba, pa, va, ka), (bb, pb, vb, kb) = measures(ra), measures(rb)
    return (f"- {what}: `{a}` ({ba:.2f} bpw) vs `{b}` ({bb:.2f} bpw): perplexity {pa:.2f} vs {pb:.2f} "
            f"({verdict(pa < pb)}), easy-VQA {va:.2%} vs {vb:.2%} ({verdict(va > vb)}), KL {ka:.3f} vs {kb:.3f} "
            f"({verdict(ka < kb)}).")


def in_words(name: str) -> str:
    """One run's measures in words, read from its record."""
    r = load(name)
    if r is None:
        return f"`{name}` (not run)"
    kl = (r.get("fidelity") or {}).get("kl", 0.0)
    return (f"`{name}` ({r['size']['decoder_linear']['bpw']:.2f} bpw: PPL {r['perplexity']['ppl']:,.2f}, "
            f"easy-VQA {r['vqa']['fast']['accuracy']:.2%}, KL {kl:.3f})")


def subset_in_words(name: str) -> str:
    """One record of the CPU subset bench in words."""
    path = SUBSET / f"{name}.json"
    if not path.exists():
        return f"`{name}` (not run)"
    r = json.loads(path.read_text())
    return (f"`{name}` ({r['bpw']:.2f} bpw: PPL {r['perplexity']:.2f}, easy-VQA {r['vqa_accuracy']:.2%} of 64, "
            f"KL {r['kl']:.3f})")


def mean_act_error(name: str) -> str:
    report = load_report(name)
    return f"{report['summary']['mean_act_error']:.4f}" if report is not None else "n/a"


def worst_layer(a: str, b: str) -> str:
    """The layer where run a's weight error exceeds run b's the most, both errors in words."""
    rows = {}
    for run in (a, b):
        report = load_report(run)
        if report is None:
            return f"`{run}`: no report"
        rows[run] = {x["name"]: x for x in report["layers"]}
    name = max(rows[a], key=lambda n: rows[a][n]["rel_error"] - rows[b][n]["rel_error"])
    la, lb = rows[a][name], rows[b][name]
    return (f"`{name.split('language_model.')[-1]}` in `{a}`: weight error {la['rel_error']:.2f} vs {lb['rel_error']:.2f} "
            f"in `{b}`, activation error {la['act_error']:.3f} vs {lb['act_error']:.3f}")


def recorded_runs() -> list[str]:
    """Names of the run list with a record, in the list's order (the uncompressed reference excluded)."""
    return [r.name for r in runs() if r.name != UNCOMPRESSED and load(r.name) is not None]


def runs_in_budget(lo: float, hi: float) -> list[str]:
    """The non-binary runs with a record whose all-stored bpw lies in [lo, hi), best perplexity first."""
    names = [n for n in recorded_runs() if not is_binary_method(method_of(n))
             and lo <= load(n)["size"]["decoder_linear"]["bpw"] < hi]
    return sorted(names, key=lambda n: load(n)["perplexity"]["ppl"])
