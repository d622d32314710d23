"""From an `FAConfig` and a layer shape to the parameters of its `fourier` layer (rank, bits).

Rule for a bits-per-weight target B (`--bpw`), with bits counted exactly as stored (`Layout`):
- quant: rank 0; the configured code bits if they fit, else lowered (below);
- lowrank: the largest rank whose layer fits; an error if not even rank 1 fits;
- joint: keep the configured code bits if rank 0 fits (else lower them), then spend what is
  left on the largest rank that fits (so at a tight B the rank may be 0).
Lowering the code bits: one bit at a time off the larger of (mag_bits, phase_bits), magnitude first
on a tie (cartesian: one off each, the sum stays even); real_bits follows ceil((b_r + b_theta)/2)
unless set (for transform none, which only has real codes, real_bits itself goes down). Stops with
an error below 1 bit.
Without a target the rank is --rank, or --rank-fraction of the max rank, or DEFAULT_RANK; clamped to
the max rank min(m, h) (h = n//2+1 for rfft/rfft2, n otherwise).
"""

from __future__ import annotations

import math
from typing import Any

from llava_fa.errors import ConfigError
from llava_fa.formats.budget import largest_rank_within
from llava_fa.formats.fourier import Layout
from llava_fa.methods.fa.config import DEFAULT_RANK, FAConfig
from llava_fa.transforms.fourier import spectrum_shape


def max_rank(m: int, n: int, transform: str) -> int:
    return min(spectrum_shape(m, n, transform))


def layer_bits(m: int, n: int, params: dict[str, Any]) -> int:
    return Layout(m, n, params).storage_bits()


def base_params(cfg: FAConfig) -> dict[str, Any]:
    return {"transform": cfg.transform, "rank": 0, "lr_bits": cfg.lr_bits, "codes": cfg.structure != "lowrank",
            "quantizer": cfg.quantizer, "mag_bits": cfg.mag_bits, "phase_bits": cfg.phase_bits,
            "real_bits": cfg.resolved_real_bits(), "group_size": cfg.group_size,
            "levels": cfg.levels if cfg.quantizer == "polar" and cfg.transform != "none" else "uniform",
            "col_scales": cfg.odc != "off", "row_scales": cfg.odc_rows}


def plan_layer(cfg: FAConfig, m: int, n: int) -> dict[str, Any]:
    """The `fourier` layer parameters for an (m, n) weight."""
    p = base_params(cfg)
    rmax = max_rank(m, n, cfg.transform)
    if cfg.bpw is None:
        if cfg.structure == "quant":
            return p
        if cfg.rank_fraction is not None:
            rank = max(1, round(cfg.rank_fraction * rmax))
        else:
            rank = DEFAULT_RANK if cfg.rank is None else cfg.rank
        p["rank"] = min(rank, rmax)
        return p
    budget = math.floor(cfg.bpw * m * n)
    if cfg.structure != "lowrank":
        while layer_bits(m, n, p) > budget:
            if not _lower_bits(p, cfg):
                raise ConfigError(f"fa: --bpw {cfg.bpw} is below what 1-bit codes cost for a {m}x{n} layer "
                                  f"({layer_bits(m, n, p) / (m * n):.3f} bpw); raise --bpw or grow --group-size")
        if cfg.structure == "quant":
            return p
    p["rank"] = largest_rank_within(lambda rank: layer_bits(m, n, {**p, "rank": rank}), budget, rmax)
    if cfg.structure == "lowrank" and p["rank"] == 0:
        raise ConfigError(f"fa: --bpw {cfg.bpw} cannot hold a rank-1 low-rank part of a {m}x{n} layer; raise --bpw")
    return p


def _lower_bits(p: dict[str, Any], cfg: FAConfig) -> bool:
    """Lower the code bits one step (see the module docstring); False when already at the minimum."""
    if p["transform"] == "none":
        if p["real_bits"] <= 1:
            return False
        p["real_bits"] -= 1
        return True
    if p["quantizer"] == "cartesian":
        if p["mag_bits"] + p["phase_bits"] <= 2:
            return False
        half = (p["mag_bits"] + p["phase_bits"]) // 2 - 1
        p["mag_bits"] = p["phase_bits"] = half
    else:
        if p["mag_bits"] + p["phase_bits"] <= 2:
            return False
        key = "mag_bits" if p["mag_bits"] >= p["phase_bits"] else "phase_bits"
        p[key] -= 1
    if cfg.real_bits is None:
        p["real_bits"] = math.ceil((p["mag_bits"] + p["phase_bits"]) / 2)
    return True
