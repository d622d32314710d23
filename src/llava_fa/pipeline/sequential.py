"""Sequential, layer-by-layer compression of a model in memory.

Order of work (a "block" is one unit of progress and one shard in the work dir, see planning.py):
1. `pre`: targets outside the decoder layers that run before them (vision tower, projector),
   calibrated on one pass of the original model;
2. the decoder layers, one at a time: the inputs of layer i are its own arguments of a plain
   forward (masks, position embeddings, cross-attention states: capture.py) with the hidden states
   of layers < i after their compression; statistics of its targeted linears are collected, they
   are compressed, and the compressed layer's outputs become the next inputs. Only the current
   layer sits on `device`;
3. `post`: the LM head, calibrated on the final (normed) hidden states.
Each block's activation errors are measured in the pass that follows its compression (see
report.py); the block is then saved. A block whose shard exists in the work dir is loaded instead
of recomputed; its outputs are still recomputed (a forward pass), so a resumed run gives the same
result as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from llava_fa.calibration.architectures import architecture_of
from llava_fa.calibration.experts import BlockExperts
from llava_fa.calibration.stats import LayerStats, StatsCollector
from llava_fa.errors import ConfigError, DataError
from llava_fa.formats import CompressedLinear
from llava_fa.formats.base import weight_error
from llava_fa.io.modules import set_module
from llava_fa.methods.base import Method
from llava_fa.pipeline.capture import DecoderInputs, LayerCall
from llava_fa.pipeline.devices import dense_pass, device_of, reproducible
from llava_fa.pipeline.distributed import SINGLE, World, assign_owners, barrier, share_block
from llava_fa.pipeline.passes import (SampleSplit, capture_decoder_inputs, feed_head, feed_layer, gather_hidden,
                                      normed_hidden, propagate, sample_split)
from llava_fa.pipeline.planning import Plan, layer_block, make_plan
from llava_fa.pipeline.report import ActivationErrorMeter, LayerReport, report_row
from llava_fa.pipeline.streaming import IN_MEMORY, InMemory
from llava_fa.pipeline.timing import StageClock
from llava_fa.pipeline.workdir import WorkDir

# A block's statistics come from one pass that `feed`s calibration inputs to the block's modules.
Feed = Callable[[StatsCollector], None]


@dataclass
class CompressionRun:
    """What every stage shares: the model and where its parts live, the calibration inputs, progress."""

    model: nn.Module
    method: Method
    plan: Plan
    samples: list[dict]  # batch-1 model inputs; empty: no calibration
    image_masks: list[torch.Tensor | None]  # per sample, True at image-token positions
    device: torch.device  # where the work is done
    home: torch.device  # where the decoder layers live between their turns
    dtype: torch.dtype
    stay_home: list[nn.Module]  # what the pass up to the first decoder layer never needs on `device`
    work: WorkDir
    on_block: Callable[[int, int, str], None] | None = None
    on_row: Callable[[LayerReport], None] | None = None
    world: World = SINGLE  # the ranks of a distributed run (distributed.py)
    clock: StageClock = field(default_factory=StageClock)  # wall seconds per stage (timing.py)
    stream: InMemory = IN_MEMORY  # loads and writes the model's parts at the boundaries (streaming.py)
    split: SampleSplit | None = None  # torchrun: the samples this rank runs through the decoder (passes.py)
    rows: list[LayerReport] = field(default_factory=list)
    finished: int = 0

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.get_submodule(self.plan.parts.layers)


@dataclass
class OpenBlock:
    """A block compressed (or loaded) whose rows wait for the pass that measures them."""

    name: str  # its shard: pre, layer_NNN, post
    label: str  # its progress label
    modules: dict[str, CompressedLinear]
    rows: list[LayerReport]
    meter: ActivationErrorMeter | None  # None: loaded from the work dir, or no calibration samples
    loaded: bool = False


# --- the pipeline --------------------------------------------------------------------------------

def compress_model(model: nn.Module, method: Method, names: list[str], samples: list[dict], *,
                   device: str | torch.device = "cpu", work_dir: Path | None = None, fingerprint: str = "",
                   on_block: Callable[[int, int, str], None] | None = None,
                   on_row: Callable[[LayerReport], None] | None = None, plan: Plan | None = None,
                   world: World = SINGLE, clock: StageClock | None = None,
                   stream: InMemory = IN_MEMORY) -> list[LayerReport]:
    """Compress the linear layers `names` of `model` in place; return one report row per layer.

    `samples`: calibration inputs (batch-1 dicts), may be empty for methods that need no
    statistics. `work_dir`: per-block shards; blocks found there (written under the same
    `fingerprint`) are loaded instead of recomputed. `on_block(done, total, label)` and
    `on_row(report)` (once per layer, when its block is finished) report progress. `plan`: the
    plan of `names` if the caller made it already (its targets are not checked again). `world`: the
    ranks of a distributed run (distributed.py); every rank calls this with the same arguments.
    `clock`: collects the wall seconds of each stage (timing.py). `stream`: a `streaming.Streamed`
    when `model` is a meta skeleton filled and written a layer at a time (streaming.py).
    """
    # A coarsely quantized layer can feed denormal floats to the next ones, and x86 CPUs process
    # those ~5x slower (measured: testbed, rtn 3-bit, 130 s -> 27 s). Values below 1e-38 carry no
    # information here, so flush them to zero while compressing.
    flushing = torch.set_flush_denormal(True)
    try:
        if plan is None:
            plan = make_plan(model, names, method)
        elif list(plan.names) != list(names):
            raise ValueError("compress_model: the plan was made for other layers than `names`")
        with reproducible(torch.device(device)):
            return _compress_model(model, method, plan, samples, torch.device(device), work_dir, fingerprint,
                                   on_block, on_row, world, clock or StageClock(), stream)
    finally:
        if flushing:
            torch.set_flush_denormal(False)


@torch.no_grad()
def _compress_model(model: nn.Module, method: Method, plan: Plan, samples: list[dict], device: torch.device,
                    work_dir: Path | None, fingerprint: str, on_block, on_row, world: World,
                    clock: StageClock, stream: InMemory) -> list[LayerReport]:
    check_calibration(model, method, plan, samples)
    # A streamed skeleton's layers sit on meta between their turns: their home while in memory is the CPU.
    home = torch.device("cpu") if stream is not IN_MEMORY else device_of(model.get_submodule(plan.parts.layers)[0])
    run = CompressionRun(model, method, plan, samples, image_masks(model, samples), device, home=home,
                         dtype=next(model.parameters()).dtype, stay_home=modules_left_home(model, plan),
                         work=WorkDir(work_dir, fingerprint, writer=world.writer), on_block=on_block, on_row=on_row,
                         world=world, clock=clock, stream=stream,
                         split=sample_split(world, len(samples), model, list(plan.names)))
    clock.cuda = device.type == "cuda"
    try:
        with clock("check weights"):  # streamed: every target read once for NaN/Inf before any work
            stream.before_capture(run)
        inputs = compress_pre(run)
        stream.after_capture(run)
        for i in range(plan.last_layer(calibrated=bool(samples)) + 1):
            compress_layer(run, i, inputs.hidden, inputs.calls[i], inputs.added[i])
            inputs.calls[i], inputs.added[i] = [], []  # layer i is done: what only it received can go
        stream.before_post(run)
        if run.split is not None and plan.post:
            gather_hidden(world, run.split, inputs.hidden)  # the LM head's pass takes every sample
        compress_post(run, inputs.hidden)
        with clock("save shards"):
            stream.finish(run)
    finally:
        with clock("save shards"):
            run.work.drain()  # the finished blocks reach the disk, also when the run stops: a resume starts after them
    return run.rows


def check_calibration(model: nn.Module, method: Method, plan: Plan, samples: list[dict]) -> None:
    if method.needs and not samples:
        raise ConfigError(f"method {method.name} needs calibration data; pass --nsamples > 0")
    if plan.post and samples and not hasattr(model.get_submodule(plan.parts.decoder), "norm"):
        raise ConfigError(f"cannot calibrate {plan.parts.lm_head}: the decoder has no final `norm`")


def image_token_id(model: nn.Module) -> int | None:
    cfg = model.config
    for key in ("image_token_id", "image_token_index"):
        v = getattr(cfg, key, None)
        if isinstance(v, int):
            return v
    return None


def image_masks(model: nn.Module, samples: list[dict]) -> list[torch.Tensor | None]:
    """Per sample, True where the decoder's sequence holds image features (None: all text)."""
    img_id = image_token_id(model) if architecture_of(model).image_features_in_sequence else None
    return [(s["input_ids"] == img_id) if (img_id is not None and "input_ids" in s) else None for s in samples]


def modules_left_home(model: nn.Module, plan: Plan) -> list[nn.Module]:
    """The catch pass runs no decoder layer (capture.py): the layers and an untied LM head need not
    visit the device."""
    stay: list[nn.Module] = [model.get_submodule(plan.parts.layers)]
    if plan.parts.lm_head and hasattr(model, "get_input_embeddings"):
        head, emb = model.get_submodule(plan.parts.lm_head), model.get_input_embeddings()
        if getattr(head, "weight", None) is not getattr(emb, "weight", None):
            stay.append(head)
    return stay


# --- the three stages ----------------------------------------------------------------------------

def compress_pre(run: CompressionRun) -> DecoderInputs:
    """Compress the vision tower / projector; return what the decoder layers receive per sample
    (captured by the pass that also measures the `pre` block)."""
    block = None
    if run.plan.pre:
        block = open_block(run, "pre", "pre", run.plan.pre, partial(capture_decoder_inputs, run))
    inputs = DecoderInputs.empty(run.plan.num_layers)
    needs_inputs = run.plan.last_layer(calibrated=True) >= 0
    if run.samples and (needs_inputs or (block is not None and block.meter is not None)):
        with measuring(block):
            with run.clock("capture"):
                inputs = capture_decoder_inputs(run)
    if block is not None:
        close_block(run, block)
    return inputs


def compress_layer(run: CompressionRun, index: int, hidden: list[torch.Tensor],
                   calls: list[LayerCall | None], added: list[torch.Tensor | None]) -> None:
    """Compress the targets of decoder layer `index` (if any); its outputs (plus what the model adds
    after it) replace `hidden`."""
    with run.clock("load layers"):  # from the safetensors files when streamed
        run.stream.take_layer(run, index)
        layer = run.layers[index].to(run.device)
    names = run.plan.layers.get(index, ())
    block = None
    if names:
        block = open_block(run, layer_block(index), f"layer {index + 1}/{run.plan.num_layers}", names,
                           partial(feed_layer, run, layer, names, hidden, calls))
    run.stream.before_forward(run, index)
    with run.clock("forward"), measuring(block), dense_pass(layer, run.device):  # the clock covers their exits too
        propagate(layer, hidden, calls, added, run.split.mine if run.split is not None else None)
    with run.clock("offload"):
        layer.to(run.home)
    if block is not None:
        close_block(run, block)
    with run.clock("save shards"):
        run.stream.leave_layer(run, index)
        if run.device.type == "cuda":
            torch.cuda.empty_cache()


def compress_post(run: CompressionRun, hidden: list[torch.Tensor]) -> None:
    """Compress the LM head, calibrated and measured on the final normed hidden states."""
    if not run.plan.post:
        return
    name = run.plan.post[0]
    norm = getattr(run.model.get_submodule(run.plan.parts.decoder), "norm", None)
    run.model.get_submodule(name).to(run.device)
    block = open_block(run, "post", "post", run.plan.post, partial(feed_head, run, norm, name, hidden))
    if block.meter is not None:
        with block.meter:
            head = run.model.get_submodule(name)
            for normed, _ in normed_hidden(run, norm, hidden):
                head(normed)
    run.model.get_submodule(name).to(run.home)
    close_block(run, block)


# --- one block -----------------------------------------------------------------------------------

def open_block(run: CompressionRun, block: str, label: str, names: tuple[str, ...], feed: Feed) -> OpenBlock:
    """Load a finished block from the work dir, or collect its statistics and compress it."""
    if run.work.done(block):
        modules, rows = run.work.load(block, run.device)
        for name, module in modules.items():
            set_module(run.model, name, module.to(device_of(run.model.get_submodule(name))))
        return OpenBlock(block, label, modules, rows, meter=None, loaded=True)
    owners = assign_owners(run.model, names, run.world)
    mine = tuple(n for n in names if owners[n] == run.world.rank)  # all of them in a single process
    experts = BlockExperts(run.model, mine)  # MoE expert linears among the targets (none: no effect)
    with run.clock("statistics"):
        stats = collect_block_stats(run, mine, feed, experts) if run.method.needs and run.samples else {}
    experts.pool_starved(stats)  # experts routed too few tokens take their module's pooled statistics
    done = {}
    with run.clock("compress"):
        for name in mine:
            compressed, seconds = compress_linear(run, name, stats.pop(name, None))  # pop: X^T X freed once used
            done[name] = (compressed, {"seconds": seconds, **experts.row_fields(name)})
    if run.world.active:
        with run.clock("wait for ranks"):  # the slower rank's compress time, apart from the transfer
            barrier(run.world)
    with run.clock("share"):
        done = share_block(run.world, names, owners, done, run.device)
    meter = ActivationErrorMeter() if run.samples else None
    modules, rows = {}, []
    with run.clock("install"):  # the report's weight errors and the swap into the model
        for name in names:
            modules[name] = done[name][0]
            rows.append(install(run, block, name, *done[name], meter))
    return OpenBlock(block, label, modules, rows, meter)


def collect_block_stats(run: CompressionRun, names: tuple[str, ...], feed: Feed,
                        experts: BlockExperts | None = None) -> dict[str, LayerStats]:
    """The statistics `method.needs` of the block's modules, over one pass of the calibration inputs
    (`experts` observes the routing of the block's MoE experts meanwhile)."""
    modules = {n: run.model.get_submodule(n) for n in names}
    modality = {n: "image" for n in names if run.plan.image_only(n)}
    experts = experts or BlockExperts(run.model, ())
    with StatsCollector(modules, run.method.needs, modality) as collector, experts.observing(collector):
        feed(collector)
    return collector.stats


def compress_linear(run: CompressionRun, name: str, stats: LayerStats | None) -> tuple[CompressedLinear, float]:
    """One linear layer compressed (not yet swapped into the model), and the seconds it took."""
    dense = run.model.get_submodule(name)
    if stats is not None and stats.count() == 0:
        raise DataError(f"{name} saw no calibration tokens; for vision/projector targets use image samples "
                        f"(--calib easyvqa or mixed)")
    # A recipe's layer_options (layer_methods.py) give some layers their own options.
    method = run.method.for_layer(name) if hasattr(run.method, "for_layer") else run.method
    t0 = time.perf_counter()
    compressed = method.compress(dense.weight.data, stats, None if dense.bias is None else dense.bias.data)
    return compressed.to(dense.weight.device), time.perf_counter() - t0


def install(run: CompressionRun, block: str, name: str, compressed: CompressedLinear, fields: dict,
            meter: ActivationErrorMeter | None) -> LayerReport:
    """Swap a compressed layer into the model and report it (the meter keeps W - W_hat until it measured it)."""
    weight = run.model.get_submodule(name).weight.detach().float()
    diff = weight_error(compressed, weight)  # W_hat rebuilt in row blocks where the format allows
    row = report_row(name, block, run.method.name, weight, diff, compressed, fields["seconds"])
    if meter is not None:
        meter.track(name, compressed, diff)
    set_module(run.model, name, compressed)
    return replace(row, **{k: v for k, v in fields.items() if k != "seconds"})


def measuring(block: OpenBlock | None) -> contextlib.AbstractContextManager:
    """The meter of a freshly compressed block, entered for the pass that follows (else nothing)."""
    return block.meter if block is not None and block.meter is not None else contextlib.nullcontext()


def close_block(run: CompressionRun, block: OpenBlock) -> None:
    """Give the rows their activation errors, save the shard, report the block."""
    if not block.loaded:
        if block.meter is not None:
            with run.clock("install"):  # the report's activation errors
                if run.split is not None and block.name not in ("pre", "post"):  # each rank measured its share
                    block.meter.reduce_over_ranks()
                errors = block.meter.errors()
            for row in block.rows:
                row.act_error = errors[row.name]
        with run.clock("save shards"):
            run.work.save(block.name, block.modules, block.rows)
    run.rows.extend(block.rows)
    if run.on_row:
        for row in block.rows:
            run.on_row(row)
    run.finished += 1
    if run.on_block:
        run.on_block(run.finished, len(run.plan.blocks), block.label)
