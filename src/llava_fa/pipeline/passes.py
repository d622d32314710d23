"""The passes over the calibration inputs (capture, statistics, forward), and under torchrun the
samples split across the ranks for the decoder layers' passes.

Split (a distributed run with at least as many samples as ranks and no MoE experts among the
targets): rank r runs the decoder layers' passes on its contiguous share of the samples only. A
module's statistics still come from every sample, in the order of one process: in the statistics
pass each rank records, per sample of its share, the inputs the block's modules receive; the
recordings are broadcast rank by rank (rank order is sample order) and every rank replays them into
its collector (which holds the modules it owns) as the hooks of one process would have fed it. A
sample's forward is the same computation on any rank, so the statistics, and the stored tensors,
are those of one process. What the split changes: each rank runs half the forwards (statistics and
propagation) at the cost of sending the modules' inputs; the report's activation errors are sums
over the ranks (all-reduced: the same figures up to rounding); the final hidden states are gathered
before the LM head's pass. A run with MoE expert linears among its targets keeps every sample on
every rank (their routing is observed during the pass itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator

import torch
from torch import nn

from llava_fa.calibration.architectures import architecture_of
from llava_fa.calibration.stats import StatsCollector
from llava_fa.pipeline.capture import DecoderInputs, LayerCall, LayerRecorder
from llava_fa.pipeline.devices import move_except, on_device, to_device
from llava_fa.pipeline.distributed import World, experts_group

# The run is sequential.CompressionRun (which imports this module): not imported, as in streaming.py.
CompressionRun = Any
Recorded = list[tuple[int, list[tuple[str, torch.Tensor]]]]  # per sample: (index, [(module, its input)])


@dataclass(frozen=True)
class SampleSplit:
    """The samples each rank runs through the decoder layers: contiguous shares in rank order."""

    rank: int
    bounds: tuple[int, ...]  # rank r's share: samples bounds[r] .. bounds[r + 1] - 1

    def of(self, rank: int) -> range:
        return range(self.bounds[rank], self.bounds[rank + 1])

    @property
    def mine(self) -> range:
        return self.of(self.rank)


def sample_split(world: World, n_samples: int, model: nn.Module, names: list[str]) -> SampleSplit | None:
    """The split of a distributed run; None in one process, with fewer samples than ranks, or with
    MoE expert linears among the targets."""
    if not world.active or n_samples < world.size or any(experts_group(model, n) != n for n in names):
        return None
    return SampleSplit(world.rank, tuple(r * n_samples // world.size for r in range(world.size + 1)))


def capture_decoder_inputs(run: CompressionRun, collector: StatsCollector | None = None) -> DecoderInputs:
    """One pass of the model, its decoder layers stubbed (capture.py): what each layer receives, per sample."""
    head = run.model.get_submodule(run.plan.parts.lm_head) if run.plan.parts.lm_head else None
    recorder = LayerRecorder(run.layers, stop_after=max(run.plan.last_layer(calibrated=True), 0),
                             stop_at=(head,) if head is not None else (),
                             additive=architecture_of(run.model).additive_between_layers)
    move_except(run.model, run.stay_home, run.device)
    try:
        with recorder:
            for sample, mask in zip(run.samples, run.image_masks):
                if collector is not None:
                    collector.new_sample(on_device(mask, run.device))
                recorder.run(run.model, dict(to_device(sample, run.device, run.dtype), use_cache=False))
    finally:
        move_except(run.model, run.stay_home, run.home)
    return recorder.inputs


def feed_layer(run: CompressionRun, layer: nn.Module, names: tuple[str, ...], hidden: list[torch.Tensor],
               calls: list[LayerCall | None], collector: StatsCollector) -> None:
    if run.split is not None:
        return feed_split(run, layer, names, hidden, calls, collector)
    for h, call, mask in zip(hidden, calls, run.image_masks):
        if call is not None:  # None: a plain forward skips this layer for this sample
            collector.new_sample(on_device(mask, run.device))
            layer(h, *call[0], **call[1])


def feed_split(run: CompressionRun, layer: nn.Module, names: tuple[str, ...], hidden: list[torch.Tensor],
               calls: list[LayerCall | None], collector: StatsCollector) -> None:
    """The statistics pass of a split run: this rank's samples forwarded, every rank's recorded
    inputs replayed into the collector in sample order."""
    recorder = InputRecorder({n: run.model.get_submodule(n) for n in names})
    with collector.paused(), recorder:
        for j in run.split.mine:
            if calls[j] is not None:
                recorder.start(j)
                layer(hidden[j], *calls[j][0], **calls[j][1])
    for j, inputs in exchange(run.world, recorder.samples, run.device):
        collector.new_sample(on_device(run.image_masks[j], run.device))
        for name, x in inputs:
            if name in collector.stats:
                collector.add(name, x)


class InputRecorder:
    """Forward pre-hooks keeping, per sample, the input each module receives, in call order."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.samples: Recorded = []
        self._handles: list = []

    def __enter__(self) -> "InputRecorder":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(partial(self._hook, name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def start(self, index: int) -> None:
        self.samples.append((index, []))

    def _hook(self, name: str, module: nn.Module, args: tuple) -> None:
        self.samples[-1][1].append((name, args[0].detach()))


def exchange(world: World, recorded: Recorded, device: torch.device) -> Recorded:
    """Every rank's recordings on every rank, rank by rank: names and shapes as a small pickled header,
    each distinct tensor (q/k/v's shared input once) broadcast from its rank."""
    import torch.distributed as dist

    out: Recorded = []
    for src in range(world.size):
        header: list[Any] = [_header(recorded) if src == world.rank else None]
        dist.broadcast_object_list(header, src=src, device=device if device.type == "cuda" else None)
        for k, (index, refs, specs) in enumerate(header[0]):
            tensors = ([x.contiguous() for x in _distinct(recorded[k][1]).values()] if src == world.rank
                       else [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in specs])
            for t in tensors:
                dist.broadcast(t, src=src)
            out.append((index, [(name, tensors[k]) for name, k in refs]))
    return out


def _distinct(inputs: list[tuple[str, torch.Tensor]]) -> dict[int, torch.Tensor]:
    """The distinct tensors among a sample's inputs (q/k/v share one), by id, in order of first use."""
    found: dict[int, torch.Tensor] = {}
    for _, x in inputs:
        found.setdefault(id(x), x)
    return found


def _header(recorded: Recorded) -> list[tuple[int, list[tuple[str, int]], list[tuple[tuple[int, ...], Any]]]]:
    """Per sample: its index, (module, position of its input among the distinct tensors), their shapes and dtypes."""
    rows = []
    for index, inputs in recorded:
        distinct = _distinct(inputs)
        position = {key: k for k, key in enumerate(distinct)}
        rows.append((index, [(name, position[id(x)]) for name, x in inputs],
                     [(tuple(x.shape), x.dtype) for x in distinct.values()]))
    return rows


def gather_hidden(world: World, split: SampleSplit, hidden: list[torch.Tensor]) -> None:
    """Every sample's hidden states on every rank, from the rank that propagated it (before the LM head)."""
    import torch.distributed as dist

    for src in range(world.size):
        for j in split.of(src):
            buffer = hidden[j].contiguous() if src == world.rank else torch.empty_like(hidden[j])
            dist.broadcast(buffer, src=src)
            hidden[j] = buffer


def propagate(layer: nn.Module, hidden: list[torch.Tensor], calls: list[LayerCall | None],
              added: list[torch.Tensor | None], samples: range | None = None) -> None:
    """Replace each sample's hidden states (of `samples`: all by default) by the layer's outputs (kept
    where the layer is skipped), plus what the model adds after the layer (capture.py)."""
    for j in samples if samples is not None else range(len(hidden)):
        call = calls[j]
        if call is not None:
            out = layer(hidden[j], *call[0], **call[1])
            hidden[j] = out[0] if isinstance(out, (tuple, list)) else out
        if added[j] is not None:
            hidden[j] = hidden[j] + added[j].to(hidden[j].device)


def feed_head(run: CompressionRun, norm: nn.Module, name: str, hidden: list[torch.Tensor],
              collector: StatsCollector) -> None:
    if name not in collector.stats:  # torchrun: another rank owns the head
        return
    for normed, mask in normed_hidden(run, norm, hidden):
        collector.new_sample(on_device(mask, run.device))
        collector.add(name, normed)


def normed_hidden(run: CompressionRun, norm: nn.Module, hidden: list[torch.Tensor]
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(the decoder's final norm of each sample's last hidden states, its image mask)."""
    norm_on_device = norm.to(run.device)
    try:
        for h, mask in zip(hidden, run.image_masks):
            yield norm_on_device(h), mask
    finally:
        norm.to(run.home)
