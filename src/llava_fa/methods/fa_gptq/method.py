"""`fa-gptq`: LLaVA-FA's PolarQuant with GPTQ's error feedback (ours; see docs/RESULTS.md).

The spectrum along the output axis keeps the layer's real Hessian, so the shared column loop
(quantizers/feedback.py) rounds its complex columns with PolarQuant and pushes each column's error
onto the columns still to come (the package docstring says why). With `axis=input` the loop runs on
the input-axis spectrum in the real DFT basis instead (input_axis.py). Stored through
`FourierLinear.from_codes` as a plain `fourier` layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llava_fa.calibration.stats import XTX, LayerStats
from llava_fa.errors import ConfigError
from llava_fa.formats.fourier import FourierLinear
from llava_fa.formats.fourier_layout import Layout, SpectrumCodes
from llava_fa.methods.base import Method, register_method
from llava_fa.methods.fa_gptq.config import FAGPTQConfig
from llava_fa.methods.fa_gptq.input_axis import input_axis_codes
from llava_fa.quantizers.feedback import feedback_quantize
from llava_fa.quantizers.hessian import prepare_hessian
from llava_fa.quantizers.polar import MidriseColumns, PolarColumns, polar_quantize
from llava_fa.transforms import fourier as ft


@register_method
class FAGPTQ(Method):
    name = "fa-gptq"
    Config = FAGPTQConfig
    needs = frozenset({XTX})

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        self._params(name, linear.out_features, linear.in_features)

    def _params(self, name: str, m: int, n: int) -> dict[str, Any]:
        """The layer's `fourier` parameters (with bpw: the form chosen for its shape), checked against it."""
        try:
            params = self.config.layer_params(m, n)
        except ConfigError as e:
            raise ConfigError(f"{e} (layer {name})") from None
        if self.config.axis == "input":
            return params  # the input-axis groups run along each spectral row; its last group may be shorter
        if m % 2:
            raise ConfigError(f"fa-gptq needs an even number of outputs; {name} has {m}. Fix: --ignore it")
        if n % params["group_size"]:
            raise ConfigError(f"fa-gptq: group_size {params['group_size']} does not divide the {n} inputs of "
                              f"{name}. Fix: pick a divisor of {n}")
        return params

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> FourierLinear:
        if stats is None:
            raise ConfigError("fa-gptq needs calibration data (X^T X); do not pass --nsamples 0")
        c, (m, n) = self.config, weight.shape
        params = self._params("this layer", m, n)
        prepared = prepare_hessian(weight, stats.hessian(c.modality).to(weight.device), c.damp, method="fa-gptq")
        if c.axis == "input":
            # The damped H (dead inputs handled as GPTQ does) is rotated into the real DFT basis there.
            codes, _ = input_axis_codes(prepared.weight, prepared.hessian, params, c.damp)
        else:
            codes = spectrum_codes_with_feedback(prepared.weight, prepared.hinv_chol, params)
        return FourierLinear.from_codes(m, n, params, codes, bias=bias)


@torch.no_grad()
def spectrum_codes_with_feedback(W: torch.Tensor, U: torch.Tensor, params: dict[str, Any]) -> SpectrumCodes:
    """The codes of the `fourier` layer (transform rfft_out) of W (m, n), chosen column by column with
    GPTQ's error feedback through U, the upper Cholesky factor of H^-1.

    The complex rows of the spectrum take PolarQuant codes, the real DC/Nyquist rows symmetric real
    codes; rows never mix in the feedback, so the two kinds run as two loops over the same U. The
    magnitude levels come from the unquantized spectrum (the loop keeps them fixed)."""
    (m, n), group = W.shape, params["group_size"]
    S = ft.forward(W, "rfft_out")
    real = ft.real_rows(m, "rfft_out")
    cplx = [k for k in range(S.shape[0]) if k not in real]
    vc, _ = ft.gather(S, n, "rfft_out")
    groups = Layout(m, n, params).entry_groups(W.device)[0]
    levels = polar_quantize(vc, groups, params["mag_bits"], params["phase_bits"], params["levels"]).levels
    polar = PolarColumns(len(cplx), n, group, levels, params["phase_bits"])
    midrise = MidriseColumns(len(real), n, group, params["real_bits"], W.device)
    # One block of all columns: every column's feedback reaches the later ones at once, the order of
    # floating-point updates the method was tuned with (lazy blocks would only reassociate them).
    feedback_quantize(S[cplx].clone(), U, polar, block_size=n, group_size=group)
    feedback_quantize(S[real].real.clone(), U, midrise, block_size=n, group_size=group)
    return SpectrumCodes(mag_codes=polar.mag, phase_codes=polar.phase, mag_scales=polar.scales, mag_levels=levels,
                         real_codes=midrise.codes, real_scales=midrise.steps)
