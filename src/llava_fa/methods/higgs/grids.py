"""MSE-optimal grids for the standard Gaussian in dimension p = 1 and 2 (the grids of HIGGS).

A grid of K = 2**(p*bits) points minimizes E||X - nearest point||^2 for X ~ N(0, I_p). The method
reads them from `grid_table.py`, a table this module generated once (`python3 grids.py OUT.py`, about
half an hour on one CPU core, most of it the 2-D grid of 256 points; fixed seeds, so a rerun on the
same torch build gives the same table), and the `higgs` format stores the float16 grid in every
layer, so a checkpoint depends on neither:

- p = 1: the Lloyd-Max quantizer (Max 1960) by Lloyd's iteration on the exact density: thresholds
  at midpoints, levels at the conditional means E[X | t_i < X < t_{i+1}] = (phi(t_i) - phi(t_{i+1}))
  / (Phi(t_{i+1}) - Phi(t_i)). No sampling; per-dimension distortion 0.3634 (1 bit), 0.1175 (2),
  0.03454 (3), 0.009501 (4; Max printed 0.009497). Up to 4 bits it takes well under a second (the
  tests recompute it); 7-8 bits take minutes (Lloyd converges slowly with 128-256 levels).
- p = 2: k-means (Lloyd's iteration, 120 steps) on 2**19 Gaussian samples of a fixed seed, from
  three starts: a sunflower spiral whose radii follow the high-resolution point density
  f^(p/(p+2)), N(0, 2 I) in 2-D; LBG splitting; k-means++ (seed 0). The grid of least MSE on 2**20
  fresh samples is kept. (A product of 1-D grids would be a fixed point of the iteration, a square
  lattice, hence these starts.) HIGGS computed its grids with CLVQ (online k-means); tests/test_higgs.py
  compares the MSE of ours with HIGGS's own grids as transformers ships them.
"""

from __future__ import annotations

import math
import sys
import time

import torch


def gaussian_grid(p: int, bits: int) -> torch.Tensor:
    """The (2**(p*bits), p) float64 grid for N(0, I_p), from the shipped table."""
    if p not in (1, 2) or not 1 <= p * bits <= 8:
        raise ValueError(f"grids exist for p in (1, 2) with p * bits from 1 to 8, got p={p}, bits={bits}")
    from llava_fa.methods.higgs.grid_table import GRIDS

    return torch.tensor(GRIDS[(p, bits)], dtype=torch.float64).reshape(-1, p)


def _cells(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thresholds t (k+1,), phi(t) and the mass Phi(t_{i+1}) - Phi(t_i) of each cell of sorted levels y."""
    inf = torch.tensor([math.inf], dtype=torch.float64)
    t = torch.cat([-inf, (y[1:] + y[:-1]) / 2, inf])
    pdf = torch.exp(-t.square() / 2) / math.sqrt(2 * math.pi)
    return t, pdf, torch.special.ndtr(t[1:]) - torch.special.ndtr(t[:-1])


def lloyd_max(k: int, tol: float = 1e-10, max_iter: int = 300_000) -> torch.Tensor:
    """Levels of the k-level Lloyd-Max quantizer of N(0, 1), increasing (float64)."""
    u = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    y = torch.special.ndtri(u) * math.sqrt(3.0)  # high-resolution point density f^(1/3): N(0, 3)
    for _ in range(max_iter):
        _, pdf, mass = _cells(y)
        new = (pdf[:-1] - pdf[1:]) / mass
        done = (new - y).abs().max().item() < tol
        y = new
        if done:
            break
    return (y - y.flip(0)) / 2  # exactly symmetric


def lloyd_max_distortion(levels: torch.Tensor) -> float:
    """E(X - Q(X))^2 for X ~ N(0, 1) and the nearest-level quantizer Q, from the exact density."""
    y = levels.double().reshape(-1).sort().values
    t, pdf, mass = _cells(y)
    # per cell: E[X^2 1] - 2 y E[X 1] + y^2 P, with E[X 1] = phi(a) - phi(b), E[X^2 1] = P + a phi(a) - b phi(b)
    tpdf = torch.where(t.isinf(), torch.zeros_like(t), t * pdf)
    ex2, ex = mass + tpdf[:-1] - tpdf[1:], pdf[:-1] - pdf[1:]
    return float((ex2 - 2 * y * ex + y.square() * mass).sum())


def nearest(x: torch.Tensor, grid: torch.Tensor, chunk: int = 1 << 14) -> torch.Tensor:
    """Index of the nearest grid point for each row of x (n, p): argmin of |c|^2 - 2 x.c, in chunks."""
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    g = grid.to(x)
    norm = g.square().sum(-1)
    for i in range(0, x.shape[0], chunk):
        out[i:i + chunk] = torch.addmm(norm, x[i:i + chunk], g.T, alpha=-2).argmin(-1)
    return out


def nearest_exact(x: torch.Tensor, grid: torch.Tensor, chunk: int = 1 << 13) -> torch.Tensor:
    """As `nearest`, from the explicit squared differences: no matrix product, so the same codes on
    every device and thread count (what the method uses; `nearest` is for the large sample sets)."""
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    g = grid.to(x)
    for i in range(0, x.shape[0], chunk):
        out[i:i + chunk] = (x[i:i + chunk, None, :] - g[None]).square().sum(-1).argmin(-1)
    return out


def grid_mse(grid: torch.Tensor, n: int = 1 << 20, seed: int = 1, device: str = "cpu") -> float:
    """Per-dimension MSE of the nearest-point quantizer on fresh N(0, I_p) samples (Monte Carlo)."""
    p = grid.shape[1]
    x = torch.randn(n, p, generator=torch.Generator(device).manual_seed(seed), dtype=torch.float64, device=device)
    g = grid.double().to(device)
    return float((x - g[nearest(x, g, 1 << 16)]).square().mean())


# --- generating the table (python3 grids.py OUT.py) --------------------------------------------------

def lloyd(x: torch.Tensor, c: torch.Tensor, iters: int) -> torch.Tensor:
    """Lloyd's iteration on samples x (n, p) from the points c (k, p); empty cells keep their point."""
    k = c.shape[0]
    for _ in range(iters):
        idx = nearest(x, c, 1 << 16)
        count = torch.bincount(idx, minlength=k).double()
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        c = torch.where(count[:, None] > 0, sums / count.clamp(min=1)[:, None], c)
    return c


def spiral(k: int, device: str) -> torch.Tensor:
    i = torch.arange(k, dtype=torch.float64, device=device)
    r = 2.0 * torch.sqrt(-torch.log1p(-(i + 0.5) / k))  # radius quantiles of N(0, 2 I)
    a = i * math.pi * (3.0 - math.sqrt(5.0))  # golden angle
    return torch.stack([r * torch.cos(a), r * torch.sin(a)], dim=1)


def lbg(x: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Linde-Buzo-Gray: split every point in two (a small fixed offset), re-run Lloyd, until k points."""
    c = x.mean(0, keepdim=True)
    while c.shape[0] < k:
        eps = torch.tensor([1e-2, 7e-3], dtype=x.dtype, device=x.device)
        c = lloyd(x, torch.cat([c + eps, c - eps]), iters)
    return c


def kmeans_pp(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator(x.device).manual_seed(seed)
    sub = x[: 1 << 16]
    c = sub[:1]
    d2 = (sub - c).square().sum(1)
    for _ in range(k - 1):
        j = torch.multinomial(d2 / d2.sum(), 1, generator=g)
        c = torch.cat([c, sub[j]])
        d2 = torch.minimum(d2, (sub - sub[j]).square().sum(1))
    return c


def best_grid_2d(k: int, device: str, n: int = 1 << 19, iters: int = 120, restarts: int = 1) -> torch.Tensor:
    x = torch.randn(n, 2, generator=torch.Generator(device).manual_seed(0), dtype=torch.float64, device=device)
    starts = [spiral(k, device), lbg(x, k, 30)] + [kmeans_pp(x, k, s) for s in range(restarts)]
    best, best_mse = None, math.inf
    for i, c in enumerate(starts):
        c = lloyd(x, c, iters)
        mse = grid_mse(c, 1 << 20, seed=1, device=device)
        print(f"  2-D k={k} start {i}: per-dim MSE {mse:.6f} {time.strftime('%X')}", file=sys.stderr, flush=True)
        if mse < best_mse:
            best, best_mse = c, mse
    return best.cpu()


def compute_grid(p: int, bits: int, device: str = "cpu") -> torch.Tensor:
    """What the table holds for (p, bits), computed (minutes for p = 2 and 4 bits, on CPU)."""
    return lloyd_max(1 << bits)[:, None] if p == 1 else best_grid_2d(1 << (2 * bits), device)


def table_source(grids: dict[tuple[int, int], torch.Tensor]) -> str:
    lines = ['"""Generated by grids.py (`python3 grids.py OUT.py`): MSE-optimal grids for N(0, I_p), keyed',
             '(p, bits), each the row-major flattened (2**(p*bits), p) grid. Do not edit by hand."""', "",
             "GRIDS = {"]
    for (p, b), g in sorted(grids.items()):
        vals = [f"{v:.10f}" for v in g.reshape(-1).tolist()]
        lines.append(f"    ({p}, {b}): (")
        lines += ["        " + ", ".join(vals[i:i + 6]) + "," for i in range(0, len(vals), 6)]
        lines.append("    ),")
    return "\n".join(lines + ["}"]) + "\n"


if __name__ == "__main__":
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    pairs = [(1, b) for b in range(1, 9)] + [(2, b) for b in range(1, 5)]
    with open(sys.argv[1], "w") as f:
        f.write(table_source({pb: compute_grid(*pb, dev) for pb in pairs}))
