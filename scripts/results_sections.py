"""Sections of docs/RESULTS.md built from records other than the sweep's rows: the sweep by bit
budget, the binarization family's bits, the CPU subset bench, and the timing tables."""

from __future__ import annotations

import json
from pathlib import Path

from results_records import RESULTS, load, load_report, method_of, recorded_runs, runs_in_budget
from results_runs import ROOT, is_binary_method, runs

# Budgets of the sweep: (label, low, high) on the decoder's all-stored bpw. The binarization family
# forms its own row: its published budget (about 1.1 bits) counts sign codes only.
BUDGETS = [("about 1.1", 1.0, 1.3), ("about 2", 1.9, 2.35), ("about 2.5", 2.35, 2.75), ("about 3", 2.75, 3.35),
           ("about 4", 3.9, 4.35)]


def _optional(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def bench_section(folder: Path) -> list[str]:
    """Records of `llava-fa bench` (a CPU pass on a subset: not comparable with the full-split rows)."""
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not records:
        return []
    base = json.loads((folder.parent / "testbed_cpu_subset.json").read_text())
    lines = ["", "## Methods at about 3 bits, CPU pass on a subset (all rows on the same questions)", "",
             "`llava-fa bench examples/bench_cpu_small.yaml --out docs/results/bench_cpu_small --limit 64 "
             "--ppl-windows 2 --device cpu`: first 64 easy-VQA questions, 2 WikiText-2 windows (the uncompressed "
             f"testbed scores {base['vqa']['fast']['accuracy']:.2%} and PPL {base['perplexity']['ppl']:.2f} on these: "
             "`llava-fa eval ~/.cache/llava_fa/testbed --limit 64 --ppl-windows 2 --vqa-mode both --json "
             "docs/results/testbed_cpu_subset.json`), fidelity on 64 prompts; compression on 2 shared CPU cores.",
             "", "| run | method | bpw | PPL (2 windows) | easy-VQA (64) | KL | top-1 agr. | mean rel. err | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['name']} | `{r['method']} {r['options']}` | {r['bpw']:.3f} | {_optional(r['perplexity'], '.2f')} | "
                     f"{_optional(r['vqa_accuracy'], '.2%')} | {_optional(r['kl'], '.3f')} | "
                     f"{_optional(r['top1_agreement'], '.2%')} | "
                     f"{r['mean_rel_error']:.4f} | {r['compress_seconds']:.0f} |")
    return lines


def codes_only_note() -> str:
    """bpw of the sign codes alone, from the reports' itemized bits (runs made after the reports
    itemized them), else a pointer to the layer study that itemizes them."""
    from llava_fa.formats.binary import CODE_BUFFERS

    parts = []
    for name in (r.name for r in runs()):
        report = load_report(name)
        if report is not None and is_binary_method(method_of(name)):
            summ = report["summary"]
            if summ.get("bits_by_part"):
                codes = sum(v for k, v in summ["bits_by_part"].items() if k in CODE_BUFFERS)
                parts.append(f"`{name}` {codes / summ['weights']:.3f}")
    if parts:
        return "sign codes alone: " + ", ".join(dict.fromkeys(parts)) + " bits per weight."
    return ("these runs predate itemized reports; `python scripts/binary_layer_study.py` prints the three "
            "conventions (all stored / without masks / codes only) per method on a testbed layer.")


def cpu_binary_section() -> list[str]:
    """Compression of the whole testbed on 2 CPU cores with the binarization family (compress reports
    in docs/results/testbed_cpu/), with bpw counted every way."""
    from llava_fa.formats.binary import CODE_BUFFERS, MASK_BUFFERS

    folder = ROOT / "docs" / "results" / "testbed_cpu"
    reports = sorted(folder.glob("*.report.json"))
    if not reports:
        return []
    lines = ["", "## Binarization on CPU: compression time and bits counted three ways", "",
             "`llava-fa compress ~/.cache/llava_fa/testbed -m METHOD --out OUT --report "
             "docs/results/testbed_cpu/NAME.report.json` on this project's 2-core CPU machine, one run at a time (default calibration: "
             "32 samples). bpw: every stored bit / without masks and bitmaps / sign codes only (the papers' "
             "convention).", "",
             "| method | s (2 CPU cores) | bpw stored | bpw without masks | bpw codes only | mean act. err |",
             "|---|---|---|---|---|---|"]
    for path in reports:
        r = json.loads(path.read_text())
        summ, parts = r["summary"], r["summary"].get("bits_by_part") or {}
        n = summ["weights"]
        masks = sum(v for k, v in parts.items() if k in MASK_BUFFERS)
        codes = sum(v for k, v in parts.items() if k in CODE_BUFFERS)
        lines.append(f"| {r['method']} | {r['wall_seconds']:.0f} | {summ['bpw']:.3f} | {(summ['storage_bits'] - masks) / n:.3f} | "
                     f"{codes / n:.3f} | {summ['mean_act_error']:.4f} |")
    return lines


def budget_section() -> list[str]:
    """Every run of the sweep sorted into bit budgets, best perplexity first."""
    lines = ["", "## The sweep by bit budget (every run above, sorted by perplexity)", "",
             "bpw counts every stored bit. Scalar quantizers (RTN, GPTQ, HQQ, rotation) with group 64 reach "
             "2.28 / 3.30 / 4.31 bpw and nothing in between (their 1-bit runs use groups of 192 and reach 1.09); the binarization family stores about 1.1 bits of sign "
             "codes per weight but 2.8-3.2 bpw with every scale, mean and mask counted (see its section), so it is "
             "listed apart.", ""]
    header = ["| run | method | bpw | PPL | easy-VQA | KL |", "|---|---|---|---|---|---|"]
    groups = [(label, runs_in_budget(lo, hi)) for label, lo, hi in BUDGETS]
    groups.append(("binarization family (about 1.1 bits of sign codes)",
                   [n for n in recorded_runs() if is_binary_method(method_of(n))]))
    for label, names in groups:
        recs = sorted(((n, load(n)) for n in names), key=lambda t: t[1]["perplexity"]["ppl"])
        lines += [f"**{label} bpw** ({len(recs)} runs; methods: "
                  f"{', '.join(sorted({method_of(n) for n in names}))})", ""] + header
        for n, r in recs:
            fid = r.get("fidelity") or {}
            lines.append(f"| {n} | {method_of(n)} | {r['size']['decoder_linear']['bpw']:.3f} | "
                         f"{r['perplexity']['ppl']:.2f} | {r['vqa']['fast']['accuracy']:.2%} | {fid.get('kl', 0):.3f} |")
        lines.append("")
    return lines


def kernel_section() -> list[str]:
    """The fused affine kernel's timings, with the ranges the text quotes read from the same table."""
    bench = RESULTS / "bench_kernels_h100.txt"
    if not bench.exists():
        return []
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in bench.read_text().splitlines()
            if line.startswith("| ") and line[2].isdigit()]

    def span(col: int, decode: bool) -> str:
        vals = [float(r[col]) for r in rows if (r[2] in ("1", "16")) == decode]
        return f"{min(vals):.2f}-{max(vals):.2f}x"
    return ["", "## Inference from the packed codes: the fused `affine` kernel on an H100", "",
            "`PYTHONPATH=src python scripts/bench_kernels.py --reps 100` (random weights; the kernel "
            "is `src/llava_fa/kernels/affine_matmul.py`, `forward_mode = \"fused\"` on `affine` layers). It never "
            f"forms W and runs {span(8, True)} faster than the unfused `dequant` mode at 1-16 tokens "
            f"({span(8, False)} at 256), the mode with the same memory promise. It is not faster than a dense "
            f"float16 matmul: {span(7, True)} of its speed at 1-16 tokens, {span(7, False)} at 256. The kernel "
            "unpacks codes with integer gathers per tile and pads decode steps to 16 rows for `tl.dot`; it reads "
            "3.7-7x fewer weight bytes but does not reach the bandwidth bound. (Since then the default mode `auto` "
            "runs it on CUDA, keeping the model compressed in memory; `cached`, a dense copy per device, is the "
            "explicit mode for speed. The H200 section below has the end-to-end decode figures.)", "", "```", bench.read_text().rstrip(), "```"]


def layer_bench_section() -> list[str]:
    """Timings of compressing one large layer (scripts/bench_layer.py), when recorded."""
    out = []
    bench = RESULTS / "bench_layer_h100.txt"
    if bench.exists():
        out += ["", "## Compressing one 4096 x 11008 layer on an H100", "",
                "`python scripts/bench_layer.py --device cuda --repeat 2` (synthetic Gaussian weight with 1% outlier "
                "columns, 4,096 calibration tokens):", "", "```", bench.read_text().rstrip(), "```"]
    bench = RESULTS / "bench_layer_binary_h100.txt"
    if bench.exists():
        out += ["", "The binarization family on the same layer (a quarter of the tokens play image tokens for SAB), "
                "`python scripts/bench_layer.py --device cuda --repeat 1 --only gptq pb-llm billm arb-x arb-rc sab`:",
                "", "```", bench.read_text().rstrip(), "```"]
    return out
