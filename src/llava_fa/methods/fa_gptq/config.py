"""The options of `fa-gptq`, and the `fourier` layer parameters they give."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from llava_fa.errors import ConfigError
from llava_fa.methods.base import MethodConfig, option
from llava_fa.methods.fa_gptq.budget import FORMS, Form, choose_form

# Without bpw: the defaults below (None in the fields, so that bpw can tell a value the user gave).
DEFAULT_MAG_BITS, DEFAULT_PHASE_BITS, DEFAULT_GROUP_SIZE = 2, 4, 64


@dataclass
class FAGPTQConfig(MethodConfig):
    mag_bits: int | None = option(None, f"bits of each complex coefficient's magnitude code; none: "
                                        f"{DEFAULT_MAG_BITS}, or the form bpw picks")
    phase_bits: int | None = option(None, f"bits of each complex coefficient's phase code; none: "
                                          f"{DEFAULT_PHASE_BITS}, or the form bpw picks")
    real_bits: int | None = option(None, "bits of the codes of the real DC/Nyquist rows (axis=output) or columns "
                                         "(axis=input); none: ceil((mag_bits + phase_bits) / 2)")
    group_size: int | None = option(None, f"coefficients sharing one magnitude scale, consecutive along a spectral "
                                          f"row (axis=output: input columns, must divide the inputs; axis=input: "
                                          f"frequencies, a row's last group may be shorter); none: "
                                          f"{DEFAULT_GROUP_SIZE}, or the form bpw picks")
    levels: Literal["uniform", "lloyd"] = option("lloyd", "magnitude levels: uniform midpoints, or Lloyd-Max "
                                                          "levels fitted to the unquantized spectrum (stored)")
    damp: float = option(0.01, "added to H's diagonal, as a fraction of its mean")
    modality: Literal["all", "text", "image"] = option("all", "tokens whose X^T X forms H")
    axis: Literal["output", "input"] = option(
        "input", "axis of the 1-D DFT the feedback runs on (default input: lower layer error and KL than output on "
                 "the testbed, docs/results/fa_gptq_input_cpu, and the form the fused kernel runs): output (rfft_out: each column of W becomes a column "
                  "of m/2+1 complex coefficients, H stays the layer's H) or input (rfft: each row of W becomes n/2+1 "
                  "complex coefficients, the layer that runs as one FFT of the activation plus a GEMV; H becomes "
                  "T H T^T in the real DFT basis T and each (Re, Im) pair is rounded and fed back as a block)")
    bpw: float | None = option(
        None, "target bits per weight, every stored bit counted as the fourier format counts it: picks per layer "
              "the costliest measured form that fits (methods/fa_gptq/budget.py: PolarQuant "
              + ", ".join(f"{f.mag_bits}+{f.phase_bits}" for f in FORMS)
              + f" in groups of {FORMS[0].group_size}, about 2.64 / 3.14 / 4.14 bpw with axis=input); "
              "do not also give mag_bits, phase_bits or group_size. Best form measured: -O axis=input -O bpw=X")

    def check(self) -> None:
        for key in ("mag_bits", "phase_bits", "real_bits"):
            value = getattr(self, key)
            if value is not None and not 1 <= value <= 8:
                raise ConfigError(f"fa-gptq: {key} must be from 1 to 8, got {value}")
        if self.group_size is not None and self.group_size <= 0:
            raise ConfigError(f"fa-gptq: group_size must be positive, got {self.group_size}")
        if self.bpw is not None:
            if not self.bpw > 0:
                raise ConfigError(f"fa-gptq: bpw must be positive, got {self.bpw}")
            given = [f"{k}={getattr(self, k)}" for k in ("mag_bits", "phase_bits", "group_size")
                     if getattr(self, k) is not None]
            if given:
                raise ConfigError(f"fa-gptq: bpw={self.bpw} picks mag_bits, phase_bits and group_size per layer, "
                                  f"but {', '.join(given)} was also given. Fix: drop {', '.join(given)} "
                                  f"(or drop bpw to set the bits yourself)")
        if not 0 <= self.damp < 1:
            raise ConfigError(f"fa-gptq: damp must be in [0, 1), got {self.damp}")
        if self.axis not in ("output", "input"):
            raise ConfigError(f"fa-gptq: axis must be output or input, got {self.axis!r}")

    def layer_params(self, m: int | None = None, n: int | None = None) -> dict:
        """A plain `fourier` layer: the spectrum along `axis`, codes only (no low-rank part, no ODC).
        With bpw the form depends on the layer's shape (m outputs, n inputs), which must then be given."""
        if self.bpw is None:
            return self._params(Form(self.mag_bits or DEFAULT_MAG_BITS, self.phase_bits or DEFAULT_PHASE_BITS,
                                     self.group_size or DEFAULT_GROUP_SIZE, ""))
        if m is None or n is None:
            raise ValueError("fa-gptq: with bpw the form is chosen per layer; pass the layer's shape (m, n)")
        return choose_form(self.bpw, m, n, self._params)

    def _params(self, form: Form) -> dict:
        real_bits = self.real_bits or math.ceil((form.mag_bits + form.phase_bits) / 2)
        transform = "rfft_out" if self.axis == "output" else "rfft"
        return {"transform": transform, "rank": 0, "lr_bits": 8, "codes": True, "quantizer": "polar",
                "mag_bits": form.mag_bits, "phase_bits": form.phase_bits, "real_bits": real_bits,
                "group_size": form.group_size, "levels": self.levels, "col_scales": False, "row_scales": False}
