"""Recommended options by bit budget, as measured on the testbed (docs/RESULTS.md).

Each preset is one run of examples/bench_testbed.yaml (its name cited), with the bits per weight it
stored (every bit of the decoder linears) and what it scored on an H100 over the full easy-VQA test
split and all of WikiText-2. The uncompressed testbed: perplexity 21.31, easy-VQA 87.77%. A
preset is what was measured, not a promise: a collapsed row says the budget is too small for the method
on this 135M decoder. The binarization family is listed at its ~1.1-bit budget (about 1.08 bits of
sign codes, the papers' convention); with every stored bit counted it costs 2.8-3.2 bpw.

`BOUNDED_PRESETS` is a separate group: runs measured only on `eval`'s bounded CPU evaluation
(BOUNDED_EVAL says which), each citing its JSON record instead of a run of bench_testbed.yaml. Their
figures are not comparable with the full-split ones, and `--help-method` prints them under their
own heading.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    budget: str  # the bit budget it answers: "~4 bpw", or "~1.1 sign" (bits of sign codes, binarization)
    options: tuple[tuple[str, object], ...]  # -O KEY=VALUE pairs (none: the method's defaults)
    bpw: float  # measured, every stored bit counted
    ppl: float  # WikiText-2 perplexity
    vqa: float  # easy-VQA accuracy (fast mode), fraction
    kl: float  # KL(uncompressed || compressed) per token
    run: str  # its name in examples/bench_testbed.yaml (bounded presets: its record, see BOUNDED_RECORDS)
    evaluation: str = "full"  # "full": H100, full splits (docs/RESULTS.md); "bounded-cpu": see BOUNDED_EVAL

    def flags(self) -> str:
        return " ".join(f"-O {k}={v}" for k, v in self.options) or "(defaults)"

    def result(self) -> str:
        return f"PPL {self.ppl:,.2f}, easy-VQA {self.vqa:.2%}, KL {self.kl:.3f}"


def _p(budget, options, bpw, ppl, vqa, kl, run) -> Preset:
    return Preset(budget, tuple(options.items()), bpw, ppl, vqa, kl, run)


_G64, _G32 = {"group_size": 64}, {"group_size": 32}
PRESETS: dict[str, tuple[Preset, ...]] = {
    "rtn": (_p("~4 bpw", {"bits": 4, **_G64}, 4.312, 28.13, .4261, 1.348, "rtn4"),
            _p("~3 bpw", {"bits": 3, **_G64}, 3.297, 76.15, .3548, 2.955, "rtn3"),
            _p("~2.5 bpw", {"bits": 2, **_G32}, 2.562, 27602.43, .2956, 10.176, "rtn25")),
    "gptq": (_p("~4 bpw", {"bits": 4, **_G64}, 4.312, 26.00, .6744, 0.619, "gptq4"),
             _p("~3 bpw", {"bits": 3, **_G64}, 3.297, 52.97, .4304, 1.843, "gptq3"),
             _p("~2.5 bpw", {"bits": 2, **_G32}, 2.562, 7650.45, .1965, 7.086, "gptq25")),
    "hqq": (_p("~4 bpw", {"bits": 4}, 4.312, 28.37, .4902, 1.388, "hqq4"),
            _p("~3 bpw", {"bits": 3}, 3.297, 72.30, .3470, 2.848, "hqq3"),
            _p("~2.5 bpw", {"bits": 2, **_G32}, 2.562, 21300.01, .1705, 9.768, "hqq25")),
    "hadamard": (_p("~4 bpw", {"bits": 4}, 4.314, 23.40, .8737, 0.231, "hadamard4"),
                 _p("~3 bpw", {"bits": 3}, 3.298, 34.46, .6975, 0.832, "hadamard3"),
                 _p("~2.5 bpw", {"bits": 2, **_G32}, 2.564, 1462.86, .2169, 4.814, "hadamard25")),
    # measured with rfft2, fa's default transform before rfft (as good at equal bits: fa_transform_study.md)
    "fa": (_p("~4 bpw", {"transform": "rfft2", "structure": "quant", "mag_bits": 3, "phase_bits": 5,
                         "odc": "calibrated"}, 4.160, 24.42, .7299, 0.607, "fa4q_odccal"),
           _p("~3 bpw", {"transform": "rfft2", "structure": "joint", "bpw": 3.3, "odc": "calibrated"}, 3.284, 33.43, .3626, 2.102,
              "fa3j_odccal"),
           _p("~2.5 bpw", {"transform": "rfft2", "structure": "quant", "mag_bits": 2, "phase_bits": 3,
                           "odc": "calibrated"}, 2.659, 109.08, .3533, 4.311, "fa25q_odccal")),
    "lqer": (_p("~4 bpw", {"bits": 3, "rank": 32}, 4.067, 34.92, .3877, 1.508, "lqer3"),
             _p("~3 bpw", {"bits": 2, "rank": 32}, 3.052, 1755.71, .0849, 8.101, "lqer2"),
             _p("~2.5 bpw", {"bits": 2, "rank": 8}, 2.474, 19338.02, .1707, 10.337, "lqer2r8")),
    "caldera": (_p("~4 bpw", {"q_bits": 3}, 4.090, 30.48, .8239, 0.605, "caldera_q3"),
                _p("~3 bpw", {}, 3.075, 756.83, .3470, 3.988, "caldera"),
                _p("~2.5 bpw", {"rank": 16}, 2.480, 8477.50, .1871, 6.914, "caldera16")),
    "asvd": (_p("~4 bpw", {"bpw": 4}, 3.979, 93958042.65, .0587, 16.962, "asvd4"),
             _p("~3 bpw", {"bpw": 3}, 2.984, 91577967.31, .0572, 19.828, "asvd3"),
             _p("~2.5 bpw", {"bpw": 2.5}, 2.484, 16174894162.15, .0568, 26.041, "asvd25")),
    "svd-llm": (_p("~4 bpw", {"bpw": 4}, 3.979, 3087.01, .3733, 3.912, "svdllm4"),
                _p("~3 bpw", {"bpw": 3}, 2.984, 6689.28, .3725, 4.375, "svdllm3"),
                _p("~2.5 bpw", {"bpw": 2.5}, 2.484, 14352.85, .3644, 5.120, "svdllm25")),
    "pb-llm": (_p("~1.1 sign", {}, 3.071, 1044.98, .3645, 5.951, "pbllm"),),
    "billm": (_p("~1.1 sign", {}, 3.167, 5603.96, .1622, 6.810, "billm"),),
    "arb": (_p("~1.1 sign", {}, 3.167, 367.65, .3713, 3.290, "arb"),),
    "arb-x": (_p("~1.1 sign", {}, 3.167, 199.16, .3347, 2.225, "arbx"),),
    "arb-rc": (_p("~1.1 sign", {}, 2.783, 699.55, .2114, 3.166, "arbrc"),),
    "sab": (_p("~1.1 sign", {"diff_quantile": 0.75}, 2.783, 530.35, .3129, 3.829, "sab_q75"),
            _p("~1.1 sign", {}, 2.783, 2020.04, .3561, 7.378, "sab")),
    # "higgs": not yet measured (no run in examples/bench_testbed.yaml), so --help-method lists no preset for it.
}

# --- Measured on the bounded CPU evaluation only (not the full-split H100 runs above) -------------
# Testbed 1, compressed and evaluated on 2 CPU cores in float32 (docs/results/fa_gptq_input_cpu/README.md).
# The runs gave the bits explicitly (fa-gptq's defaults 2+4; -O mag_bits=3 -O phase_bits=5;
# -O mag_bits=2 -O phase_bits=3); the bpw targets below pick, layer for layer, those very forms
# (methods/fa_gptq/budget.py; tests/test_fa_gptq_bpw.py checks every module's stored bits against the
# record). Figures copied from the records (bpw: size.decoder_linear.bpw, PPL: perplexity.ppl, easy-VQA:
# vqa.fast.accuracy of 300, KL: fidelity.kl), rounded. No full-split run of `fa-gptq -O axis=input` is
# recorded yet (the fagi* runs of examples/bench_testbed2.yaml are planned, not done).
BOUNDED_EVAL = ("bounded CPU evaluation: 4 WikiText-2 windows of 2048 tokens, the first 300 easy-VQA test questions "
                "(fast mode), KL on 64 prompts")
BOUNDED_RECORDS = "docs/results/fa_gptq_input_cpu/"
_IN = {"axis": "input"}
BOUNDED_PRESETS: dict[str, tuple[Preset, ...]] = {
    "fa-gptq": (
        Preset("~4 bpw", tuple({**_IN, "bpw": 4.2}.items()), 4.136, 26.11, .8767, 0.232,
               "fa_gptq_input_35.json", "bounded-cpu"),
        Preset("~3 bpw", tuple({**_IN, "bpw": 3.2}.items()), 3.136, 34.16, .6967, 0.669,
               "fa_gptq_input.json", "bounded-cpu"),
        Preset("~2.5 bpw", tuple({**_IN, "bpw": 2.7}.items()), 2.638, 56.86, .5267, 1.086,
               "fa_gptq_input_23.json", "bounded-cpu"),
    ),
}


def describe_presets(method: str) -> str:
    """The presets of a method as lines for `--help-method`, or "" when none was measured."""
    lines = []
    presets = PRESETS.get(method, ())
    if presets:
        lines.append("recommended options by budget (measured on the testbed, H100, full splits; uncompressed: "
                     "PPL 21.31, easy-VQA 87.77%; run names from examples/bench_testbed.yaml, docs/RESULTS.md):")
        if presets[0].budget.endswith("sign"):
            lines.append("  (~1.1 sign: about 1.08 bits of sign codes per weight; the bpw column counts every "
                         "stored bit)")
        lines += [_line(p) for p in presets]
    bounded = BOUNDED_PRESETS.get(method, ())
    if bounded:
        lines.append(f"recommended options by budget, measured on the {BOUNDED_EVAL} (not comparable with "
                     f"full-split figures; records in {BOUNDED_RECORDS}):")
        lines += [_line(p) for p in bounded]
    return "\n".join(lines)


def _line(p: Preset) -> str:
    return f"  {p.budget:<10} {p.flags():<64} {p.bpw:.3f} bpw  {p.result()}  [{p.run}]"
