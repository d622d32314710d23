"""`fa-gptq -O bpw=B`: the form of each layer from a short table of measured forms.

Rule: per layer (m outputs, n inputs), of the forms in `FORMS` whose `fourier` layer stores at most
floor(B * m * n) bits, the one that stores the most; at equal bits the one with more phase bits.
Bits are counted by the format itself (`Layout(m, n, params).storage_bits()`, the same buffers the
compressed layer holds: codes, group scales, Lloyd levels, the real DC/Nyquist codes and scales),
with every other option of the config (axis, levels, real_bits) as given. No form fits: ConfigError
naming the cheapest form's bpw for that shape.

The table holds only forms measured end to end with `fa-gptq -O axis=input` on testbed 1 (bounded
CPU evaluation, docs/results/fa_gptq_input_cpu/README.md); nothing in between is interpolated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from llava_fa.errors import ConfigError
from llava_fa.methods.fa.budget import layer_bits  # the fourier format's own count of stored bits


@dataclass(frozen=True)
class Form:
    mag_bits: int
    phase_bits: int
    group_size: int
    record: str  # the measured run it comes from (docs/results/fa_gptq_input_cpu/)

    def label(self) -> str:
        return f"PolarQuant {self.mag_bits}+{self.phase_bits}, groups of {self.group_size}"


# Cheapest first. Records are the bounded CPU evaluations of docs/results/fa_gptq_input_cpu/ (the
# bpw is the testbed's mean with axis=input: 4 WikiText-2 windows, 300 easy-VQA questions, 64 KL prompts).
FORMS: tuple[Form, ...] = (
    # 2.638 bpw: PPL 56.86, easy-VQA 52.67%, KL 1.086 (also "fa-gptq input 2+3" of fa_input_axis_study.txt).
    Form(2, 3, 64, "fa_gptq_input_23.json"),
    # 3.136 bpw: PPL 34.16, easy-VQA 69.67%, KL 0.669 (fa-gptq's default bits). Chosen over 3+3, which has
    # the same code bits and 64 more bits of Lloyd levels per layer: 3+3 was measured only per layer
    # (fa_input_axis_study.txt), never end to end, and the phase-heavy split is the one `fa` found
    # better at equal bits (scripts/fa_layer_study.py); 2+4 vs 3+3 under feedback is not measured.
    Form(2, 4, 64, "fa_gptq_input.json"),
    # 4.136 bpw: PPL 26.11, easy-VQA 87.67%, KL 0.232.
    Form(3, 5, 64, "fa_gptq_input_35.json"),
)


def choose_form(bpw: float, m: int, n: int, params_of: Callable[[Form], dict[str, Any]]) -> dict[str, Any]:
    """The `fourier` layer parameters of the form the rule above picks for an (m, n) weight;
    `params_of` turns a form into full layer parameters (the config's other options)."""
    budget = math.floor(bpw * m * n * (1 + 1e-12))  # a target typed as a form's own bpw reaches that form
    costed = [(layer_bits(m, n, params_of(f)), f) for f in FORMS]
    fitting = [(bits, f) for bits, f in costed if bits <= budget]
    if not fitting:
        bits, cheapest = min(costed, key=lambda bf: bf[0])
        need = math.ceil(bits / (m * n) * 1000) / 1000
        raise ConfigError(f"fa-gptq: -O bpw={bpw} is below the cheapest measured form for a {m}x{n} layer "
                          f"({cheapest.label()}: {bits / (m * n):.4f} bpw). Fix: raise bpw to at least {need:.3f}, "
                          f"or drop bpw and give mag_bits/phase_bits/group_size yourself")
    _, best = max(fitting, key=lambda bf: (bf[0], bf[1].phase_bits))
    return params_of(best)
