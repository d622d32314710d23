"""`fa-gptq -O axis=input`: error feedback on the spectrum along the INPUT axis (transform `rfft`).

The 1-D DFT along the inputs mixes the columns of W, so unlike `rfft_out` the Hessian does not
stay H. It stays real, though: the real DFT basis is a real orthonormal n x n matrix T (rows: the
DC cosine, the Nyquist alternation for even n, and for each complex frequency k a cosine and a sine
row scaled by sqrt(2)), W = C T with C = W T^T, and for E = W - W_hat

    tr(E H E^T) = tr(E_C H' E_C^T),   H' = T H T^T  (real symmetric, damped exactly as H is:
                                                    T (H + lam I) T^T = H' + lam I).

The loop works on C_s = C D^-1, the stored spectrum values themselves (Re and Im of
S = rfft(W, ortho), no sqrt(2)), with D^2 = diag of the Parseval weights (2 complex, 1 real) and
H_s = D H' D: the loss is tr(E_s H_s E_s^T). GPTQ's loop is equivariant under such a diagonal change
of coordinates (U_s = U D^-1, the update reads the same), so the codes are those of the loop on C;
working in stored units means the rounding sees exactly the values `fa` would round (no sqrt(2) ulp).

Loop order of C_s's columns: [DC, Nyquist, Re_1, Im_1, Re_2, Im_2, ...]. The real DC/Nyquist pair
first, as one segment: the format groups their codes (flat, row-major: DC_0, Nyq_0, DC_1, ...)
across both columns, so their steps must be fixed together. Then one segment per PolarQuant group
(group_size consecutive frequencies of a row): its scales are fixed when the loop reaches it, on
its columns as the feedback so far left them (lazy blocks aligned with the groups, so no pending
feedback is missed). Inside a segment the unit is a column (real) or a (Re, Im) pair rounded
jointly by PolarQuant (`pair_round`); a unit's error E (rows, w) is pushed on with GPTVQ's block
rule E U_BB^-1 U_B,rest (U: upper Cholesky factor of H_s^-1), for w = 1 exactly GPTQ's.

A complex segment runs as one Triton kernel where it can (kernels/fa_gptq_segment.py: on a GPU the
loop below is ~57 small ops per pair, launch-bound), else as the loop. Both store the same codes, so
the pair step is written in operations Triton repeats bit for bit: the phase is the direction of
largest projection re cos + im sin over a table of the 2^b directions (the nearest in angle, without
atan2), its cos/sin read from that table (taken once by torch), and the 2x2 triangular solve and the
rank-2 update spelled out as single float32 roundings (no BLAS, no fused multiply-add).
"""

from __future__ import annotations

from typing import Any

import torch

from llava_fa.formats.fourier_layout import Layout, SpectrumCodes
from llava_fa.kernels import fa_gptq_segment
from llava_fa.quantizers.float16 import f16_up
from llava_fa.quantizers.hessian import upper_cholesky_of_inverse
from llava_fa.quantizers.polar import (flat_groups, group_max, midrise_codes, midrise_values, nearest_level,
                                       phase_values, polar_quantize)
from llava_fa.transforms import fourier as ft


# --- the real DFT basis in loop order ---------------------------------------------------------------

def split(n: int) -> tuple[int, int]:
    """(s, K): self-conjugate (real) columns of rfft's half spectrum (DC, and Nyquist for even n) and
    complex columns 1..K in between."""
    return len(ft.self_conjugate_columns(n, "rfft")), (n - 1) // 2


def to_columns(S: torch.Tensor, n: int) -> torch.Tensor:
    """The half spectrum S (r, n//2+1) as real columns in loop order [DC, Nyq, Re_1, Im_1, ...]."""
    s, K = split(n)
    real = S[:, ft.self_conjugate_columns(n, "rfft")].real
    pairs = torch.view_as_real(S[:, 1:1 + K].contiguous()).reshape(S.shape[0], 2 * K)
    return torch.cat([real, pairs], 1)


def from_columns(C: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `to_columns`: the half-spectrum grid (r, n//2+1) of loop-order columns C (r, n)."""
    s, K = split(n)
    dtype = torch.complex128 if C.dtype == torch.float64 else torch.complex64
    S = torch.zeros(C.shape[0], n // 2 + 1, dtype=dtype, device=C.device)
    S[:, ft.self_conjugate_columns(n, "rfft")] = C[:, :s].to(dtype)
    S[:, 1:1 + K] = torch.view_as_complex(C[:, s:].reshape(C.shape[0], K, 2).contiguous()).to(dtype)
    return S


def parseval_weights(n: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """D^2 in loop order: ||W||^2 = sum_j w_j ||C_s[:, j]||^2 (1 for DC/Nyquist, 2 for Re/Im)."""
    s, K = split(n)
    return torch.cat([torch.ones(s, device=device, dtype=dtype), torch.full((2 * K,), 2.0, device=device, dtype=dtype)])


def stored_columns(M: torch.Tensor) -> torch.Tensor:
    """C_s = M T^T D^-1 of a real (r, n) matrix: its rfft (ortho) in loop order, in M's precision."""
    return to_columns(torch.fft.rfft(M, dim=1, norm="ortho"), M.shape[1])


def real_dft_basis(n: int, device=None) -> torch.Tensor:
    """T (n, n) float64, orthonormal, rows in loop order: W = C T with C = W T^T."""
    return (stored_columns(torch.eye(n, dtype=torch.float64, device=device)) * parseval_weights(n, device).sqrt()).T


def spectral_hessian(H: torch.Tensor) -> torch.Tensor:
    """H_s = D T H T^T D (float64): tr(E H E^T) = tr(E_s H_s E_s^T) for E_s = stored_columns(E).

    Two real FFTs instead of forming T: stored_columns(stored_columns(H)^T) = D^-1 T H T^T D^-1, and
    D^2 = the Parseval weights on both sides. Float64 because the damped H is what GPTQ inverts."""
    n = H.shape[0]
    w = parseval_weights(n, H.device)
    Hs = stored_columns(stored_columns(H.double()).T.contiguous())
    Hs = (Hs + Hs.T) / 2  # symmetric to the last bit, for a deterministic Cholesky
    return w[:, None] * Hs * w[None, :]


# --- the loop ---------------------------------------------------------------------------------------

@torch.no_grad()
def input_axis_codes(W: torch.Tensor, H: torch.Tensor, params: dict[str, Any], damp: float
                     ) -> tuple[SpectrumCodes, torch.Tensor]:
    """Codes of the `fourier` layer (transform rfft) of W (m, n), chosen with error feedback under
    the damped Hessian H (n, n) of the inputs. Also returns the rounded columns C_s (loop order),
    exactly what the codes decode to.

    The magnitude levels come from the unquantized spectrum, as on the output axis (the loop keeps
    them fixed)."""
    m, n = W.shape
    S = ft.forward(W, "rfft")
    C = to_columns(S, n)
    U = upper_cholesky_of_inverse(spectral_hessian(H), damp, "fa-gptq").to(C.dtype)
    vc, _ = ft.gather(S, n, "rfft")
    gc = Layout(m, n, params).entry_groups(W.device)[0]
    levels = polar_quantize(vc, gc, params["mag_bits"], params["phase_bits"], params["levels"]).levels
    rounder = PairRounder(m, n, params, levels)
    Q = block_feedback(C, U, rounder)
    return rounder.codes(), Q


def block_feedback(C: torch.Tensor, U: torch.Tensor, rounder: "PairRounder") -> torch.Tensor:
    """Round C (rows, n) in place, segment by segment, unit by unit, with GPTVQ's block feedback.

    A unit B of w columns (1: real, 2: a complex pair) leaves the error E = (C_B - Q_B) U_BB^-1 (the
    columns of B are rounded jointly, so none of them sees another's error first: that is what
    inverting the whole diagonal block accounts for). E U_B,later goes onto the later columns of the
    segment at once, onto the columns past it once per segment (lazy batch: same sums, less traffic).
    A complex segment runs in one kernel launch where Triton runs on C's device. Returns the rounded
    columns."""
    Q = torch.zeros_like(C)
    for seg, (a, b, w) in enumerate(rounder.segments()):
        if w == 2 and fa_gptq_segment.can_run(C, U, b - a):
            rounder.fit(C[:, a:b], seg)  # the kernel reads the segment, never writes it: no copy
            errors = rounder.kernel_segment(C[:, a:b], U[a:b, a:b], seg, Q[:, a:b])
        else:
            C1 = C[:, a:b].clone()  # already holds every earlier segment's feedback
            rounder.fit(C1, seg)
            errors = (real_steps if w == 1 else pair_steps)(C1, U, a, rounder, seg, Q)
        C[:, b:] -= errors @ U[a:b, b:]
    return Q


def real_steps(C1: torch.Tensor, U: torch.Tensor, a: int, rounder: "PairRounder", seg: int,
               Q: torch.Tensor) -> torch.Tensor:
    """The steps of a real segment (w = 1, GPTQ's) on its columns C1 (changed), at column a of C;
    writes Q, returns the errors (rows, b - a)."""
    b = a + C1.shape[1]
    errors = torch.zeros_like(C1)
    for i in range(b - a):
        j, k = a + i, a + i + 1
        q = rounder.round(C1[:, i:i + 1], seg, i)
        Q[:, j:k] = q
        err = torch.linalg.solve_triangular(U[j:k, j:k], C1[:, i:i + 1] - q, upper=True, left=False)
        C1[:, i + 1:] -= err @ U[j:k, k:b]
        errors[:, i:i + 1] = err
    return errors


def pair_steps(C1: torch.Tensor, U: torch.Tensor, a: int, rounder: "PairRounder", seg: int,
               Q: torch.Tensor) -> torch.Tensor:
    """The steps of a complex segment (w = 2) as the kernel runs them, one float32 rounding per
    operation in the kernel's order: E = D U_BB^-1 solved by hand (e0 = d0 / u00, e1 = (d1 - e0 u01)
    / u11) and E U_B,later as e0 u_j + e1 u_j+1 (a BLAS matmul or solve could fuse or reorder)."""
    b = a + C1.shape[1]
    errors = torch.zeros_like(C1)
    for i in range(0, b - a, 2):
        j, k = a + i, a + i + 2
        q = rounder.round(C1[:, i:i + 2], seg, i // 2)
        Q[:, j:k] = q
        d = C1[:, i:i + 2] - q
        e0 = d[:, 0] / U[j, j]
        e1 = (d[:, 1] - e0 * U[j, j + 1]) / U[j + 1, j + 1]
        C1[:, i + 2:] -= e0[:, None] * U[j, k:b] + e1[:, None] * U[j + 1, k:b]
        errors[:, i], errors[:, i + 1] = e0, e1
    return errors


# --- PolarQuant of (Re, Im) pairs, in operations the kernel repeats ---------------------------------

def direction_table(phase_bits: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, cos, sin) of the 2^b phase directions, in the order the phase search tries them.

    From phase 0 (code 2^(b-1)) round to -pi + 2pi/2^b (code 2^(b-1) - 1): a value 0 (every
    projection 0, the first wins) keeps phase 0, as torch.angle gave it. cos and sin are taken once,
    here, by torch (the directions polar_dequantize decodes to); loop and kernel both read them."""
    nph = 1 << phase_bits
    codes = (torch.arange(nph, device=device) + nph // 2) % nph
    d = torch.polar(torch.ones(nph, device=device), phase_values(codes, phase_bits))
    return codes, d.real.contiguous(), d.imag.contiguous()


def nearest_phase(re: torch.Tensor, im: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(phase codes, component along the code's direction, table index) of re + i im: the direction
    of largest projection re cos + im sin = |z| cos(theta - theta_k), i.e. the nearest phase level;
    the first in table order on a tie. The component is >= 0 (clamped as PolarQuant does)."""
    codes, cos, sin = table
    along, t = (re[..., None] * cos + im[..., None] * sin).max(-1)  # max(dim): the first maximal index
    return codes[t], along.clamp_min(0), t


def pair_round(re: torch.Tensor, im: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor,
               table: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PolarQuant of re + i im at per-row scales: (magnitude codes, phase codes, Re and Im of the
    values levels[mag] * scale * direction). The magnitude code is the nearest level to the
    component along the rounded phase, divided by the scale (polar_round's rule)."""
    phase, along, t = nearest_phase(re, im, table)
    mag = nearest_level((along / scale).clamp(0, 1), levels)
    rho = levels[mag] * scale
    return mag, phase, rho * table[1][t], rho * table[2][t]


class PairRounder:
    """The format's roundings of C_s's segments: symmetric midrise codes of the DC/Nyquist columns
    (segment 0), PolarQuant of (Re, Im) pairs (one segment per group of `group_size` frequencies).
    Scales are chosen as `fa` chooses them without search, on the segment when the loop reaches it:
    steps 2 max|x| / (2^b - 1) per flat group of real entries, magnitude scales max of the component
    along the rounded phase per row. So with no feedback (H = I) the codes are plain PolarQuant's."""

    def __init__(self, m: int, n: int, params: dict[str, Any], levels: torch.Tensor):
        self.m, self.n, self.p, self.levels = m, n, params, levels
        self.s, self.K = split(n)
        self.g = params["group_size"]
        dev = levels.device
        self.groups = -(-self.K // self.g)
        self.mag = torch.zeros(m, self.K, dtype=torch.int64, device=dev)
        self.phase = torch.zeros_like(self.mag)
        self.scales = torch.zeros(m, self.groups, device=dev)
        self.real_codes = torch.zeros(m, self.s, dtype=torch.int64, device=dev)
        self.real_steps = torch.zeros(0, device=dev)
        self._step = self._scale = None
        self.table = direction_table(params["phase_bits"], dev)
        self.bounds = (levels[1:] + levels[:-1]) / 2  # nearest_level's, for the kernel

    def segments(self) -> list[tuple[int, int, int]]:
        """(first column, end, unit width) of each segment in loop order."""
        out = [(0, self.s, 1)] if self.s else []
        for gi in range(self.groups):
            out.append((self.s + 2 * self.g * gi, self.s + 2 * min(self.g * (gi + 1), self.K), 2))
        return out

    def _group(self, seg: int) -> int:
        return seg - (1 if self.s else 0)  # the PolarQuant group of a complex segment

    def fit(self, C1: torch.Tensor, seg: int) -> None:
        if self.s and seg == 0:
            # Flat groups over the row-major (DC, Nyq) entries, as the format stores them.
            bits, flat = self.p["real_bits"], C1.reshape(-1)
            groups = flat_groups(flat.numel(), self.g, flat.device)
            self.real_steps = f16_up(2 * group_max(flat.abs(), groups) / ((1 << bits) - 1))
            self._step = self.real_steps[groups.gid].reshape(C1.shape)
            return
        _, along, _ = nearest_phase(C1[:, 0::2], C1[:, 1::2], self.table)
        self._scale = f16_up(along.amax(1))
        self.scales[:, self._group(seg)] = self._scale

    def round(self, unit: torch.Tensor, seg: int, index: int) -> torch.Tensor:
        """Round one unit (rows, 1 or 2) of segment `seg`, keep its codes, return its values."""
        if self.s and seg == 0:
            step, bits = self._step[:, index], self.p["real_bits"]
            self.real_codes[:, index] = midrise_codes(unit[:, 0], step, bits)
            return midrise_values(self.real_codes[:, index], step, bits)[:, None]
        col = self._group(seg) * self.g + index
        mag, phase, re, im = pair_round(unit[:, 0], unit[:, 1], self._scale, self.levels, self.table)
        self.mag[:, col], self.phase[:, col] = mag, phase
        return torch.stack([re, im], 1)

    def kernel_segment(self, C1: torch.Tensor, U1: torch.Tensor, seg: int, Q1: torch.Tensor) -> torch.Tensor:
        """All the pair steps of complex segment `seg` (C1: its columns, read; U1: U's block over them;
        Q1: Q's columns there, written) in one kernel launch; returns the segment's errors."""
        col = self._group(seg) * self.g
        pairs = C1.shape[1] // 2
        return fa_gptq_segment.pair_segment(C1, U1, self._scale, self.levels, self.bounds, self.table[1:],
                                            self.mag[:, col:col + pairs], self.phase[:, col:col + pairs], Q1)

    def codes(self) -> SpectrumCodes:
        """The codes in the format's order: row-major over the grid's complex (real) entries."""
        return SpectrumCodes(mag_codes=self.mag.reshape(-1), phase_codes=self.phase.reshape(-1),
                             mag_scales=self.scales.reshape(-1), mag_levels=self.levels,
                             real_codes=self.real_codes.reshape(-1), real_scales=self.real_steps)
