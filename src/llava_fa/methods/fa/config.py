"""Options of `fa` (LLaVA-FA) and the checks that reject impossible combinations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from llava_fa.errors import ConfigError
from llava_fa.methods.base import MethodConfig, option

DEFAULT_RANK = 8  # used by --structure joint/lowrank when neither rank, rank_fraction nor bpw is given


@dataclass
class FAConfig(MethodConfig):
    transform: Literal["rfft2", "rfft", "fft2", "none"] = option(
        "rfft", "domain of the approximation: 1-D spectrum along the input axis (the default: as good as rfft2 at "
                "equal bits, docs/results/fa_transform_study.md, and the fused GPU kernel runs it 2-4x faster), half "
                "2-D spectrum, full 2-D spectrum (stores twice the reals: an ablation), or the weight itself "
                "(spatial control)")
    # quant is the default: at equal bits the low-rank part ties at rank 4 and loses at rank 8 or more on
    # real layers (docs/results/fa_rank_study.md; it pays on q_proj only), and on the testbed's full splits
    # quant had lower KL at fewer bits (fa3q_odccal 3.16 bpw KL 1.637 vs fa3j_odccal 3.28 bpw KL 2.102).
    structure: Literal["joint", "lowrank", "quant"] | None = option(
        None, "quant: codes only (rank 0); joint: low-rank + quantized residual (the paper's form); lowrank: "
              "low-rank part only; default quant, or joint when rank or rank_fraction is given")
    # Joint at rank 0 is the same as quant, so rank sweeps can start at 0.
    rank: int | None = option(None, "absolute rank of the spectral low-rank part, clamped to the layer's max rank "
                                    f"min(m, h) (default {DEFAULT_RANK} without rank_fraction or bpw)")
    rank_fraction: float | None = option(None, "rank as a fraction of the max rank min(m, h), in (0, 1]")
    lr_bits: int = option(8, "low-rank factors: 16 (float16) or 8 / 4 (symmetric, one scale per component)")
    quantizer: Literal["polar", "cartesian"] = option(
        "polar", "codes of complex entries: PolarQuant (magnitude and phase) or cartesian "
                 "((mag_bits + phase_bits)/2 bits to each of the real and imaginary part)")
    # Phase gets 2 more bits: on the testbed's spectra the equal split b+b has ~30% more error than
    # (b-1)+(b+1) at the same bits (scripts/fa_layer_study.py).
    mag_bits: int = option(2, "PolarQuant magnitude bits b_r, 1 to 8")
    phase_bits: int = option(4, "PolarQuant phase bits b_theta, 1 to 8")
    # A complex code spends b_r + b_theta bits on 2 reals, hence the default.
    real_bits: int | None = option(None, "bits of each real stored value (self-conjugate entries; all of W for "
                                         "transform none); default ceil((b_r + b_theta)/2)")
    group_size: int = option(64, "entries per scale, consecutive along a row of the grid; -1: one group per row")
    levels: Literal["uniform", "lloyd"] = option(
        "lloyd", "PolarQuant magnitude levels (ignored by cartesian and by transform none, which store uniform codes)")
    # Never worse than the plain absmax, at ~17x the (cheap) quantization time.
    scale_search: bool = option(True, "per-group clipping search of every scale (codes and quantized factors) "
                                      "by squared error, instead of the plain absmax")
    odc: Literal["off", "data-free", "calibrated"] = option(
        "data-free", "diagonal column scales before the transform (methods/fa/odc.py): off, from the weight's "
                     "column RMS, or from the inputs' mean x^2 (needs calibration data)")
    odc_alpha: float = option(0.5, "ODC exponent in [0, 2]: data-free c_j = colRMS_j^-alpha, calibrated "
                                   "c_j = mean(x_j^2)^(alpha/2)")
    odc_rows: bool = option(False, "also row scales r_i = rowRMS_i^-alpha (of the column-scaled weight)")
    modality: Literal["all", "text", "image"] = option("all", "tokens whose statistics calibrated ODC uses")
    iters: int = option(5, "alternations of low-rank fit and quantization (joint only), >= 1; the best is kept")
    # Randomized: the top `rank` triplets only, each alternation warm-started from the last right
    # factor; within 1% of the exact fit's error on real layers (docs/results/fa_speed_cpu.md).
    svd: Literal["randomized", "exact"] = option(
        "randomized", "SVD of the low-rank step: randomized (range finder over rank + max(12, rank/2) probes "
                      "with power iterations, warm-started between alternations; exact SVD where the rank is near full) "
                      "or exact (full SVD, then truncated)")
    svd_power_iters: int = option(3, "power iterations of the randomized SVD, >= 0 (more: closer to exact, slower)")
    bpw: float | None = option(None, "target bits per weight, every stored bit counted: chooses the rank and "
                                     "lowers the code bits if even rank 0 does not fit (methods/fa/budget.py)")

    def __post_init__(self) -> None:
        if self.structure is None:  # a rank asks for a low-rank part: the joint form
            self.structure = "joint" if (self.rank or 0) > 0 or self.rank_fraction is not None else "quant"

    def resolved_real_bits(self) -> int:
        return self.real_bits if self.real_bits is not None else math.ceil((self.mag_bits + self.phase_bits) / 2)

    def check(self) -> None:
        for key in ("mag_bits", "phase_bits"):
            if not 1 <= getattr(self, key) <= 8:
                raise ConfigError(f"fa: --{key.replace('_', '-')} must be from 1 to 8, got {getattr(self, key)}")
        if not 1 <= self.resolved_real_bits() <= 8:
            raise ConfigError(f"fa: --real-bits must be from 1 to 8, got {self.real_bits}")
        if self.lr_bits not in (16, 8, 4):
            raise ConfigError(f"fa: --lr-bits must be 16, 8 or 4, got {self.lr_bits}")
        if self.group_size != -1 and self.group_size <= 0:
            raise ConfigError(f"fa: --group-size must be positive or -1 (one group per row), got {self.group_size}")
        if self.iters < 1:
            raise ConfigError(f"fa: --iters must be at least 1, got {self.iters}")
        if self.svd not in ("randomized", "exact"):
            raise ConfigError(f"fa: --svd must be randomized or exact, got {self.svd!r}")
        if self.svd_power_iters < 0:
            raise ConfigError(f"fa: --svd-power-iters must be >= 0, got {self.svd_power_iters}")
        if not 0 <= self.odc_alpha <= 2:
            raise ConfigError(f"fa: --odc-alpha must be in [0, 2], got {self.odc_alpha}")
        if self.odc_rows and self.odc == "off":
            raise ConfigError("fa: --odc-rows needs --odc data-free or calibrated")
        if self.quantizer == "cartesian":
            if (self.mag_bits + self.phase_bits) % 2:
                raise ConfigError(f"fa: cartesian codes give (mag_bits + phase_bits)/2 bits to the real and to the "
                                  f"imaginary part; the sum must be even, got {self.mag_bits} + {self.phase_bits}")
        if self.transform == "none" and self.quantizer != "polar":
            raise ConfigError("fa: --transform none quantizes real weights with --real-bits; --quantizer cartesian "
                              "only applies to complex spectra")
        if self.rank is not None and self.rank_fraction is not None:
            raise ConfigError("fa: give --rank or --rank-fraction, not both")
        if self.rank is not None and self.rank < 0:
            raise ConfigError(f"fa: --rank must be >= 0, got {self.rank}")
        if self.rank_fraction is not None and not 0 < self.rank_fraction <= 1:
            raise ConfigError(f"fa: --rank-fraction must be in (0, 1], got {self.rank_fraction}")
        if self.bpw is not None:
            if self.bpw <= 0:
                raise ConfigError(f"fa: --bpw must be positive, got {self.bpw}")
            if self.rank is not None or self.rank_fraction is not None:
                raise ConfigError("fa: --bpw chooses the rank; do not also give --rank or --rank-fraction")
        if self.structure == "quant" and ((self.rank or 0) > 0 or self.rank_fraction is not None):
            raise ConfigError("fa: --structure quant has no low-rank part; drop --rank/--rank-fraction "
                              "(or use --structure joint)")
        if self.structure == "lowrank" and self.rank == 0:
            raise ConfigError("fa: --structure lowrank needs a rank > 0")
