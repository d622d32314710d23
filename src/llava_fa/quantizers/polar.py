"""Grouped quantizers for vectors of complex (and real) coefficients: PolarQuant and its controls.

Values come as a flat vector with a group id per entry (`Groups`): one scale per group, stored as
float16 and rounded *before* the codes are chosen, so the error optimized is the stored error.

- PolarQuant (`polar_quantize`): z = rho e^{i theta}. The phase takes b_theta bits, uniform levels
  -pi + k 2pi/2^b_theta on [-pi, pi) (k = 0 and 2^(b-1) are -pi and 0, so real values stay on the
  real axis). The magnitude takes b_r bits: levels l_k in [0, 1] times the group scale, either
  uniform midpoints (k + 1/2)/2^b_r or Lloyd-Max levels fitted to the layer's normalized
  magnitudes (2^b_r float16 levels, stored). The magnitude code is picked after the phase code:
  the nearest level to p = rho cos(theta - theta_hat) = Re(z e^{-i theta_hat}), which minimizes
  |z - l e^{i theta_hat}| over the levels (quantizing rho itself ignores that a phase error
  shortens the useful component). The group scale is the group's max of p.
- Cartesian (`cartesian_quantize`, the ablation): real and imaginary parts with b bits each,
  symmetric midrise levels, one scale per group shared by both parts (absmax over both).
- Real (`sym_quantize`): symmetric midrise, levels step * (q - (2^b - 1)/2), q in [0, 2^b - 1].
  Midrise (no zero level) so that 1 bit works.
- Column by column (`PolarColumns`, `MidriseColumns`): the same roundings as rounders of the
  feedback loop (quantizers/feedback.py), a group's scale fixed when the loop reaches its first
  column (fa-gptq).

Scales: the group's absmax (max p for PolarQuant), or with `search` the best of SEARCH times it
per group by squared error (a clipping search, as in AWQ/OmniQuant's clip search): at 1-2 bits the
absmax grid wastes its outer levels on rare large values (1-bit absmax on Gaussian data has an
error above the data itself). The absmax candidate is among them, so search never does worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# from_bits / to_bits: re-exported, callers of this module store the scales it returns.
from llava_fa.quantizers.float16 import f16_round, f16_up, from_bits, to_bits  # noqa: F401

# --- groups --------------------------------------------------------------------------------------

@dataclass
class Groups:
    """Group id of each entry of a flat vector, and the number of groups."""

    gid: torch.Tensor
    count: int


def row_groups(counts: torch.Tensor, group_size: int) -> Groups:
    """Groups of `group_size` consecutive entries that never cross a row, for rows holding `counts`
    entries each, entries in row-major order; a row's last group may be shorter. -1: one group per row.
    The ids are the only entry-sized tensor built (a layer holds millions of entries: per-entry
    temporaries were the peak of fa's memory)."""
    counts = counts.long()
    width = int(counts.max()) if counts.numel() else 0
    if width == 0:
        return Groups(torch.zeros(0, dtype=torch.long, device=counts.device), 0)
    g = width if group_size == -1 else group_size
    per_row = (counts + g - 1) // g
    offsets = torch.cumsum(per_row, 0) - per_row
    columns = torch.arange(width, device=counts.device)
    grid = offsets[:, None] + (columns // g)[None, :]  # ids on a full (rows, width) grid
    gid = grid.reshape(-1) if bool((counts == width).all()) else grid[columns[None, :] < counts[:, None]]
    return Groups(gid, int(per_row.sum()))


def flat_groups(n: int, group_size: int, device=None) -> Groups:
    """Groups of `group_size` consecutive entries of the whole vector (-1: one group)."""
    g = max(n, 1) if group_size == -1 else group_size
    return Groups(torch.arange(n, device=device) // g, (n + g - 1) // g)


def row_groups_count(counts: list[int], group_size: int) -> int:
    """Number of groups `row_groups` makes for rows holding `counts` entries."""
    if group_size == -1:
        return sum(1 for c in counts if c)
    return sum(-(-c // group_size) for c in counts)


def flat_groups_count(n: int, group_size: int) -> int:
    if n == 0:
        return 0
    return 1 if group_size == -1 else -(-n // group_size)


def group_max(values: torch.Tensor, groups: Groups) -> torch.Tensor:
    """Max of non-negative values per group."""
    out = torch.zeros(groups.count, device=values.device, dtype=torch.float32)
    return out.scatter_reduce(0, groups.gid, values.float(), reduce="amax", include_self=True)


def group_sum(values: torch.Tensor, groups: Groups, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Sum per group: each group's entries added in order by one segment reduction (the ids are
    sorted). Deterministic on every device, unlike index_add, which on CUDA adds in the order of its
    atomics (two runs stored different scales) and, under torch's deterministic mode, runs a slow path.
    `lengths`: the entries per group, when the caller sums over the same groups several times."""
    if lengths is None:
        lengths = torch.bincount(groups.gid, minlength=groups.count)
    return torch.segment_reduce(values.float(), "sum", lengths=lengths, unsafe=True)


SEARCH = tuple(round(0.2 + 0.05 * k, 2) for k in range(17))  # fractions of the absmax scale, 0.2 .. 1.0


def best_scale(base: torch.Tensor, groups: Groups, sq_error, search: bool) -> torch.Tensor:
    """Per-group scale (float16 values): f16_up(base) or, with `search`, the candidate f16_up(f * base),
    f in SEARCH, whose `sq_error(scale per group) -> squared error per entry` sums lowest in the group."""
    best = f16_up(base)
    if not search:
        return best
    lengths = torch.bincount(groups.gid, minlength=groups.count)  # counted once for the 17 candidates
    best_err = group_sum(sq_error(best), groups, lengths)
    for f in SEARCH[:-1]:
        cand = f16_up(base * f)
        err = group_sum(sq_error(cand), groups, lengths)
        better = err < best_err
        best, best_err = torch.where(better, cand, best), torch.where(better, err, best_err)
    return best


# --- real: symmetric midrise ---------------------------------------------------------------------

def midrise_codes(x: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    maxq = (1 << bits) - 1
    return torch.clamp(torch.round(x / step + maxq / 2), 0, maxq).to(torch.int64)


def midrise_values(codes: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    return step * (codes.float() - ((1 << bits) - 1) / 2)


def sym_quantize(x: torch.Tensor, groups: Groups, bits: int, search: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (int64) and per-group steps (float16 values) of a real vector."""
    x = x.float()

    def sq_error(step):
        s = step[groups.gid]
        return (midrise_values(midrise_codes(x, s, bits), s, bits) - x).pow(2)

    step = best_scale(2 * group_max(x.abs(), groups) / ((1 << bits) - 1), groups, sq_error, search)
    return midrise_codes(x, step[groups.gid], bits), step


def sym_dequantize(codes: torch.Tensor, step: torch.Tensor, groups: Groups, bits: int) -> torch.Tensor:
    return midrise_values(codes, step[groups.gid], bits)


# --- cartesian complex ---------------------------------------------------------------------------

def cartesian_quantize(z: torch.Tensor, groups: Groups, bits: int, search: bool = False):
    """Real and imaginary codes (b bits each) and one step per group for both parts."""
    amax = group_max(torch.maximum(z.real.abs(), z.imag.abs()), groups)

    def sq_error(step):
        s = step[groups.gid]
        return sum((midrise_values(midrise_codes(part, s, bits), s, bits) - part).pow(2) for part in (z.real, z.imag))

    step = best_scale(2 * amax / ((1 << bits) - 1), groups, sq_error, search)
    s = step[groups.gid]
    return midrise_codes(z.real, s, bits), midrise_codes(z.imag, s, bits), step


def cartesian_dequantize(re: torch.Tensor, im: torch.Tensor, step: torch.Tensor, groups: Groups,
                         bits: int) -> torch.Tensor:
    s = step[groups.gid]
    return torch.complex(midrise_values(re, s, bits), midrise_values(im, s, bits))


# --- PolarQuant ----------------------------------------------------------------------------------

def phase_values(codes: torch.Tensor, bits: int) -> torch.Tensor:
    return -math.pi + codes.float() * (2 * math.pi / (1 << bits))


def uniform_levels(bits: int, device=None) -> torch.Tensor:
    k = torch.arange(1 << bits, device=device, dtype=torch.float32)
    return f16_round((k + 0.5) / (1 << bits))


def lloyd_levels(u: torch.Tensor, bits: int, iters: int = 30) -> torch.Tensor:
    """Lloyd-Max levels (1-D k-means) of values in [0, 1], from uniform midpoints; float16-rounded,
    sorted. A level whose cell empties keeps its place. The values are sorted once, so each cell is a
    slice and its mean a plain sum: deterministic on CUDA too (a sum by index over a few cells, with
    index_add, adds in the order of CUDA's atomics, or serially under torch's deterministic mode:
    minutes per 7B layer)."""
    levels = uniform_levels(bits, u.device)
    ordered = torch.sort(u.float().reshape(-1)).values
    for _ in range(iters):
        ends = torch.searchsorted(ordered, (levels[1:] + levels[:-1]) / 2, right=True).tolist() + [ordered.numel()]
        starts = [0] + ends[:-1]  # cell k: the values nearest_level sends to level k (ties go down)
        sums = torch.stack([ordered[a:b].sum() for a, b in zip(starts, ends)])
        cnt = torch.tensor([b - a for a, b in zip(starts, ends)], device=u.device, dtype=levels.dtype)
        new = torch.where(cnt > 0, sums / cnt.clamp_min(1), levels)
        if torch.allclose(new, levels, atol=1e-7):
            break
        levels = new
    return torch.sort(f16_round(levels)).values


def nearest_level(u: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of sorted `levels` for each value."""
    return torch.bucketize(u, (levels[1:] + levels[:-1]) / 2)


@dataclass
class PolarCodes:
    mag: torch.Tensor  # int64 codes, b_r bits
    phase: torch.Tensor  # int64 codes, b_theta bits
    scale: torch.Tensor  # per group, float16 values
    levels: torch.Tensor  # 2^b_r magnitude levels in [0, 1], float16 values


def polar_quantize(z: torch.Tensor, groups: Groups, mag_bits: int, phase_bits: int,
                   levels: str = "uniform", search: bool = False) -> PolarCodes:
    nph = 1 << phase_bits
    theta = torch.angle(z)
    phase = torch.remainder(torch.round((theta + math.pi) * (nph / (2 * math.pi))), nph).to(torch.int64)
    # The component along the chosen direction: >= 0, since the phase error is at most pi/2.
    p = (z * torch.polar(torch.ones_like(theta), -phase_values(phase, phase_bits))).real.clamp_min(0)
    del theta  # entry-sized temporaries freed before the scale search and Lloyd's fit (peak memory)
    uniform = uniform_levels(mag_bits, z.device)

    def sq_error(scale):  # the part of |z - z_hat|^2 the magnitude controls, for the fixed phase
        s = scale[groups.gid]
        return (uniform[nearest_level((p / s).clamp(0, 1), uniform)] * s - p).pow(2)

    # Lloyd levels are fitted after the scale (chosen with uniform levels) fixes the normalization.
    scale = best_scale(group_max(p, groups), groups, sq_error, search)
    u = (p / scale[groups.gid]).clamp(0, 1)
    del p, sq_error  # sq_error holds p
    lv = lloyd_levels(u, mag_bits) if levels == "lloyd" else uniform
    return PolarCodes(nearest_level(u, lv), phase, scale, lv)


def polar_dequantize(mag: torch.Tensor, phase: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor,
                     groups: Groups, phase_bits: int) -> torch.Tensor:
    rho = levels[mag.long()] * scale[groups.gid]
    del mag  # entry-sized: freed before the next ones when the caller passed it without keeping it
    return torch.polar(rho, phase_values(phase, phase_bits))


def polar_round(z: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor, phase_bits: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round entries to fixed per-entry scales and levels (as polar_quantize does once those are
    chosen): (magnitude codes, phase codes, dequantized values). Used by column-wise methods."""
    nph = 1 << phase_bits
    phase = torch.remainder(torch.round((torch.angle(z) + math.pi) * (nph / (2 * math.pi))), nph).to(torch.int64)
    direction = torch.polar(torch.ones_like(scale, dtype=torch.float32), phase_values(phase, phase_bits))
    along = (z * direction.conj()).real.clamp_min(0)
    mag = nearest_level((along / scale).clamp(0, 1).contiguous(), levels)
    return mag, phase, (levels[mag] * scale) * direction


# --- column by column, for the feedback loop -----------------------------------------------------

class PolarColumns:
    """PolarQuant of complex columns (rows, n) with fixed magnitude `levels`; each group of
    `group_size` columns takes, per row, the scale max|z| of its columns when the loop reaches it.
    Keeps magnitude and phase codes (rows, n) and the scales (rows, n / group_size)."""

    def __init__(self, rows: int, n: int, group_size: int, levels: torch.Tensor, phase_bits: int):
        self.group_size, self.levels, self.phase_bits = group_size, levels, phase_bits
        self.mag = torch.zeros(rows, n, dtype=torch.int64, device=levels.device)
        self.phase = torch.zeros_like(self.mag)
        self.scales = torch.zeros(rows, n // group_size, device=levels.device)

    def fit_group(self, span: torch.Tensor, start: int) -> None:
        self.scales[:, start // self.group_size] = f16_up(span.abs().amax(1))

    def round(self, column: torch.Tensor, index: int) -> torch.Tensor:
        scale = self.scales[:, index // self.group_size]
        self.mag[:, index], self.phase[:, index], values = polar_round(column, scale, self.levels, self.phase_bits)
        return values


class MidriseColumns:
    """Symmetric midrise codes of real columns (rows, n); each group of `group_size` columns takes,
    per row, the step 2 max|x| / (2^b - 1) of its columns when the loop reaches it. Keeps the
    codes (rows, n) and the steps (rows, n / group_size)."""

    def __init__(self, rows: int, n: int, group_size: int, bits: int, device: torch.device | None = None):
        self.group_size, self.bits = group_size, bits
        self.codes = torch.zeros(rows, n, dtype=torch.int64, device=device)
        self.steps = torch.zeros(rows, n // group_size, device=device)

    def fit_group(self, span: torch.Tensor, start: int) -> None:
        self.steps[:, start // self.group_size] = f16_up(2 * span.abs().amax(1) / ((1 << self.bits) - 1))

    def round(self, column: torch.Tensor, index: int) -> torch.Tensor:
        step = self.steps[:, index // self.group_size]
        self.codes[:, index] = midrise_codes(column, step, self.bits)
        return midrise_values(self.codes[:, index], step, self.bits)
