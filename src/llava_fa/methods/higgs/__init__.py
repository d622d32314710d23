"""`higgs`: HIGGS (Malinovskii et al., "Pushing the limits of LLM quantization via the linearity theorem"):
a randomized Hadamard rotation per group of inputs, then each p-vector of the normalized group rounded
to an MSE-optimal grid for the standard Gaussian; data-free. Stored in the `higgs` format.

Each group of `group_size` consecutive inputs of a row is rotated by a randomized Hadamard transform
(fixed-seed sign flips, then an orthonormal Walsh-Hadamard transform; transforms/hadamard.py) and
divided by its RMS, which leaves entries close to N(0, 1); vectors of p = 1 or 2 consecutive
entries are then rounded to the nearest point of a grid of 2**(p*bits) points, MSE-optimal for the
standard Gaussian (methods/higgs/grids.py: Lloyd-Max for p = 1, k-means for p = 2; shipped as a
table, methods/higgs/grid_table.py). Stored: the packed codes, one float16 scale per group, the
float16 grid and the sign bits (formats/higgs.py). No calibration data.

Not implemented: the paper's per-layer bit widths chosen from the linearity theorem (a dynamic
program over the layers' error sensitivities); here every selected layer uses `bits`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llava_fa.calibration.stats import LayerStats
from llava_fa.errors import ConfigError
from llava_fa.formats.higgs import HiggsLinear
from llava_fa.methods.base import Method, MethodConfig, option, register_method
from llava_fa.methods.higgs.grids import gaussian_grid, nearest_exact
from llava_fa.transforms.hadamard import hadamard_block, random_signs, rotate_weight

__all__ = ["HiggsConfig", "Higgs", "HiggsLinear", "effective_group", "higgs_codes"]

MIN_GROUP = 16  # below this a group's RMS is a poor estimate of its scale and the scales cost >= 1 bpw


@dataclass
class HiggsConfig(MethodConfig):
    bits: int = option(4, "bits per weight of the codes: each p-vector gets a p*bits-bit code (p*bits at most 8)")
    p: int = option(2, "dimension of the grid's vectors: 1 (Lloyd-Max levels) or 2 (a 2-D grid of 2**(2*bits) "
                       "points, better at equal bits)")
    group_size: int = option(1024, "inputs per Hadamard rotation and float16 scale, consecutive along a row, a power "
                                   "of two; a layer whose width it does not divide uses the largest power of two "
                                   f"that does (at least {MIN_GROUP})")
    seed: int = option(0, "seed of the random sign flips of the rotation (the signs themselves are stored)")

    def check(self) -> None:
        if self.p not in (1, 2):
            raise ConfigError(f"higgs: p must be 1 or 2, got {self.p}. Fix: -O p=2 (or p=1)")
        if not 1 <= self.bits or self.p * self.bits > 8:
            raise ConfigError(f"higgs: p * bits must be from 1 to 8 (codes of at most 8 bits), got p={self.p}, "
                              f"bits={self.bits}. Fix: bits from 1 to {8 // self.p} with p={self.p}")
        g = self.group_size
        if g < MIN_GROUP or g & (g - 1):
            raise ConfigError(f"higgs: group_size must be a power of two, at least {MIN_GROUP}, got {g}. "
                              "Fix: -O group_size=1024 (or 64, 128, 256, 512)")


def effective_group(group_size: int, in_features: int) -> int:
    """The group of a layer: `group_size`, or the largest power of two dividing the width if smaller."""
    return min(group_size, hadamard_block(in_features))


def higgs_codes(Wr: torch.Tensor, grid: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (m, n/p) and float16-exact scales (m, n/group) of a rotated weight on a (K, p) grid."""
    m, n = Wr.shape
    groups = Wr.reshape(m, n // group, group)
    scale = groups.square().mean(-1).sqrt().to(torch.float16).float()  # the RMS, as stored
    z = groups / torch.where(scale > 0, scale, torch.ones_like(scale))[..., None]
    codes = nearest_exact(z.reshape(-1, grid.shape[1]), grid).reshape(m, n // grid.shape[1])
    return codes, scale


@register_method
class Higgs(Method):
    name = "higgs"
    Config = HiggsConfig
    needs = frozenset()

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        n = linear.in_features
        if effective_group(self.config.group_size, n) < MIN_GROUP:
            raise ConfigError(f"higgs: {name} has {n} inputs, whose largest power-of-two divisor is "
                              f"{hadamard_block(n)}: groups of fewer than {MIN_GROUP} inputs. Fix: --ignore it")

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> HiggsLinear:
        c = self.config
        n = weight.shape[1]
        group = effective_group(c.group_size, n)
        if group < MIN_GROUP:
            raise ConfigError(f"higgs: a width of {n} has no power-of-two group of {MIN_GROUP} or more inputs")
        d = random_signs(n, c.seed).to(weight.device).float()
        Wr = rotate_weight(weight.detach().float(), d, group)
        # quantize against the grid as stored (float16), so the codes are the nearest stored points
        grid = gaussian_grid(c.p, c.bits).to(torch.float16).float().to(weight.device)
        codes, scale = higgs_codes(Wr, grid, group)
        return HiggsLinear.from_codes(codes, scale, grid, d, bits=c.bits, bias=bias)
