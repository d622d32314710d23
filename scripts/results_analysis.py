"""The written parts of docs/RESULTS.md: the generated comparisons and the analysis. Every figure in
them is read from the records; the reasoning is ours. The runs they name are runs of
examples/bench_testbed.yaml (tests/test_examples.py checks it)."""

from __future__ import annotations

from results_records import (compare, compress_seconds, in_words, load, mean_act_error, runs_in_budget,
                             subset_in_words, worst_layer)
from results_runs import ROOT, UNCOMPRESSED

# (run, run compared with, what the comparison asks), in the report's order.
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
    ("fa4q_odccal", "gptq4", "LLaVA-FA quant-only with calibrated ODC vs GPTQ at about 4 bits"),
    ("hadamard4", "fa4q_odccal", "Rotation baseline (block Hadamard + GPTQ) vs best LLaVA-FA at about 4 bits"),
    ("hadamard3", "fa3j_odccal", "Rotation baseline vs best LLaVA-FA at about 3.3 bits"),
    ("hadamard3", "gptq3", "Rotation + GPTQ vs GPTQ at 3 bits"),
    ("hqq3", "rtn3", "HQQ vs RTN at 3 bits (both calibration-free)"),
    ("hqq4", "rtn4", "HQQ vs RTN at 4 bits (both calibration-free)"),
    ("fa25q_odccal", "lqer2r8", "LLaVA-FA vs LQER at about 2.5 bits"),
    ("fa25q_odccal", "caldera16", "LLaVA-FA vs CALDERA at about 2.5 bits"),
    ("fa25q_odccal", "hadamard25", "LLaVA-FA vs the rotation baseline at about 2.5 bits"),
    ("fa4q_odccal", "caldera_q3", "LLaVA-FA vs CALDERA (3-bit Q + rank-64 4-bit factors) at about 4 bits"),
    ("caldera4", "lqer2r2", "CALDERA vs LQER at 2.33 bpw (2-bit Q plus a small low-rank term)"),
    ("fa1j_odccal", "hadamard1", "LLaVA-FA vs the rotation baseline at its lowest budget (1.3 vs 1.1 bpw)"),
    ("sab", "arbrc", "SAB-LVLM vs ARB-RC (its Lambda-off form)"),
    ("arbrc", "billm", "ARB-RC vs BiLLM"),
    ("sab_q75", "arbrc", "SAB with diff_quantile 0.75 vs ARB-RC"),
]


def comparisons_section() -> list[str]:
    base = load(UNCOMPRESSED)
    per = base["vqa"]["fast"]["per_answer"]
    top = max(per, key=lambda a: per[a]["n"])
    out = ["", "## Comparisons (generated from the rows above)", "",
           f"Reading easy-VQA accuracy: always answering `{top}` scores {per[top]['n'] / base['vqa']['fast']['n']:.2%}; "
           "the testbed's yes/no decisions (three quarters of the questions) sit close to their boundary "
           "(projector-only training), so accuracy falls faster than perplexity and fidelity under compression, "
           "and a model that collapses to one answer can score near that level with a poor perplexity. "
           "Compare methods on all three measures together.", ""]
    return out + [compare(a, b, what) for a, b, what in FINDINGS]


def analysis_section() -> list[str]:
    out = ["", "## Analysis: where LLaVA-FA and SAB-LVLM win, where they do not, and why", "",
           fa_wins(), "", fa_loses(), "", lowrank_does_not_pay(), "", binarization()]
    probe = ROOT / "docs" / "results" / "sab_layer_probe.txt"
    if probe.exists():
        out += ["", "SAB on single layers (`scripts/sab_layer_probe.py`):", "", "```", probe.read_text().rstrip(), "```"]
    return out + ["", caveats()]


def fa_wins() -> str:
    """Where LLaVA-FA wins, and CALDERA's 4-bit row beside it."""
    return ("**LLaVA-FA wins** (1) at about 4 bits: " + in_words("fa4q_odccal") + " beats " + in_words("gptq4") + " and "
            + in_words("hqq4") + " with fewer bits; (2) at about 2.5 bits, where nothing else on the testbed stays usable: "
            + in_words("fa25q_odccal") + " vs " + in_words("lqer2r8") + ", " + in_words("caldera16") + " and the rotation baseline with "
            "2-bit codes in groups of 32, " + in_words("hadamard25") + " (LLaVA-FA spends 0.1-0.2 bpw "
            "more there; at their bits its joint form, " + in_words("fa25j_odccal") + ", is broken too: lower perplexity and KL than both, lower easy-VQA); "
            "(3) on perplexity at about "
            "3.3 bits: " + in_words("fa3j_odccal") + " is the lowest of all ~3-bit runs; (4) in its own ablations, the "
            "Fourier domain is what makes it work: " + in_words("fa3q") + " vs the same quantizer in the spatial domain "
            + in_words("fa3q_none") + ". Calibrated ODC (a diagonal Hessian weight) is worth more than any other option "
            "(`fa3q_odccal` vs `fa3q`, `fa4q_odccal` vs `fa4q`). At about 4 bits it is not alone: CALDERA with a "
            "3-bit Q and rank-64 4-bit factors, " + in_words("caldera_q3") + ", keeps more easy-VQA at equal KL and a "
            "higher perplexity, at " + f"{compress_seconds('caldera_q3') / compress_seconds('fa4q_odccal'):.1f}"
            + " times the compression time (runs shared the GPU, so the seconds are rough).")


def fa_loses() -> str:
    """Where LLaVA-FA loses (the rotation baseline, 2 bits and below), and why."""
    return ("**LLaVA-FA loses** to the rotation baseline at 3 and 4 bits: " + in_words("hadamard4") + " nearly keeps the "
            "uncompressed accuracy, and " + in_words("hadamard3") + " has nearly twice LLaVA-FA's best easy-VQA at about 3 bits. "
            "Both spread outliers with an orthogonal transform (the DFT is one), so incoherence is not the "
            "difference. The difference is error feedback: the rotation baseline quantizes with GPTQ, which uses "
            "the full Hessian X^T X and pushes each column's rounding error onto the columns not yet quantized; "
            "LLaVA-FA's PolarQuant rounds every spectral coefficient independently and ODC sees only the diagonal "
            "of the Hessian. The CPU subset (same questions and windows for all rows, section below) isolates it: "
            "the rotation with round-to-nearest instead of GPTQ, " + subset_in_words("hadamard3-rtn") + ", is worse than plain "
            + subset_in_words("rtn3") + ", while with GPTQ it is the best ~3-bit row, " + subset_in_words("hadamard3") + ". "
            "We tried GPTQ-style feedback in the spectral domain (`fa-gptq`, section below): it lowers the layer "
            "error below GPTQ's, but on the subset it does not turn into easy-VQA or KL, so the gap to the rotation "
            "baseline stays open. At about 2 bits "
            "every method collapses (" + in_words("fa2j_odccal") + ", " + in_words("hadamard2") + ", " + in_words("gptq2") + "), and at "
            "about 1.1 bits nothing works: the best of the " + str(len(runs_in_budget(1.0, 1.3))) + " runs there "
            "by perplexity is " + in_words(runs_in_budget(1.0, 1.3)[0]) + "; the scalar quantizers and LLaVA-FA run into "
            "the millions (" + in_words("hadamard1") + ", " + in_words("gptq1") + ", " + in_words("fa1j_odccal") + "; LLaVA-FA cannot "
            "go below 1.22 bpw on the 192x576 `k_proj` at its default group size, so its run sits at 1.3). An "
            "easy-VQA score near a third at these budgets is a model answering one class, not a working model "
            "(see the note on the VQA columns).")


def lowrank_does_not_pay() -> str:
    """Why the low-rank part of LLaVA-FA and the factor-only baselines do not pay here."""
    return ("**The low-rank part of LLaVA-FA does not pay on this model.** The half spectrum is more compact than the "
            "spatial matrix at equal rank (see the figures), but a complex rank costs about twice the reals, and these "
            "weights are far from low-rank (90% of the energy needs hundreds of ranks). At a fixed budget, rank 0 "
            "(quant-only) gives the lowest layer error (error against rank), and on the model the joint form trades "
            "easy-VQA for perplexity (`fa3j` vs `fa3q`). The pure low-rank baselines collapse for the same reason, "
            "at every budget from 1.1 to 4 bpw: " + in_words("svdllm4") + ", " + in_words("svdllm3") + ", " + in_words("asvd4") + ", "
            + in_words("asvd3") + " (at 1.1 bpw SVD-LLM has the lowest perplexity and KL of all methods and is still "
            "unusable). ASVD's scaling still lowers the activation error against plain SVD "
            "and SVD-LLM lowers it further on every layer checked (properties table), so the ranking among them is "
            "as published; the budget is just far too small for factors alone.")


def binarization() -> str:
    """The published order of the binarization family against ours, and SAB's broken layer."""
    return ("**Binarization (issue: the published order is BiLLM < ARB-RC < SAB).** With every stored bit counted, "
            "the family costs 2.8-3.2 bpw on this 576-wide decoder (row scales and means per 128-column block are "
            "expensive at this width); its sign codes alone are about 1.08 bits per weight, the papers' convention. "
            "At that point the 135M decoder loses most of its function under every method (KL above 2). On the "
            f"layer-level activation error the published order holds: BiLLM {mean_act_error('billm')} > ARB-RC {mean_act_error('arbrc')} > "
            f"SAB {mean_act_error('sab')} (mean over the 210 layers; ARB-X {mean_act_error('arbx')} is best). End to end it does not: "
            + in_words("billm") + ", " + in_words("arbrc") + ", " + in_words("sab") + ". We traced SAB's loss to one layer, "
            + worst_layer("sab", "arbrc") + " (per-layer rows of the compress reports). "
            "Lambda = r rho + (1 - r)(1 - rho) runs from 1 - r (weights both modalities use, rho = 0) to r (weights "
            "one modality uses, rho = 1). On single layers with the uncompressed model's statistics "
            "(`python scripts/sab_layer_probe.py > docs/results/sab_layer_probe.txt`, printed below) the same layer "
            "breaks, and r is close to 1 there (one-modality weights, mostly image-specific, hold nearly all of the "
            "significance), so Lambda down-weights the shared weights. That alone is not the cause: clamping Lambda at "
            "0.5 does not remove the blow-up in the pipeline (" + worst_layer("sab_floor05", "arbrc") + ") nor in "
            "the probe. In the probe, letting Lambda also steer the salient-column and group selection removes it "
            "(the scales are then fitted with the weighting the groups were chosen by); in the pipeline (statistics "
            "from the partly compressed model) that did not help (" + worst_layer("sab_steer", "arbrc") + "), while a stricter modality split (diff_quantile "
            "0.75) did (" + worst_layer("sab_q75", "arbrc") + ") and gives SAB's best run: " + in_words("sab_q75") + ". "
            "Our reading, consistent with both but not proven: the blow-up comes from scale fits whose weighting "
            "disagrees with the selection, amplified by the GPTQ feedback, and which layer breaks is fragile. "
            "The spread between the SAB "
            "settings (PPL from hundreds to thousands at nearly equal mean layer error) says the end-to-end order "
            "at about 1 bit on a 135M model is dominated by which single layers break, so we do not read the "
            "published order as refuted; it is not reproduced here. The papers evaluate 3B-8B models with 128 "
            "calibration samples; ours has 64 image tokens per sample and 32 samples.")


def caveats() -> str:
    """What limits every conclusion above."""
    return ("**Caveats.** One small model (SmolLM2-135M, whose weights were a 4-bit GGUF file), one seed, a projector "
            "trained alone (easy-VQA answers sit near their decision boundary, so accuracy moves faster than "
            "perplexity), runs of the second sweep shared one GPU four at a time (their `s` column includes that).")
