"""The options of `fa-gptq`, and the `fourier` layer parameters they give."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from llava_fa.errors import ConfigError
from llava_fa.methods.base import MethodConfig, option


@dataclass
class FAGPTQConfig(MethodConfig):
    mag_bits: int = option(2, "bits of each complex coefficient's magnitude code")
    phase_bits: int = option(4, "bits of each complex coefficient's phase code")
    real_bits: int | None = option(None, "bits of the codes of the real DC/Nyquist rows (axis=output) or columns "
                                         "(axis=input); none: ceil((mag_bits + phase_bits) / 2)")
    group_size: int = option(64, "coefficients sharing one magnitude scale, consecutive along a spectral row "
                                 "(axis=output: input columns, must divide the inputs; axis=input: frequencies, "
                                 "a row's last group may be shorter)")
    levels: Literal["uniform", "lloyd"] = option("lloyd", "magnitude levels: uniform midpoints, or Lloyd-Max "
                                                          "levels fitted to the unquantized spectrum (stored)")
    damp: float = option(0.01, "added to H's diagonal, as a fraction of its mean")
    modality: Literal["all", "text", "image"] = option("all", "tokens whose X^T X forms H")
    axis: Literal["output", "input"] = option(
        "output", "axis of the 1-D DFT the feedback runs on: output (rfft_out: each column of W becomes a column "
                  "of m/2+1 complex coefficients, H stays the layer's H) or input (rfft: each row of W becomes n/2+1 "
                  "complex coefficients, the layer that runs as one FFT of the activation plus a GEMV; H becomes "
                  "T H T^T in the real DFT basis T and each (Re, Im) pair is rounded and fed back as a block)")

    def check(self) -> None:
        for key in ("mag_bits", "phase_bits"):
            if not 1 <= getattr(self, key) <= 8:
                raise ConfigError(f"fa-gptq: {key} must be from 1 to 8, got {getattr(self, key)}")
        if self.real_bits is not None and not 1 <= self.real_bits <= 8:
            raise ConfigError(f"fa-gptq: real_bits must be from 1 to 8, got {self.real_bits}")
        if self.group_size <= 0:
            raise ConfigError(f"fa-gptq: group_size must be positive, got {self.group_size}")
        if not 0 <= self.damp < 1:
            raise ConfigError(f"fa-gptq: damp must be in [0, 1), got {self.damp}")
        if self.axis not in ("output", "input"):
            raise ConfigError(f"fa-gptq: axis must be output or input, got {self.axis!r}")

    def layer_params(self) -> dict:
        """A plain `fourier` layer: the spectrum along `axis`, codes only (no low-rank part, no ODC)."""
        real_bits = self.real_bits or math.ceil((self.mag_bits + self.phase_bits) / 2)
        transform = "rfft_out" if self.axis == "output" else "rfft"
        return {"transform": transform, "rank": 0, "lr_bits": 8, "codes": True, "quantizer": "polar",
                "mag_bits": self.mag_bits, "phase_bits": self.phase_bits, "real_bits": real_bits,
                "group_size": self.group_size, "levels": self.levels, "col_scales": False, "row_scales": False}
