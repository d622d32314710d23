"""GPTQ's column loop with error feedback, for any rounding of the columns.

Columns are rounded one at a time in the loop's order; the error of column j, divided by U_jj, is
pushed onto the columns after it along row j of U (the upper Cholesky factor of H^-1, see
quantizers/hessian.py), so the later columns absorb what the earlier ones lost (Frantar et al.,
2022). What "rounding" means is the caller's `ColumnRounder`: GPTQ's affine grid, fa-gptq's
PolarQuant of complex spectral columns, the binarization family's block fits.

- Lazy block updates: the loop applies the feedback inside a block of `block_size` columns at
  once and to the columns past it once per block (the same arithmetic, far less memory traffic).
- Groups: with `group_size`, the rounder fits the grid of a group when the loop reaches the
  group's first column, on the group's current columns, so the fit sees every error pushed so far,
  including the feedback still pending for columns past the current block.
- Act-order: the caller permutes W and H before the loop (quantizers/hessian.py); the loop only
  knows loop positions, the rounder maps them back to groups.
- Fused blocks: a rounder may run a whole block's column loop itself (`fused_block`: gptq's affine
  grid in one Triton kernel, kernels/gptq_block.py, the same arithmetic); where it declines (no GPU
  or Triton, a block shape it does not take) the loop below runs.
- Complex columns (fa-gptq's spectrum along the output axis) run unchanged: U stays real, since the
  transform acts on the other side of W (matrix products take it as complex with zero imaginary part).
"""

from __future__ import annotations

from typing import Protocol

import torch


class ColumnRounder(Protocol):
    """One method's rounding of single columns onto a grid it fits per group."""

    def fit_group(self, span: torch.Tensor, start: int) -> None:
        """Fix the grid of the group whose first column is loop position `start`; `span` holds the
        group's columns as they are now (all feedback so far applied), in loop order."""

    def round(self, column: torch.Tensor, index: int) -> torch.Tensor:
        """Round the column at loop position `index`, keep its codes, return its rounded values."""


class FusedColumnRounder(ColumnRounder, Protocol):
    """A ColumnRounder that can also run a block's whole column loop at once (a GPU kernel)."""

    def fused_block(self, W: torch.Tensor, W1: torch.Tensor, U: torch.Tensor, Q: torch.Tensor, i1: int,
                    group_size: int | None) -> torch.Tensor | None:
        """Do what `_round_columns` does for the block W1 at loop position i1 (fits, codes, Q[:, i1:],
        the feedback inside the block) and return its errors, or None to leave it to the loop."""


class BlockRounder(Protocol):
    """A rounding of whole blocks at once, on the block as the earlier blocks' feedback left it
    (the binarization family fits salient columns, groups and scales per block)."""

    def round_block(self, block: torch.Tensor, start: int) -> torch.Tensor:
        """Round the block whose first column is loop position `start`; return its rounded values."""


@torch.no_grad()
def feedback_quantize(W: torch.Tensor, U: torch.Tensor, rounder: ColumnRounder | BlockRounder, *, block_size: int,
                      group_size: int | None = None) -> torch.Tensor:
    """Round the columns of W (out, n), real or complex, in order with error feedback through U (n, n).

    W is consumed: the feedback is applied to it in place. `group_size`: a ColumnRounder fits a grid
    at every multiple of it (None: its grids were fixed before the loop). A BlockRounder rounds each
    block of `block_size` columns at once. Returns the rounded weight (out, n) in loop order, exactly
    the values the rounder returned.
    """
    n = W.shape[1]
    Q = torch.zeros_like(W)
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        if hasattr(rounder, "round_block"):
            # Values fixed for the whole block before its feedback runs: the sequential updates
            # inside it have the closed form W1 - Q1 = E U1 (one triangular solve).
            Q[:, i1:i2] = rounder.round_block(W1.clone(), i1)
            errors = torch.linalg.solve_triangular(U1.to(W.dtype), W1 - Q[:, i1:i2], upper=True, left=False)
        else:
            errors = _round_columns(W, W1, U, rounder, Q, i1, group_size)
        W[:, i2:] -= errors @ U[i1:i2, i2:].to(W.dtype)  # the block's feedback onto every later column at once
    return Q


def _round_columns(W: torch.Tensor, W1: torch.Tensor, U: torch.Tensor, rounder: ColumnRounder, Q: torch.Tensor,
                   i1: int, group_size: int | None) -> torch.Tensor:
    """One block, column by column; returns the block's column errors divided by U_jj."""
    fused = getattr(rounder, "fused_block", None)
    if fused is not None and (errors := fused(W, W1, U, Q, i1, group_size)) is not None:
        return errors
    n, i2 = W.shape[1], i1 + W1.shape[1]
    U1 = U[i1:i2, i1:i2]
    errors = torch.zeros_like(W1)
    for i in range(i2 - i1):
        j = i1 + i
        if group_size and j % group_size == 0:
            rounder.fit_group(group_span(W, W1, errors, U, i1, i, min(j + group_size, n)), j)
        q = rounder.round(W1[:, i], j)
        Q[:, j] = q
        err = (W1[:, i] - q) / U1[i, i]
        W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
        errors[:, i] = err
    return errors


def group_span(W: torch.Tensor, W1: torch.Tensor, errors: torch.Tensor, U: torch.Tensor, i1: int, i: int,
               end: int) -> torch.Tensor:
    """Columns i1 + i .. end of a group as the loop will meet them: those inside the current block
    from W1, those past it from W with the feedback this block has not yet pushed onto them."""
    i2 = i1 + W1.shape[1]
    span = W1[:, i:end - i1]
    if end > i2:
        later = W[:, i2:end] - errors[:, :i] @ U[i1:i1 + i, i2:end].to(W.dtype)
        span = torch.cat([span, later], dim=1)
    return span
