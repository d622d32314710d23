"""The compression report: one row per layer, its summary, and the errors it gives.

The activation error is measured on the inputs a compressed module receives in the forward pass
that follows its compression (`ActivationErrorMeter`), so no statistic is collected for the report
alone: methods get exactly the statistics their `needs` ask for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from llava_fa.formats import CompressedLinear


@dataclass
class LayerReport:
    name: str
    block: str
    out_features: int
    in_features: int
    method: str
    format: str
    storage_bits: int
    bpw: float
    rel_error: float  # ||W - W_hat||_F / ||W||_F
    # ||(W - W_hat) X^T||_F / ||W X^T||_F, X the calibration tokens (rows, all modalities) that the
    # compressed layer receives in the pass after its compression: for a decoder layer, the pass that
    # computes the next layer's inputs (so earlier layers, and layers before it in the same decoder
    # layer, are compressed); for vision tower / projector, the pass up to the first decoder layer;
    # for the LM head, the final normed hidden states. None without calibration samples, or when the
    # layer saw no token.
    act_error: float | None
    seconds: float
    # Stored bits per part (codes, scales, masks...) where the format itemizes them, so bpw can be
    # reported under the conventions of other papers too (e.g. sign codes only for binarization).
    bits: dict[str, int] | None = None
    # MoE expert linears only (None / False for other layers): the experts module the layer is one
    # expert projection of, the calibration tokens routed to it (None: no statistics collected), and
    # whether it was routed too few and took the statistics pooled over its module's experts
    # (calibration/experts.py).
    experts: str | None = None
    routed_tokens: int | None = None
    pooled_stats: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_row(name: str, block: str, method: str, weight: torch.Tensor, diff: torch.Tensor,
               compressed: CompressedLinear, seconds: float) -> LayerReport:
    """A row without its act_error (known only after the next pass). `weight` = W and `diff` =
    W - W_hat, both float32."""
    rel = (diff.norm() / weight.norm().clamp_min(1e-30)).item()
    bits = compressed.bits_breakdown() if hasattr(compressed, "bits_breakdown") else None
    return LayerReport(name, block, compressed.out_features, compressed.in_features, method, compressed.format,
                       compressed.storage_bits(), compressed.bits_per_weight(), rel, None, seconds, bits)


def summarize(rows: list[LayerReport]) -> dict[str, Any]:
    weights = sum(r.in_features * r.out_features for r in rows)
    bits = sum(r.storage_bits for r in rows)
    acts = [r.act_error for r in rows if r.act_error is not None]
    return {"layers": len(rows), "weights": weights, "storage_bits": bits, "bpw": bits / weights if weights else 0.0,
            "mean_rel_error": sum(r.rel_error for r in rows) / max(len(rows), 1),
            "mean_act_error": sum(acts) / len(acts) if acts else None,
            "seconds": sum(r.seconds for r in rows), "bits_by_part": bits_by_part(rows),
            "experts": experts_summary(rows)}


def experts_summary(rows: list[LayerReport]) -> dict[str, Any] | None:
    """The MoE expert linears among the rows (their weights are in the totals above); None if none."""
    experts = [r for r in rows if r.experts is not None]
    if not experts:
        return None
    weights = sum(r.in_features * r.out_features for r in experts)
    return {"modules": len({r.experts for r in experts}), "layers": len(experts), "weights": weights,
            "bpw": sum(r.storage_bits for r in experts) / weights,
            "pooled_stats": sum(r.pooled_stats for r in experts),
            "without_tokens": sum(r.routed_tokens == 0 for r in experts)}


def bits_by_part(rows: list[LayerReport]) -> dict[str, int] | None:
    """Stored bits summed per part name over the layers that itemize them (None if none does)."""
    total: dict[str, int] = {}
    for r in rows:
        for k, v in (r.bits or {}).items():
            total[k] = total.get(k, 0) + v
    return total or None


# --- activation error ----------------------------------------------------------------------------

# Rows of inputs multiplied at once: bounds the (rows, out_features) products to 2^24 floats (64 MiB),
# which matters for wide outputs such as an LM head.
_PRODUCT_ELEMENTS = 1 << 24


@dataclass
class _Tracked:
    module: nn.Module
    diff: torch.Tensor  # W - W_hat, bfloat16 (it only feeds the reported error: half the memory of float32)
    error_sq: torch.Tensor  # sum of ||(W - W_hat) x||^2, float64, on the device of `diff`
    signal_sq: torch.Tensor  # sum of ||W x||^2, likewise
    tokens: int = 0


class ActivationErrorMeter:
    """Accumulates ||(W - W_hat) x||^2 and ||W x||^2 over the inputs x of compressed modules.

    `track` each module after compressing it; while the meter is entered (`with meter:`), forward
    hooks feed it every input those modules receive with the output they give. W x is taken as
    W_hat x (that output, less the bias) + (W - W_hat) x: the meter keeps W - W_hat only, not W as
    well, which saves a dense copy of every compressed weight of the block until it is measured
    (what bounds memory in streamed compression), and keeps it in bfloat16 (the errors it reports
    change by that rounding only; nothing stored depends on them). `errors()` gives the act_error per name and drops
    what it kept.
    """

    def __init__(self) -> None:
        self._tracked: dict[str, _Tracked] = {}
        self._handles: list = []

    def track(self, name: str, module: nn.Module, diff: torch.Tensor) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=diff.device)
        self._tracked[name] = _Tracked(module, diff.detach().to(torch.bfloat16), zero, zero.clone())

    def __enter__(self) -> "ActivationErrorMeter":
        for name, tracked in self._tracked.items():
            self._handles.append(tracked.module.register_forward_hook(partial(self._on_forward, name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_forward(self, name: str, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        bias = getattr(module, "bias", None)
        self.add(name, args[0], output if bias is None else output - bias.to(output.dtype))

    def add(self, name: str, x: torch.Tensor, y_hat: torch.Tensor) -> None:
        """Accumulate the input `x` (..., in_features) of module `name` and its output W_hat x
        (..., out_features, without bias)."""
        t = self._tracked[name]
        if t.diff.device != x.device:  # the module ran on another device (the catch pass): follow it once
            t.diff = t.diff.to(x.device)
            t.error_sq, t.signal_sq = t.error_sq.to(x.device), t.signal_sq.to(x.device)
        rows = x.detach().reshape(-1, x.shape[-1])
        outs = y_hat.detach().reshape(-1, y_hat.shape[-1])
        step = max(1, _PRODUCT_ELEMENTS // t.diff.shape[0])
        # CPU: W - W_hat back to float32 a block of its rows (outputs) at a time, never whole; CUDA: one
        # bfloat16 product (float32 accumulation), where conversions per sample cost more than they save
        gpu = rows.is_cuda
        block = t.diff.shape[0] if gpu else max(1, _PRODUCT_ELEMENTS // 4 // t.diff.shape[1])
        for chunk, out in zip(rows.split(step), outs.split(step)):
            chunk = chunk.to(t.diff.dtype) if gpu else chunk.float()
            for a in range(0, t.diff.shape[0], block):
                part = t.diff[a:a + block]
                error = (chunk @ part.T).float() if gpu else chunk @ part.float().T
                t.error_sq += error.square().sum(dtype=torch.float64)
                t.signal_sq += (out[:, a:a + block].float() + error).square().sum(dtype=torch.float64)
        t.tokens += rows.shape[0]

    def reduce_over_ranks(self) -> None:
        """Sum every rank's accumulations (torchrun with the samples split across ranks, passes.py)."""
        import torch.distributed as dist

        for t in self._tracked.values():
            tokens = torch.tensor([t.tokens], dtype=torch.float64, device=t.error_sq.device)
            for value in (t.error_sq, t.signal_sq, tokens):
                dist.all_reduce(value)
            t.tokens = int(tokens.item())

    def errors(self) -> dict[str, float | None]:
        """act_error per tracked name (None for a module that received no input); frees the weights."""
        out: dict[str, float | None] = {}
        for name, t in self._tracked.items():
            if t.tokens == 0:
                out[name] = None
            else:
                out[name] = math.sqrt((t.error_sq.clamp_min(0) / t.signal_sq.clamp_min(1e-30)).item())
        self._tracked.clear()
        return out


# --- the report as a figure ----------------------------------------------------------------------

REPORT_PLOT = "compress_report.png"  # written beside compress_report.json by `llava-fa compress`


def render_report_plot(report: dict[str, Any]) -> bytes:
    """PNG of a report's layers in compression order: bits per weight above, errors below.

    Drawn with matplotlib's Agg canvas on a Figure (no pyplot): no display and no global state."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report["layers"]
    x = list(range(len(rows)))
    fig = Figure(figsize=(max(8.0, min(24.0, 0.06 * len(rows) + 6)), 6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(x, [r["bpw"] for r in rows], width=1.0, color="tab:blue")
    top.axhline(report["summary"]["bpw"], color="black", lw=0.8, ls="--", label=f"mean {report['summary']['bpw']:.3f}")
    top.set_ylabel("bits per weight")
    top.legend(loc="upper right")
    top.set_title(f"{report['method']}: {len(rows)} layers, {report['summary']['bpw']:.3f} bpw")
    bottom.plot(x, [r["rel_error"] for r in rows], ".-", lw=0.6, ms=3, label="weight rel. error")
    acts = [(i, r["act_error"]) for i, r in enumerate(rows) if r["act_error"] is not None]
    if acts:
        bottom.plot(*zip(*acts), ".-", lw=0.6, ms=3, label="activation rel. error")
    bottom.set_ylabel("relative error")
    bottom.set_xlabel("layer (compression order)")
    bottom.legend(loc="upper right")
    step = max(1, len(rows) // 30)  # at most ~30 names under the axis stay legible
    bottom.set_xticks(x[::step], [r["name"].split("layers.")[-1] for r in rows[::step]], rotation=90, fontsize=6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
