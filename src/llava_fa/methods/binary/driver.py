"""The family's blocked driver: GPTQ-style column blocks with error feedback, on the shared loop.

The columns are cut into blocks of `block_size` (the last one may be partial). The loop of
quantizers/feedback.py hands each block, as the feedback of the earlier blocks left it, to a
variant's `fit_block`, which binarizes it at once (as BiLLM's code does); the loop pushes the
errors of its fitted, fp16-rounded values onto the later blocks through the upper Cholesky factor
of H^-1.
"""

from __future__ import annotations

from typing import Callable

import torch

from llava_fa.formats.binary import BinaryParts, reconstruct, round_parts
from llava_fa.quantizers.feedback import feedback_quantize
from llava_fa.quantizers.hessian import prepare_hessian

# fit_block(W1, U1, H1, cols): the block's weights (out, b), its blocks of U and of the damped H, and
# its column slice; returns the block's parts (row_scales etc. of shape (out, 1, G)).
BlockFitter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, slice], BinaryParts]


class BinaryBlocks:
    """Rounds each block of the loop to its binarization, fitted on the block as it stands."""

    def __init__(self, fit_block: BlockFitter, U: torch.Tensor, H: torch.Tensor, block_size: int):
        self.fit_block, self.U, self.H, self.block_size = fit_block, U, H, block_size
        self.parts: list[BinaryParts] = []  # fp16-rounded parts of each block, as stored

    def round_block(self, block: torch.Tensor, start: int) -> torch.Tensor:
        cols = slice(start, start + block.shape[1])
        parts = round_parts(self.fit_block(block, self.U[cols, cols], self.H[cols, cols], cols))
        self.parts.append(parts)
        return reconstruct(parts, self.block_size)


def blocked_binarize(weight: torch.Tensor, H: torch.Tensor | None, fit_block: BlockFitter, *,
                     block_size: int = 128, damp: float = 0.01,
                     method: str = "binarization") -> tuple[list[BinaryParts], torch.Tensor]:
    """Binarize block by block with GPTQ error feedback (H None: identity, no feedback). Returns the
    fp16-rounded block parts and the dense reconstruction (exactly what the stored layer holds)."""
    prepared = prepare_hessian(weight, H, damp, method=method)
    rounder = BinaryBlocks(fit_block, prepared.hinv_chol, prepared.hessian, block_size)
    Q = feedback_quantize(prepared.weight, prepared.hinv_chol, rounder, block_size=block_size)
    return rounder.parts, Q


def concat_parts(parts: list[BinaryParts]) -> BinaryParts:
    """Join block parts (each with n_blocks = 1) along columns / blocks."""
    def cat(name, dim):
        ts = [getattr(p, name) for p in parts]
        return None if ts[0] is None else torch.cat(ts, dim)
    out = BinaryParts(cat("signs", 1), cat("row_scales", 1), cat("means", 1), cat("col_scales", 0),
                      cat("salient", 0), cat("res_signs_full", 1), cat("res_scales", 1), cat("res_means", 1),
                      cat("bitmap", 1), cat("outlier_mask", 1), None, cat("outlier_scales", 1))
    if parts[0].outlier_codes is not None:
        # codes are in row-major order of each block's mask; placed on a full grid, read back in row-major
        # order of the full mask (a few ops per block, not one per row and block)
        grid = torch.zeros(out.outlier_mask.shape, dtype=parts[0].outlier_codes.dtype,
                           device=out.outlier_mask.device)
        start = 0
        for p in parts:
            cols = slice(start, start + p.outlier_mask.shape[1])
            grid[:, cols][p.outlier_mask] = p.outlier_codes
            start = cols.stop
        out.outlier_codes = grid[out.outlier_mask]
    return out
