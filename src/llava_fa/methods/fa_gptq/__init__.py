"""`fa-gptq`: LLaVA-FA's PolarQuant with GPTQ's error feedback (ours; see docs/RESULTS.md).

LLaVA-FA rounds every spectral coefficient on its own. With the DFT along the output axis only
(`rfft_out`: each column of W becomes a column of (m/2+1) complex coefficients), the layer loss
tr(D H D^T) keeps the same real Hessian H, because the transform is unitary on the other side. So
GPTQ's column loop runs unchanged on complex columns: round column j with PolarQuant, divide its
error by U_jj and push it onto the columns still to come (U: upper Cholesky factor of H^-1).
A group's scales are fixed when the loop reaches its first column (as GPTQ fixes its grids); the
Lloyd magnitude levels are fitted once on the unquantized spectrum. The DC and Nyquist rows are real
and take symmetric real codes. Stored as a plain `fourier` layer (transform rfft_out, rank 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from llava_fa.errors import ConfigError
from llava_fa.formats.fourier import FourierLinear
from llava_fa.calibration.stats import XTX, LayerStats
from llava_fa.methods.base import Method, MethodConfig, register_method
from llava_fa.quantizers.binarize import prepare_hessian
from llava_fa.quantizers.packing import pack
from llava_fa.quantizers.polar import (f16_up, midrise_codes, midrise_values, polar_quantize, polar_round,
                                       to_bits)
from llava_fa.transforms import fourier as ft


@dataclass
class FAGPTQConfig(MethodConfig):
    mag_bits: int = 2
    phase_bits: int = 4
    real_bits: int | None = None  # codes of the real DC/Nyquist rows; None: ceil((mag + phase) / 2)
    group_size: int = 64
    levels: Literal["uniform", "lloyd"] = "lloyd"
    damp: float = 0.01
    modality: Literal["all", "text", "image"] = "all"

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
        real_bits = self.real_bits or math.ceil((self.mag_bits + self.phase_bits) / 2)
        return {"transform": "rfft_out", "rank": 0, "lr_bits": 8, "codes": True, "quantizer": "polar",
                "mag_bits": self.mag_bits, "phase_bits": self.phase_bits, "real_bits": real_bits,
                "group_size": self.group_size, "levels": self.levels, "col_scales": False, "row_scales": False}


@register_method
class FAGPTQ(Method):
    name = "fa-gptq"
    Config = FAGPTQConfig
    needs = frozenset({XTX})

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        self._check_shape(name, linear.out_features, linear.in_features)

    def _check_shape(self, name: str, m: int, n: int) -> None:
        if m % 2:
            raise ConfigError(f"fa-gptq needs an even number of outputs; {name} has {m}. Fix: --ignore it")
        if n % self.config.group_size:
            raise ConfigError(f"fa-gptq: group_size {self.config.group_size} does not divide the {n} inputs of "
                              f"{name}. Fix: pick a divisor of {n}")

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> FourierLinear:
        if stats is None:
            raise ConfigError("fa-gptq needs calibration data (X^T X); do not pass --nsamples 0")
        c, (m, n) = self.config, weight.shape
        self._check_shape("this layer", m, n)
        W, _, U = prepare_hessian(weight, stats.hessian(c.modality).to(weight.device), c.damp)
        layer = FourierLinear(n, m, bias is not None, **c.layer_params()).to(weight.device)
        layer.set_bias(bias)
        S = ft.forward(W, "rfft_out")
        real = ft.real_rows(m, "rfft_out")
        cplx = [k for k in range(S.shape[0]) if k not in real]
        p = layer.params()
        # Magnitude levels from the unquantized spectrum (the loop keeps them fixed).
        vc, _ = ft.gather(S, n, "rfft_out")
        levels = polar_quantize(vc, layer.entry_groups()[0], c.mag_bits, c.phase_bits, c.levels).levels
        codes = feedback_loop(S[cplx].clone(), S[real].real.clone(), U, levels, c.group_size, c.phase_bits,
                              p["real_bits"])
        mag, phase, mag_scales, real_codes, real_steps = codes
        layer.mag_codes, layer.phase_codes = pack(mag.reshape(-1), c.mag_bits), pack(phase.reshape(-1), c.phase_bits)
        layer.mag_scales = to_bits(mag_scales.reshape(-1))
        if c.levels == "lloyd":
            layer.mag_levels = to_bits(levels)
        layer.real_codes = pack(real_codes.reshape(-1), p["real_bits"])
        layer.real_scales = to_bits(real_steps.reshape(-1))
        return layer


@torch.no_grad()
def feedback_loop(Sc: torch.Tensor, Sr: torch.Tensor, U: torch.Tensor, levels: torch.Tensor, group: int,
                  phase_bits: int, real_bits: int):
    """GPTQ over the columns of the complex rows Sc (hc, n) and the real rows Sr (hr, n), in place.
    Returns magnitude codes, phase codes (hc, n), magnitude scales (hc, n/group), real codes (hr, n),
    real steps (hr, n/group)."""
    hc, n = Sc.shape
    mag = torch.zeros(hc, n, dtype=torch.int64, device=Sc.device)
    phase = torch.zeros_like(mag)
    real_codes = torch.zeros(Sr.shape, dtype=torch.int64, device=Sc.device)
    scales = torch.zeros(hc, n // group, device=Sc.device)
    steps = torch.zeros(Sr.shape[0], n // group, device=Sc.device)
    maxq = (1 << real_bits) - 1
    for k, g0 in enumerate(range(0, n, group)):
        scales[:, k] = f16_up(Sc[:, g0:g0 + group].abs().amax(1))
        steps[:, k] = f16_up(2 * Sr[:, g0:g0 + group].abs().amax(1) / maxq)
        for j in range(g0, g0 + group):
            mag[:, j], phase[:, j], qc = polar_round(Sc[:, j], scales[:, k], levels, phase_bits)
            real_codes[:, j] = midrise_codes(Sr[:, j], steps[:, k], real_bits)
            qr = midrise_values(real_codes[:, j], steps[:, k], real_bits)
            d = U[j, j]
            Sc[:, j + 1:] -= ((Sc[:, j] - qc) / d)[:, None] * U[j, j + 1:][None, :]
            Sr[:, j + 1:] -= ((Sr[:, j] - qr) / d)[:, None] * U[j, j + 1:][None, :]
    return mag, phase, scales, real_codes, steps
