"""Calibration of MoE experts: statistics from the tokens routed to each expert, and a fallback for
the experts that the calibration data hardly reaches.

`LinearExperts` (formats/experts.py) calls the linears of expert e on the rows routed to e only, so
the forward hooks of `StatsCollector` collect per-expert statistics as they are: gate_up_proj.<e>
sees the hidden states routed to e, down_proj.<e> the intermediate activations e computes from
them. `BlockExperts` adds what those hooks cannot see: how many tokens entered each experts module
and, for image+text samples, which rows an expert receives are image tokens (the sample's mask
reduced to those rows).

Too few tokens: routing is uneven, and a small calibration set leaves some experts with a handful
of tokens or none. GPTQModel (its `FailSafe`, default threshold 0.5% of the calibration tokens
reaching the module) then quantizes such a module by plain RTN; llm-compressor's
`calibrate_all_experts` sends every token through every expert while calibrating (keeping only the
routed outputs). Here a method is the user's choice and its format is stored, so the method stays
and its statistics are replaced: an expert projection that receives fewer than MIN_TOKEN_SHARE of
the tokens entering its module is compressed with the statistics pooled over all the experts of the
module for that projection. For gate_up_proj that pool is the statistics of every token entering
the module (each counted top-k times), i.e. what calibrating all experts gives for it; for
down_proj it is the intermediate activations of the other experts. Each such expert is reported.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from llava_fa.calibration.stats import LayerStats, StatsCollector
from llava_fa.formats.experts import LinearExperts, routed_tokens, split_expert_name

log = logging.getLogger("llava_fa")

# GPTQModel's default FailSafe threshold: under 0.5% of the tokens entering the module.
MIN_TOKEN_SHARE = 0.005


@dataclass(frozen=True)
class ExpertCalibration:
    """How one expert linear was calibrated (its row of the report carries it)."""

    experts: str  # the experts module it belongs to
    routed_tokens: int | None  # calibration tokens routed to it; None: no statistics were collected
    pooled_stats: bool  # True: too few tokens, compressed with its module's pooled statistics


class BlockExperts:
    """The expert linears among a block's targets, the routing seen while its statistics are collected,
    and the fallback for experts routed too few tokens."""

    def __init__(self, model: nn.Module, names: tuple[str, ...] | list[str], min_share: float = MIN_TOKEN_SHARE):
        self.containers: dict[str, LinearExperts] = {}
        self.owner: dict[str, tuple[str, str, int]] = {}  # expert linear -> (experts module, projection, expert)
        for name in names:
            split = split_expert_name(name)
            container = _submodule(model, split[0]) if split else None
            if isinstance(container, LinearExperts):
                self.containers[split[0]] = container
                self.owner[name] = split
        self.min_share = min_share
        self.tokens_in = {c: 0 for c in self.containers}
        self.calibration: dict[str, ExpertCalibration] = {}

    # --- while the statistics are collected ------------------------------------------------------
    def observing(self, collector: StatsCollector) -> "_Observer":
        """A context in which the experts modules count their tokens and give their expert linears
        the image mask of the rows they receive."""
        return _Observer(self, collector)

    # --- after ------------------------------------------------------------------------------------
    def pool_starved(self, stats: dict[str, LayerStats]) -> list[str]:
        """Give each expert linear routed too few tokens the statistics pooled over its module's
        experts (in `stats`, in place); return their names. Without statistics, only record which
        linears are experts."""
        starved = []
        for (container, proj), members in self._groups().items():
            present = [m for m in members if m in stats]
            pooled = _pooled([stats[m] for m in present]) if present else None
            least = max(1, math.ceil(self.min_share * self.tokens_in[container]))
            for m in members:
                tokens = stats[m].count() if m in stats else None
                poor = tokens is not None and tokens < least and pooled is not None and pooled.count() > 0
                if poor:
                    stats[m] = _copy(pooled)
                    starved.append(m)
                self.calibration[m] = ExpertCalibration(container, tokens, poor)
        if starved:
            log.warning("%d of %d expert linears received fewer than %.1f%% of their module's calibration tokens: "
                        "compressed with the statistics pooled over the module's experts: %s", len(starved),
                        len(self.owner), 100 * self.min_share, ", ".join(starved))
        return starved

    def row_fields(self, name: str) -> dict:
        """The report fields of an expert linear (empty for another layer)."""
        if name not in self.owner:
            return {}
        cal = self.calibration.get(name) or ExpertCalibration(self.owner[name][0], None, False)
        return {"experts": cal.experts, "routed_tokens": cal.routed_tokens, "pooled_stats": cal.pooled_stats}

    def _groups(self) -> dict[tuple[str, str], list[str]]:
        groups: dict[tuple[str, str], list[str]] = {}
        for name, (container, proj, _) in self.owner.items():
            groups.setdefault((container, proj), []).append(name)
        return groups


class _Observer:
    """Hooks of `BlockExperts.observing`: on each experts module, count the tokens entering it and,
    when the sample has an image mask, set the collector's mask to the routed rows before each
    expert linear runs (restored after the module)."""

    def __init__(self, experts: BlockExperts, collector: StatsCollector):
        self.experts, self.collector = experts, collector
        self.handles: list = []
        self.sample_mask: torch.Tensor | None = None
        self.row_masks: dict[nn.Module, torch.Tensor] = {}

    def __enter__(self) -> "_Observer":
        for name, container in self.experts.containers.items():
            self.handles.append(container.register_forward_pre_hook(partial(self._enter_module, name)))
            self.handles.append(container.register_forward_hook(self._leave_module))
            for proj in container.layout.projections:
                for linear in getattr(container, proj):
                    # prepend: the mask must be set before the collector's own hook reads the input
                    self.handles.append(linear.register_forward_pre_hook(self._before_linear, prepend=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _enter_module(self, name: str, module: LinearExperts, args: tuple) -> None:
        hidden, top_k_index = args[0], args[1]
        self.experts.tokens_in[name] += hidden.shape[0]
        self.sample_mask = self.collector.image_mask
        self.row_masks.clear()
        if self.sample_mask is None:
            return
        mask = self.sample_mask.reshape(-1).to(hidden.device)
        for expert, _, token_idx in routed_tokens(top_k_index, module.num_experts):
            for proj in module.layout.projections:
                self.row_masks[getattr(module, proj)[expert]] = mask[token_idx]

    def _before_linear(self, linear: nn.Module, args: tuple) -> None:
        if linear in self.row_masks:
            self.collector.image_mask = self.row_masks[linear]

    def _leave_module(self, module: nn.Module, args: tuple, output) -> None:
        self.collector.image_mask = self.sample_mask
        self.row_masks.clear()


def _pooled(members: list[LayerStats]) -> LayerStats:
    pooled = _copy(members[0])
    for st in members[1:]:
        for m, n in st.tokens.items():
            pooled.tokens[m] = pooled.tokens.get(m, 0) + n
        for mine, theirs in ((pooled.xtx, st.xtx), (pooled.sq, st.sq)):
            for m, t in theirs.items():
                mine[m] = mine[m] + t if m in mine else t.clone()
    return pooled


def _copy(stats: LayerStats) -> LayerStats:
    return LayerStats(stats.in_features, {k: v.clone() for k, v in stats.xtx.items()},
                      {k: v.clone() for k, v in stats.sq.items()}, dict(stats.tokens))


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None
