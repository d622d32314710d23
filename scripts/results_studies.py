"""Sections of docs/RESULTS.md on the studies beside the sweep: the figures (scripts/plots.py) with notes
on the layer studies, error feedback for LLaVA-FA, the circulant ODC option and the baselines' properties."""

from __future__ import annotations

import json

from plots import render_plots
from results_records import subset_in_words
from results_runs import ROOT


def figures_section() -> list[str]:
    """Figures drawn by scripts/plots.py from the sweep records and docs/results/layer_studies.json."""
    drawn = render_plots(ROOT)
    if not drawn:
        return []
    lines = ["", "## Figures", "",
             "Drawn by `python scripts/render_results.py` (through `scripts/plots.py`). The layer figures read "
             "`docs/results/layer_studies.json`, made on CPU by `python scripts/layer_studies.py` (testbed layers.10 "
             "q_proj, up_proj, down_proj; 16 calibration samples; about 2.5 minutes on 2 cores).", ""]
    studies = ROOT / "docs" / "results" / "layer_studies.json"
    for title, png in drawn:
        lines += [f"### {title}", "", f"![{title}]({png.relative_to(ROOT / 'docs').as_posix()})", ""]
    if studies.exists():
        lines += layer_study_notes(json.loads(studies.read_text()))
    return lines


def rank_for_energy(sv: list[float], share: float = 0.9) -> int:
    """The fewest leading singular values holding `share` of the energy (sum of squares)."""
    total, acc = sum(v * v for v in sv), 0.0
    for i, v in enumerate(sv, 1):
        acc += v * v
        if acc >= share * total:
            return i
    return len(sv)


def layer_study_notes(st: dict) -> list[str]:
    """Generated sentences on the layer studies (numbers read from the JSON)."""
    out = ["Read from `docs/results/layer_studies.json`:", ""]
    for name, sp in st["spectra"].items():
        out.append(f"- `{name}`: the full unitary fft2 keeps W's singular values (max difference "
                   f"{sp['max_abs_diff_fft2_spatial']:.1e}); rank holding 90% of the energy: spatial "
                   f"{rank_for_energy(sp['spatial'])} of {len(sp['spatial'])}, rfft2 half spectrum "
                   f"{rank_for_energy(sp['rfft2'])} of {len(sp['rfft2'])}.")
    for name, tr in st["truncation"].items():
        sp, hf = tr["spatial"], tr["rfft2"]
        same = [(r, e) for r, e in zip(hf["ranks"], hf["rel_error"]) if r == 64]
        sp64 = dict(zip(sp["ranks"], sp["rel_error"])).get(64)
        if same and sp64 is not None:
            budget = dict(zip(hf["ranks"], hf["stored_reals"]))[64]
            sp_eq = min((e for r, e, n in zip(sp["ranks"], sp["rel_error"], sp["stored_reals"]) if n <= budget))
            out.append(f"- `{name}` truncation: rank 64 leaves {same[0][1]:.3f} (half spectrum) vs {sp64:.3f} (spatial); "
                       f"at the half spectrum's rank-64 storage ({budget:,} reals) the spatial truncation leaves {sp_eq:.3f}.")
    for name, runs in st["convergence"].items():
        for r in runs:
            h = r["rel_history"]
            if len(h) > 1:
                out.append(f"- `{name}` alternation, rank {r['rank']} ({r['bpw']:.2f} bpw): weighted error "
                           f"{h[0]:.4f} -> {h[-1]:.4f} over {len(h)} iterations, best iterate {r['best'] + 1}.")
    return out + [""]


def feedback_study_section() -> list[str]:
    """docs/results/fa_feedback_study.txt (scripts/fa_feedback_study.py) with a generated summary."""
    path = ROOT / "docs" / "results" / "fa_feedback_study.txt"
    if not path.exists():
        return []
    text = path.read_text().rstrip()
    err: dict[str, dict[str, float]] = {}
    for line in text.splitlines()[2:]:
        layer, rest = line[:28].strip(), line[29:]
        label, value = rest[:36].strip(), float(rest.split()[-1])
        err.setdefault(layer, {})[label] = value
    fb, nofb = "fa-gptq", "fa-gptq without feedback"
    def beats(ref: str) -> int:
        return sum(e[fb] < e[ref] for e in err.values())
    ratio = [e[fb] / e["fa quant rfft2, ODC calibrated"] for e in err.values()]
    return ["", "## Error feedback for LLaVA-FA (`fa-gptq`, ours)", "",
            "`python scripts/fa_feedback_study.py > docs/results/fa_feedback_study.txt` (CPU): the analysis says "
            "LLaVA-FA lacks GPTQ's error feedback. With the DFT along the output axis only, GPTQ's column loop runs "
            "unchanged on complex columns with the real Hessian, and PolarQuant 2+4 rounds each column. On these "
            f"{len(err)} layers, at 3.13 bpw, feedback lowers the activation-weighted error below: no feedback "
            f"on {beats(nofb)}/{len(err)}, `fa` with calibrated ODC on {beats('fa quant rfft2, ODC calibrated')}/"
            f"{len(err)} (by {1 - max(ratio):.0%} to {1 - min(ratio):.0%}), GPTQ 3-bit (3.30 bpw) on "
            f"{beats('gptq 3-bit g64')}/{len(err)}, block Hadamard + GPTQ on {beats('hadamard + gptq 3-bit g64')}/"
            f"{len(err)}. `fa-gptq` stores it as a `fourier` layer. End to end it does not carry over: on the "
            "CPU subset " + subset_in_words("fa-gptq3")
            + " against " + subset_in_words("gptq3") + " and " + subset_in_words("fa3-odccal") + ": lower layer error and better "
            "perplexity than GPTQ, but easy-VQA and KL are worse. Lower activation error on the 32 calibration "
            "samples did not buy fidelity on other prompts here; we keep `fa-gptq` as an experiment, not a default.",
            "", "```", text, "```"]


def odc_circulant_section() -> list[str]:
    """docs/results/odc_circulant_study.txt (scripts/odc_circulant_study.py) with a generated summary."""
    path = ROOT / "docs" / "results" / "odc_circulant_study.txt"
    if not path.exists():
        return []
    text = path.read_text().rstrip()
    rows = [line.split() for line in text.splitlines()[2:]]
    share = [float(r[1]) for r in rows]
    diag_cv, lam_cv = [float(r[2]) for r in rows], [float(r[3]) for r in rows]
    off, a, b = ([float(r[i]) for r in rows] for i in (5, 6, 7))
    return ["", "## ODC option (B), the nearest circulant of X^T X: measured, not built", "",
            "`python scripts/odc_circulant_study.py > docs/results/odc_circulant_study.txt` (CPU). A circulant is "
            "diagonal in the Fourier basis, so its eigenvalues could weight LLaVA-FA's spectral columns directly. "
            f"On these {len(rows)} layers the nearest circulant keeps only {min(share):.1%} to {max(share):.1%} of "
            "X^T X (its energy sits on a few channels of the diagonal, which averaging along wrapped diagonals "
            f"spreads out), and its eigenvalues are nearly flat (CV {min(lam_cv):.2f}-{max(lam_cv):.2f}, against "
            f"{min(diag_cv):.2f}-{max(diag_cv):.2f} for the diagonal option A scales by). Emulated on `fa` "
            f"quant-only, option B lowers the activation error below ODC off on {sum(x < y for x, y in zip(b, off))}/"
            f"{len(rows)} layers; option A (calibrated) on {sum(x < y for x, y in zip(a, off))}/{len(rows)}. So "
            "`fa` offers A only.", "", "```", text, "```"]


def baseline_properties_section() -> list[str]:
    path = ROOT / "docs" / "results" / "baseline_properties.json"
    if not path.exists():
        return []
    d = json.loads(path.read_text())
    lines = ["", "## Each baseline's paper property on real weights", "",
             f"`{d['command']}` (CPU, {d['seconds']:.0f} s): testbed decoder layers "
             f"{', '.join(n.split('language_model.')[-1] for n in d['layers'])}; calibration {d['calibration']}. `act` = ||(W - W')X^T|| / ||W X^T||, "
             "`weight` = ||W - W'|| / ||W||; change = method error / baseline error - 1 (min .. max over layers).", "",
             "| property | metric | holds | change (min .. max) |", "|---|---|---|---|"]
    for key, summ in d["summary"].items():
        rows = [r for r in d["rows"] if r["property"] == key]
        ch = [r["method_error"] / r["baseline_error"] - 1 for r in rows]
        lines.append(f"| {summ['claim']} | {rows[0]['metric']} | {summ['holds']}/{summ['layers']} | "
                     f"{min(ch):+.1%} .. {max(ch):+.1%} |")
    return lines


# Studies run after the sweep, each with its commands and figures in its own record (CPU unless said).
LATER_STUDIES = (
    ("fa_transform_study.md", "`rfft` against `rfft2` at equal bits (why fa's default transform is rfft)"),
    ("fa_input_axis_study.txt", "error feedback on the input-axis spectrum (`fa-gptq -O axis=input`), layer level"),
    ("fa_gptq_input_cpu/README.md", "`fa-gptq -O axis=input` end to end against block Hadamard + GPTQ (bounded eval)"),
    ("fa_gptq_ablation_cpu/README.md", "calibration size, damping and act-order against that gap, one at a time "
                                       "(bounded eval; GPTQ's CPU checkpoints depend on the thread count)"),
    ("fa_rank_study.md", "where fa's low-rank part pays, at equal bits (why fa's default structure is quant)"),
    ("allocation_cpu/README.md", "per-layer bit allocation (`llava-fa allocate`) against uniform GPTQ (bounded eval)"),
    ("memory_bounded_cpu.md", "peak memory of streamed compression on a random 1B Llama"),
    ("memory_bounded_load_cpu.md", "peak memory of loading and evaluating compressed folders"),
    ("scale_h200x2/README.md", "every method's wall time and peak GPU memory on a 7B-shaped decoder (one H200), and "
                              "distributed compression on 1 and 2 H200s (GPU)"),
)


def later_studies_section() -> list[str]:
    """Links to the studies that came after the testbed sweep; their figures live in their records."""
    out = ["", "## Later studies", "", "Not part of the sweep above; each record holds its commands and figures:", ""]
    return out + [f"- [{name}](results/{name}): {what}" for name, what in LATER_STUDIES] + [""]
