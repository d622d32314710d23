"""Which weights of a block go to which group: BiLLM's salient columns and magnitude split.

- `select_salient_columns`: the columns of largest Hessian salience sum_i W^2 / d^2, their number
  found by a structural search over `SALIENT_COUNTS` (order-2 binarization on them, order 1 on
  the rest), capped at a fraction of the block;
- `split_groups`: the non-salient weights cut at a searched magnitude threshold into two groups
  (the bitmap).
`w`: optional elementwise weights of the searched error (SAB's Lambda^2 when it steers selection).
"""

from __future__ import annotations

import torch

from llava_fa.methods.binary.fitters import order2_err, simple_err

SALIENT_COUNTS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)


def select_salient_columns(W, d, w=None, counts=SALIENT_COUNTS, max_frac: float = 0.08):
    """Salient columns by Hessian salience sum_i W^2 / d^2 (d = diag of the Cholesky factor of
    H^-1), their number found by BiLLM's structural search (order 2 on them, order 1 on the rest).
    The candidate counts are evaluated at once (one batch of masks: a few kernels per block on a
    GPU instead of a few hundred); the first count of least error wins."""
    n = W.shape[1]
    sal = (W ** 2 / d[None, :] ** 2)
    if w is not None:
        sal = sal * w
    order = torch.argsort(sal.sum(0), descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=W.device)  # each column's place in the salience order
    # The searched error always falls with more order-2 columns: the cap is what bounds the bits.
    ks = torch.tensor([k for k in counts if k <= max_frac * n], device=W.device)
    M = (rank[None, :] < ks[:, None])[:, None, :].expand(len(ks), *W.shape)
    err = simple_err(W, ~M, w) + order2_err(W, M, w)  # an empty order-2 mask adds exactly 0
    return rank < ks[torch.argmin(err)]


def split_groups(W, nonsal, w=None, n_cand: int = 40, batch_bytes: int = 1 << 28):
    """BiLLM's split of the non-salient weights at a searched magnitude threshold: bitmap True
    where |W| > p (the sparse, large-magnitude group). Returns a bool (out, n) bitmap. The
    candidates are evaluated in batches of masks of about `batch_bytes` per float tensor."""
    A = W.abs()
    vals = A[nonsal]
    if vals.numel() < 2:
        return torch.zeros_like(nonsal)
    qs = torch.linspace(0.5, 0.995, n_cand, device=W.device)
    # torch.quantile refuses inputs above 2^24 entries; a random million represents them well.
    sample = vals if vals.numel() <= 1 << 20 else vals[torch.randperm(vals.numel(), device=W.device)[: 1 << 20]]
    cands = torch.quantile(sample.float(), qs)
    per_batch = max(1, batch_bytes // (4 * W.numel()))
    errs = []
    for c in torch.split(cands, per_batch):
        hi = nonsal & (A > c[:, None, None])
        errs.append(simple_err(W, hi, w) + simple_err(W, nonsal & ~hi, w))
    return nonsal & (A > cands[torch.argmin(torch.cat(errs))])
