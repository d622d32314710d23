"""Render docs/RESULTS.md from the JSON records of the testbed sweep (never edit it by hand).

    python scripts/render_results.py                 # writes docs/RESULTS.md
    python scripts/render_results.py --sweep-args    # the specs for scripts/device/sweep.sh
    python scripts/render_results.py --sweep-args --missing   # only the runs without a record

Each run NAME has docs/results/testbed_h100/NAME.json (`llava-fa eval --json`, full easy-VQA
test split, all of WikiText-2, fidelity against the uncompressed testbed) and NAME.report.json
(`llava-fa compress --report`). They come from one GPU call:

    bash scripts/device/sweep.sh $(python scripts/render_results.py --sweep-args)
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "testbed_h100"

# (table, name, compress flags). "base" is the uncompressed testbed.
RUNS = [
    ("base", "base", ""),
    ("rtn-gptq", "rtn4", "-m rtn --bits 4 --group-size 64 --nsamples 0"),
    ("rtn-gptq", "gptq4", "-m gptq --bits 4 --group-size 64"),
    ("rtn-gptq", "rtn3", "-m rtn --bits 3 --group-size 64 --nsamples 0"),
    ("rtn-gptq", "gptq3", "-m gptq --bits 3 --group-size 64"),
    ("rtn-gptq", "rtn2", "-m rtn --bits 2 --group-size 64 --nsamples 0"),
    ("rtn-gptq", "gptq2", "-m gptq --bits 2 --group-size 64"),
    ("rtn-gptq", "rtn4g32", "-m rtn --bits 4 --group-size 32 --nsamples 0"),
    ("fa", "fa4q", "-m fa -O structure=quant -O mag_bits=3 -O phase_bits=5"),
    ("fa", "fa3q", "-m fa -O structure=quant"),
    ("fa", "fa3q_odccal", "-m fa -O structure=quant -O odc=calibrated"),
    ("fa", "fa3j", "-m fa -O bpw=3.3"),
    ("fa", "fa2q", "-m fa -O structure=quant -O mag_bits=1 -O phase_bits=3"),
    ("ablation", "fa3q", "-m fa -O structure=quant"),
    ("ablation", "fa3q_none", "-m fa -O structure=quant -O transform=none"),
    ("ablation", "fa3q_cart", "-m fa -O structure=quant -O quantizer=cartesian -O mag_bits=3 -O phase_bits=3"),
    ("ablation", "fa3q_odcoff", "-m fa -O structure=quant -O odc=off"),
    ("ablation", "fa3q_odccal", "-m fa -O structure=quant -O odc=calibrated"),
    ("ablation", "fa3j", "-m fa -O bpw=3.3"),
    ("ablation", "fa3j_none", "-m fa -O bpw=3.3 -O transform=none"),
    ("ablation", "fa3j_odccal", "-m fa -O bpw=3.3 -O odc=calibrated"),
    ("ablation", "fa3lr", "-m fa -O structure=lowrank -O bpw=3.3"),
    ("ablation", "fa3lr_none", "-m fa -O structure=lowrank -O bpw=3.3 -O transform=none"),
    ("fa", "fa4q_odccal", "-m fa -O structure=quant -O mag_bits=3 -O phase_bits=5 -O odc=calibrated"),
    ("fa", "fa25q_odccal", "-m fa -O structure=quant -O mag_bits=2 -O phase_bits=3 -O odc=calibrated"),
    ("fa", "fa25j_odccal", "-m fa -O bpw=2.5 -O odc=calibrated"),
    ("fa", "fa2j_odccal", "-m fa -O bpw=2 -O odc=calibrated"),
    ("binary", "pbllm", "-m pb-llm"),
    ("binary", "billm", "-m billm"),
    ("binary", "arb", "-m arb"),
    ("binary", "arbx", "-m arb-x"),
    ("binary", "arbrc", "-m arb-rc"),
    ("binary", "sab", "-m sab"),
    ("binary", "gptq3", "-m gptq --bits 3 --group-size 64"),
    ("sab-ablation", "sab", "-m sab"),
    ("sab-ablation", "arbrc", "-m arb-rc"),
    ("sab-ablation", "sab_steer", "-m sab -O lambda_steers_selection=true"),
    ("sab-ablation", "sab_top10", "-m sab -O salient_top_p=0.1"),
    ("sab-ablation", "sab_q75", "-m sab -O diff_quantile=0.75"),
    ("sab-ablation", "sab_thr05", "-m sab -O sparsity_thr=0.05"),
    ("sab-ablation", "sab_it5", "-m sab -O iters=5"),
    ("sab-ablation", "sab_floor05", "-m sab -O lambda_floor=0.5"),
    ("baselines", "hqq4", "-m hqq -O bits=4 --nsamples 0"),
    ("baselines", "hqq3", "-m hqq -O bits=3 --nsamples 0"),
    ("baselines", "hqq2", "-m hqq -O bits=2 --nsamples 0"),
    ("baselines", "hadamard4", "-m hadamard -O bits=4"),
    ("baselines", "hadamard3", "-m hadamard -O bits=3"),
    ("baselines", "hadamard2", "-m hadamard -O bits=2"),
    ("baselines", "lqer3", "-m lqer -O bits=3 -O rank=32"),
    ("baselines", "lqer2", "-m lqer -O bits=2 -O rank=32"),
    ("baselines", "lqer2r8", "-m lqer -O bits=2 -O rank=8"),
    ("baselines", "caldera", "-m caldera"),
    ("baselines", "caldera16", "-m caldera -O rank=16"),
    ("baselines", "asvd4", "-m asvd -O bpw=4"),
    ("baselines", "asvd2", "-m asvd -O bpw=2"),
    ("baselines", "svdllm4", "-m svd-llm -O bpw=4"),
    ("baselines", "svdllm2", "-m svd-llm -O bpw=2"),
]

TITLES = {
    "rtn-gptq": "RTN and GPTQ (group 64, asymmetric) on the language decoder",
    "fa": "LLaVA-FA (`fa`) on the language decoder",
    "binary": "Binarization family and SAB-LVLM (published defaults; GPTQ 3-bit as a reference)",
    "sab-ablation": "SAB-LVLM ablations (ARB-RC = SAB with Lambda off, exactly)",
    "baselines": "Other baselines at 2-4 bpw",
    "ablation": "LLaVA-FA ablations at about 3.2 bpw (rfft2 + PolarQuant 2+4 + data-free ODC + quant-only is the reference row)",
}


def row(name: str, flags: str) -> str | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return f"| {name} | `{flags}` | not run | | | | | | |"
    r = json.loads(path.read_text())
    report_path = RESULTS / f"{name}.report.json"
    rep = json.loads(report_path.read_text()) if report_path.exists() else {}
    fid = r.get("fidelity") or {"kl": 0.0, "top1_agreement": 1.0}
    summary = rep.get("summary", {})
    act = summary.get("mean_act_error")
    secs = rep.get("wall_seconds")
    return (f"| {name} | `{flags or 'uncompressed'}` | {r['size']['decoder_linear']['bpw']:.3f} | "
            f"{r['perplexity']['ppl']:.2f} | {r['vqa']['fast']['accuracy']:.2%} | {fid['kl']:.3f} | "
            f"{fid['top1_agreement']:.2%} | {'' if act is None else f'{act:.4f}'} | {'' if secs is None else f'{secs:.0f}'} |")


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def compare(a: str, b: str, what: str) -> str:
    """One generated sentence comparing run a with run b on every measure."""
    ra, rb = load(a), load(b)
    if ra is None or rb is None:
        return f"- {what}: not both run."
    def m(r):
        fid = r.get("fidelity") or {"kl": 0.0, "top1_agreement": 1.0}
        return (r["size"]["decoder_linear"]["bpw"], r["perplexity"]["ppl"], r["vqa"]["fast"]["accuracy"], fid["kl"])
    (ba, pa, va, ka), (bb, pb, vb, kb) = m(ra), m(rb)
    verdict = lambda better: "better" if better else "worse"
    return (f"- {what}: `{a}` ({ba:.2f} bpw) vs `{b}` ({bb:.2f} bpw): perplexity {pa:.2f} vs {pb:.2f} "
            f"({verdict(pa < pb)}), easy-VQA {va:.2%} vs {vb:.2%} ({verdict(va > vb)}), KL {ka:.3f} vs {kb:.3f} "
            f"({verdict(ka < kb)}).")


FINDINGS = [
    ("gptq3", "rtn3", "GPTQ vs RTN at 3 bits"),
    ("gptq2", "rtn2", "GPTQ vs RTN at 2 bits"),
    ("gptq4", "rtn4", "GPTQ vs RTN at 4 bits"),
    ("fa3q_odccal", "gptq3", "Best LLaVA-FA form vs GPTQ at about 3 bits"),
    ("fa3j_odccal", "gptq3", "LLaVA-FA joint (paper form) with calibrated ODC vs GPTQ at about 3.3 bits"),
    ("fa4q", "gptq4", "LLaVA-FA (data-free ODC) vs GPTQ at about 4 bits"),
    ("fa2q", "gptq2", "LLaVA-FA vs GPTQ at about 2 bits"),
    ("fa3q", "fa3q_none", "Fourier (rfft2) vs spatial quantization at equal bits"),
    ("fa3j", "fa3j_none", "Fourier vs spatial low-rank + quantization (joint) at equal bits"),
    ("fa3lr", "fa3lr_none", "Fourier vs spatial low-rank only at equal bits"),
    ("fa3q", "fa3q_cart", "PolarQuant vs cartesian at equal bits"),
    ("fa3q", "fa3q_odcoff", "data-free ODC vs no ODC"),
    ("fa3q_odccal", "fa3q", "calibrated ODC vs data-free ODC"),
    ("fa3j", "fa3lr", "joint vs low-rank only at equal bits"),
    ("fa3j", "fa3q", "joint vs quantization only at about equal bits"),
]


def bench_section(folder: Path) -> list[str]:
    """Records of `llava-fa bench` (a CPU pass on a subset: not comparable with the full-split rows)."""
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not records:
        return []
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
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
        lines.append(f"| {r['name']} | `{r['method']} {r['options']}` | {r['bpw']:.3f} | {fmt(r['perplexity'], '.2f')} | "
                     f"{fmt(r['vqa_accuracy'], '.2%')} | {fmt(r['kl'], '.3f')} | {fmt(r['top1_agreement'], '.2%')} | "
                     f"{r['mean_rel_error']:.4f} | {r['compress_seconds']:.0f} |")
    return lines


def render() -> str:
    base = json.loads((RESULTS / "base.json").read_text())
    out = ["# Results on the testbed", "",
           "Generated by `python scripts/render_results.py` from `docs/results/testbed_h100/*.json`; do not edit.",
           "", "Every row: the testbed's 210 language-decoder linear layers compressed, everything else kept in float32; "
           "evaluated on one H100 in float32 on the **full** easy-VQA test split (9,673 questions, fast mode), "
           f"all of WikiText-2 test (seqlen {base['perplexity']['seqlen']}, {base['perplexity']['windows']} windows), "
           "and fidelity (mean KL(ref || model) per token, top-1 agreement) on 64 image+question prompts against the "
           "uncompressed testbed. bpw counts every stored bit of the decoder linears (codes, scales, zeros, factors, "
           "ODC scales, levels). Calibration (GPTQ, calibrated ODC): 16 easy-VQA image+text samples and 16 x 256 "
           "tokens of WikiText-2 validation. `act. err` is the mean over layers of ||(W - W')X^T|| / ||W X^T|| on "
           "the calibration inputs; `s` is the compression wall time on the H100.", "",
           "Reproduce one row: `llava-fa compress ~/.cache/llava_fa/testbed FLAGS --out OUT --report OUT.report.json` "
           "then `llava-fa eval OUT --reference ~/.cache/llava_fa/testbed --vqa-mode fast --dtype float32 --json "
           "OUT.json`; all rows in one GPU call: `bash scripts/device/sweep.sh $(python scripts/render_results.py "
           "--sweep-args)`.", "",
           "Note: the testbed's SmolLM2 weights come from a 4-bit GGUF file (Q4_1, blocks of 32): 4-bit results "
           "partly measure re-quantizing a 4-bit grid; the 2-3 bit rows say more.", ""]
    header = ("| run | flags | bpw | WikiText-2 PPL | easy-VQA acc. | KL | top-1 agr. | act. err | s |\n"
              "|---|---|---|---|---|---|---|---|---|")
    out += ["## Uncompressed", "", header, row("base", "")]
    for table in ("rtn-gptq", "fa", "baselines", "binary", "sab-ablation", "ablation"):
        out += ["", f"## {TITLES[table]}", "", header]
        out += [row(name, flags) for t, name, flags in RUNS if t == table]
    per = base["vqa"]["fast"]["per_answer"]
    top = max(per, key=lambda a: per[a]["n"])
    out += ["", "## Comparisons (generated from the rows above)", "",
            f"Reading easy-VQA accuracy: always answering `{top}` scores {per[top]['n'] / base['vqa']['fast']['n']:.2%}; "
            "the testbed's yes/no decisions (three quarters of the questions) sit close to their boundary "
            "(projector-only training), so accuracy falls faster than perplexity and fidelity under compression, "
            "and a model that collapses to one answer can score near that level with a poor perplexity. "
            "Compare methods on all three measures together.", ""]
    out += [compare(a, b, what) for a, b, what in FINDINGS]
    out += bench_section(ROOT / "docs" / "results" / "bench_cpu_small")
    bench = RESULTS / "bench_layer_h100.txt"
    if bench.exists():
        out += ["", "## Compressing one 4096 x 11008 layer on an H100", "",
                "`python scripts/bench_layer.py --device cuda --repeat 2` (synthetic Gaussian weight with 1% outlier "
                "columns, 4,096 calibration tokens):", "", "```", bench.read_text().rstrip(), "```"]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sweep-args", action="store_true", help="print the NAME:FLAGS specs for sweep.sh")
    p.add_argument("--missing", action="store_true", help="with --sweep-args: only runs without a record")
    args = p.parse_args()
    if args.sweep_args:
        seen = dict((name, flags) for _, name, flags in RUNS
                    if not (args.missing and (RESULTS / f"{name}.json").exists()))
        print(" ".join(shlex.quote(f"{n}:{f}") for n, f in seen.items()))
        return
    path = ROOT / "docs" / "RESULTS.md"
    path.write_text(render())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
