"""Memory-bounded compression: the model's weights are read when their turn comes and written when done.

sequential.py calls a stream (`InMemory` or `Streamed`) at the boundaries of its work: before the
catch pass, around each decoder layer, before the LM head block and at the end. `IN_MEMORY` does nothing there: the model
was loaded whole and save_pretrained writes it at the end. `Streamed` keeps the model a meta-device
skeleton (io/lazy.py) and, at each boundary, materializes what the next step needs and writes out
(io/shards.py) and releases what the last step finished:

- before any work: the targets' weights checked for NaN/Inf, a module at a time (one read);
- before the catch pass: every part outside the decoder layers but the LM head (embeddings, vision
  tower, projector, final norm), which the pass runs;
- after it (the `pre` block compressed): those parts written and released, the final norm kept;
- decoder layer i: materialized before its turn, written and released once its block is closed
  (layers past the last one run are copied the same way, without computing);
- the LM head before its block; it and the final norm written at the end.

Peak memory is then about one decoder layer (or the embeddings) plus the calibration activations
and the method's own working set (io/lazy.py also keeps glibc's heap from growing layer by layer).
The tensors written are those save_pretrained would write for the same model (`finish` checks
the names), and save_compressed assembles them into the atomic output folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from llava_fa.errors import LlavaFAError
from llava_fa.formats import CompressedLinear
from llava_fa.formats.base import DEFAULT_MODE, cached_forward
from llava_fa.io.lazy import LazyWeights, bound_heap, open_lazy
from llava_fa.io.shards import ShardWriter
from llava_fa.pipeline.distributed import raise_first
from llava_fa.pipeline.planning import check_targets

# The run is sequential.CompressionRun (model, plan, work dir...). Not imported, even for type
# checking: sequential imports this module, and the layering keeps imports one-way.
CompressionRun = Any


class InMemory:
    """The whole model is in memory: nothing to load or write at the boundaries."""

    writer: ShardWriter | None = None

    def before_capture(self, run: CompressionRun) -> None: ...

    def after_capture(self, run: CompressionRun) -> None: ...

    def take_layer(self, run: CompressionRun, index: int) -> None: ...

    def before_forward(self, run: CompressionRun, index: int) -> None: ...

    def leave_layer(self, run: CompressionRun, index: int) -> None: ...

    def before_post(self, run: CompressionRun) -> None: ...

    def finish(self, run: CompressionRun) -> None: ...


IN_MEMORY = InMemory()


class Streamed(InMemory):
    """A meta skeleton filled from the shards one step at a time; `writer` None: a rank that writes nothing."""

    def __init__(self, weights: LazyWeights, writer: ShardWriter | None):
        self.weights, self.writer = weights, writer
        self.written: set[str] = set()  # tensor names written (by this rank or, elsewhere, by rank 0)

    def before_capture(self, run: CompressionRun) -> None:
        self.check_weights(run)
        for name in outside_parts(run) - {run.plan.parts.lm_head}:
            self.weights.materialize(run.model.get_submodule(name), name)

    def check_weights(self, run: CompressionRun) -> None:
        """The NaN/Inf check make_plan could not do on the skeleton, before any work as there: one
        read of the targets' modules, a module at a time. Under torchrun each rank reads every
        world-size-th module and all stop with the first error in module order (distributed.raise_first)."""
        holders = [(f"{run.plan.parts.layers}.{i}", names) for i, names in run.plan.layers.items()]
        holders += [(name, (name,)) for name in (*run.plan.pre, *run.plan.post)]
        found = None
        for index in range(run.world.rank, len(holders), run.world.size):
            holder, names = holders[index]
            module = run.model.get_submodule(holder)
            self.weights.materialize(module, holder)
            try:
                check_targets(run.model, list(names), run.method)
            except LlavaFAError as err:
                found = (index, err)
                break
            finally:
                self.weights.release(module)
        raise_first(run.world, found)

    def after_capture(self, run: CompressionRun) -> None:
        self._write("outside_pre", run, sorted(outside_parts(run) - kept_for_post(run)))

    def take_layer(self, run: CompressionRun, index: int) -> None:
        name = f"{run.plan.parts.layers}.{index}"
        self.weights.materialize(run.layers[index], name)

    def before_forward(self, run: CompressionRun, index: int) -> None:
        """The compressed layer's CPU forward caches a dense copy of each weight (formats/base.py:
        cached_forward), a layer's worth of memory; rebuilding it per call computes the same values
        (dequantize(float32), same F.linear) where the activations are float32, so switch those."""
        for module in run.layers[index].modules():
            if isinstance(module, CompressedLinear) and getattr(module, "forward_mode", DEFAULT_MODE) == DEFAULT_MODE \
                    and "dequant" in module.forward_modes and _runs_cached(module, run.device, run.dtype):
                module.forward_mode = "dequant"

    def leave_layer(self, run: CompressionRun, index: int) -> None:
        self._write(f"layer_{index:03d}", run, [f"{run.plan.parts.layers}.{index}"])

    def before_post(self, run: CompressionRun) -> None:
        for name in sorted(kept_for_post(run)):
            self.weights.materialize(run.model.get_submodule(name), name)

    def finish(self, run: CompressionRun) -> None:
        """Copy the layers no step ran, write what is left, and check that every stored tensor was written."""
        done = set(self.written_layers(run))
        for index in range(run.plan.num_layers):
            if index not in done:
                self.take_layer(run, index)
                self.leave_layer(run, index)
        self.before_post(run)
        self._write("outside_post", run, sorted(kept_for_post(run)))
        expected = set(saved_keys(run.model))
        if self.written != expected:
            extra, lost = sorted(self.written - expected), sorted(expected - self.written)
            raise RuntimeError(f"streamed save wrote other tensors than save_pretrained would: missing {lost[:3]}, "
                               f"extra {extra[:3]}")

    def written_layers(self, run: CompressionRun) -> list[int]:
        prefix = run.plan.parts.layers + "."
        return sorted({int(k[len(prefix):].split(".")[0]) for k in self.written if k.startswith(prefix)})

    def _write(self, group: str, run: CompressionRun, names: list[str]) -> None:
        """Write the stored tensors of modules `names` as one shard, then release them."""
        ignore = set(getattr(run.model, "_keys_to_ignore_on_save", None) or ())
        tensors = {}
        for name in names:
            module = run.model.get_submodule(name)
            tensors.update({f"{name}.{k}": t for k, t in module.state_dict().items() if f"{name}.{k}" not in ignore})
        if self.writer is not None:
            self.writer.write(group, tensors)
        self.written.update(tensors)
        del tensors
        for name in names:
            self.weights.release(run.model.get_submodule(name))


def _runs_cached(module: CompressedLinear, device: torch.device, dtype: torch.dtype) -> bool:
    """Would `auto` pick cached_forward for float32 inputs on `device`? (Never for another dtype.)"""
    if dtype != torch.float32:
        return False
    probe = torch.empty(1, module.in_features, device=device, dtype=dtype)
    chosen = next((b for b in module.backends[DEFAULT_MODE] if b.runs(module, probe)), None)
    return chosen is not None and chosen.run is cached_forward


def outside_parts(run: CompressionRun) -> set[str]:
    """The largest modules that hold no decoder layer (their union is everything outside the layers)."""
    layers = run.plan.parts.layers
    parts: set[str] = set()

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if full == layers:
                continue
            if layers.startswith(full + "."):
                walk(full, child)
            else:
                parts.add(full)

    walk("", run.model)
    return parts


def kept_for_post(run: CompressionRun) -> set[str]:
    """What the LM head block and the final save need after the decoder layers."""
    keep = {run.plan.parts.lm_head} if run.plan.parts.lm_head else set()
    decoder = run.model.get_submodule(run.plan.parts.decoder)
    if isinstance(getattr(decoder, "norm", None), nn.Module):
        keep.add(f"{run.plan.parts.decoder}.norm")
    return keep & outside_parts(run)


def saved_keys(model: nn.Module) -> list[str]:
    ignore = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    return [k for k in model.state_dict() if k not in ignore]


# --- choosing the path -----------------------------------------------------------------------------

def open_model(path: Path, dtype: torch.dtype | str, streamed: bool,
               info: Callable[[str], None]) -> tuple[nn.Module, LazyWeights | None]:
    """(the model, where its weights come from): a meta skeleton when the layer-by-layer path applies,
    else the model loaded whole (said in one info line, with the reason)."""
    from llava_fa.io.checkpoint import load_model
    from llava_fa.selection import find_parts

    reason = "--no-stream" if not streamed else None
    if reason is None:
        # before the skeleton: building it allocates and frees weight-sized tensors (16 MB attention
        # weights of a 1B model) that grew glibc's heap to 1.1 GB, kept resident for the whole run
        bound_heap()
        opened = open_lazy(path, dtype)
        if not isinstance(opened, str):
            model, weights = opened
            reason = splittable(model, find_parts(model))
            if reason is None:
                info("loading layer by layer: each decoder layer is read from the safetensors files at its turn "
                     "and written once compressed")
                return model, weights
        else:
            reason = opened
    info(f"loading the whole model into memory ({reason})")
    return load_model(path, "cpu", dtype), None


def stream_for(weights: LazyWeights | None, work_dir: Path, writer: bool) -> InMemory:
    """What compress_model calls at the boundaries: IN_MEMORY for a model loaded whole, else a
    Streamed whose output shards wait in the work dir until save_compressed moves them into --out
    (the ranks other than the writer read and release, and write nothing)."""
    if weights is None:
        return IN_MEMORY
    return Streamed(weights, ShardWriter(Path(work_dir) / "shards") if writer else None)


def splittable(model: nn.Module, parts) -> str | None:
    """Why the pipeline could not stream this skeleton (None: it can)."""
    from llava_fa.selection import dense_fused_weights

    if not parts.layers or not parts.decoder:
        return "no decoder layers found"
    if dense_fused_weights(model, parts.layers):
        return "fused MoE experts"
    path = parts.layers.split(".")
    for depth in range(len(path)):  # tensors held directly by a module above the layers belong to no part
        owner = model.get_submodule(".".join(path[:depth]))
        if any(True for _ in owner.parameters(recurse=False)) or \
                set(owner._buffers) - owner._non_persistent_buffers_set:
            return f"{type(owner).__name__} holds tensors of its own"
    return None
