"""The Hessian of a layer's output error, prepared for GPTQ-style error feedback.

The loss of replacing W by Q is tr((W - Q) H (W - Q)^T) with H = X^T X of the layer's inputs.
Every method that feeds rounding errors forward (gptq, the binarization family, fa-gptq) prepares
H the same way, here:
- dead inputs (H_jj = 0: the channel never fired) get H_jj = 1 and their weights 0, since nothing
  about them can be learned and a zero diagonal would make H singular;
- optionally the columns are reordered by decreasing H_jj (GPTQ's act-order);
- damping: damp * mean(diag H) is added to the diagonal, which keeps H invertible when there are
  fewer calibration tokens than inputs;
- the upper Cholesky factor U of H^-1 (H^-1 = U^T U): row j of U, divided by U_jj, is how the
  error of column j is pushed onto the columns after it (Frantar et al., 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava_fa.errors import DataError


@dataclass
class PreparedHessian:
    """A weight and its Hessian ready for the feedback loop, all in the loop's column order."""

    weight: torch.Tensor  # float32 copy of the weight, dead columns zeroed
    hessian: torch.Tensor  # the damped Hessian
    hinv_chol: torch.Tensor  # U: upper Cholesky factor of the damped Hessian's inverse
    order: torch.Tensor | None  # column order of the loop (act-order), None: the original order


def prepare_hessian(weight: torch.Tensor, H: torch.Tensor | None, damp: float, *, act_order: bool = False,
                    method: str = "gptq", hinv_chol: torch.Tensor | None = None) -> PreparedHessian:
    """Dead inputs zeroed, columns reordered (with `act_order`), damping added, U computed.

    H None stands for the identity (no calibration data: no feedback, salience = W^2). `method`
    names the caller in the DataError raised when the damped H is not positive definite.
    `hinv_chol`: U from an earlier call with the same H and damp (it depends on nothing else without
    act-order): callers that run the loop on several weights of one layer (caldera) factor H once.
    """
    if hinv_chol is not None and act_order:
        raise ValueError("prepare_hessian: a given hinv_chol is in the original column order; act_order reorders")
    W = weight.detach().float().clone()
    n = W.shape[1]
    H = torch.eye(n, device=W.device) if H is None else H.detach().float().clone().to(W.device)
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    order = None
    if act_order:
        # Large H_jj first: the columns that matter most are rounded while the most columns remain
        # to absorb their error.
        order = torch.argsort(torch.diagonal(H), descending=True)
        W, H = W[:, order], H[order][:, order]
    H += torch.eye(n, device=H.device) * (damp * torch.diagonal(H).mean())
    U = hinv_chol if hinv_chol is not None else upper_cholesky_of_inverse(H, damp, method)
    return PreparedHessian(W, H, U, order)


def upper_cholesky_of_inverse(H: torch.Tensor, damp: float, method: str) -> torch.Tensor:
    """U with H^-1 = U^T U, or a DataError saying how to fix a Hessian that is not positive definite."""
    try:
        L = torch.linalg.cholesky(H)
        return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except torch.linalg.LinAlgError:
        raise DataError(f"{method}: the damped Hessian is not positive definite (damp={damp}). "
                        f"Fix: raise --damp (e.g. 0.1) or use more calibration samples") from None
