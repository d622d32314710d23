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
    real_bits: int | None = option(None, "bits of the codes of the real DC/Nyquist rows; none: "
                                         "ceil((mag_bits + phase_bits) / 2)")
    group_size: int = option(64, "columns sharing one magnitude scale per spectral row")
    levels: Literal["uniform", "lloyd"] = option("lloyd", "magnitude levels: uniform midpoints, or Lloyd-Max "
                                                          "levels fitted to the unquantized spectrum (stored)")
    damp: float = option(0.01, "added to H's diagonal, as a fraction of its mean")
    modality: Literal["all", "text", "image"] = option("all", "tokens whose X^T X forms H")

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

    def layer_params(self) -> dict:
        """A plain `fourier` layer: the output-axis spectrum, codes only (no low-rank part, no ODC)."""
        real_bits = self.real_bits or math.ceil((self.mag_bits + self.phase_bits) / 2)
        return {"transform": "rfft_out", "rank": 0, "lr_bits": 8, "codes": True, "quantizer": "polar",
                "mag_bits": self.mag_bits, "phase_bits": self.phase_bits, "real_bits": real_bits,
                "group_size": self.group_size, "levels": self.levels, "col_scales": False, "row_scales": False}
