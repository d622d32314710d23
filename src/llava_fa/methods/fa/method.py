"""`fa`: LLaVA-FA, quantization of the weight's Fourier spectrum (PolarQuant codes; `-O structure=joint`
adds the paper's FourierSVD low-rank part, which did not pay at equal bits: docs/results/fa_rank_study.md;
optional diagonal calibration ODC), calibration-free by default. Stored in the
`fourier` format. Best LLaVA-FA form measured so far (bounded CPU evaluation, testbed 1): error feedback
on the input-axis spectrum, picked by budget alone with `-m fa-gptq -O axis=input -O bpw=X` (see
`--help-method fa-gptq`).
"""

from __future__ import annotations

import torch
from torch import nn

from llava_fa.errors import ConfigError
from llava_fa.formats.fourier import FourierLinear
from llava_fa.calibration.stats import SQ, LayerStats
from llava_fa.methods.base import Method, register_method
from llava_fa.methods.fa.budget import plan_layer
from llava_fa.methods.fa.config import FAConfig
from llava_fa.methods.fa.fit import fit_layer
from llava_fa.methods.fa.odc import column_scales, row_scales


@register_method
class FA(Method):
    name = "fa"
    Config = FAConfig
    needs = frozenset()  # calibration-free by default; an instance with --odc calibrated needs `sq`

    def __init__(self, config: FAConfig | None = None):
        super().__init__(config)
        if self.config.odc == "calibrated":
            self.needs = frozenset({SQ})

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        try:
            plan_layer(self.config, linear.out_features, linear.in_features)
        except ConfigError as e:
            raise ConfigError(f"{e} (layer {name})") from None

    def compress(self, weight: torch.Tensor, stats: LayerStats | None, bias: torch.Tensor | None = None
                 ) -> FourierLinear:
        c = self.config
        m, n = weight.shape
        params = plan_layer(c, m, n)
        W = weight.detach().float()
        cols = column_scales(W, c.odc, c.odc_alpha, stats, c.modality)
        rows = row_scales(W if cols is None else W * cols, c.odc_alpha) if c.odc_rows else None
        result = fit_layer(W, params, cols, rows, c.iters, bias, c.scale_search, c.svd, c.svd_power_iters)
        # Per-iteration weighted errors, for reports (a plain attribute: not stored).
        result.layer.fit_history = result.history
        return result.layer
