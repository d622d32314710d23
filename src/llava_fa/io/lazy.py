"""Where a module's weights come from when the model is not loaded whole: the safetensors shards.

`open_lazy(path, dtype)` builds the model as a skeleton whose parameters (and stored buffers) sit on
the meta device: no memory. Buffers the model computes itself (rotary `inv_freq`, `position_ids`)
are made for real, as `from_pretrained` makes them. `LazyWeights.materialize(module)` then reads
that module's tensors, and only those, from the shards (one `safe_open` per file, closed right
after, so no mapping of a multi-GB file stays resident), cast as `from_pretrained` casts them;
`release(module)` sends them back to meta. The pipeline (pipeline/streaming.py) calls the two at
each decoder layer's turn, so memory holds about one layer at a time.

The skeleton must end up with exactly the tensors `from_pretrained` would give it, or the
checkpoint written would differ. Where that cannot be guaranteed cheaply, `open_lazy` returns the
reason instead of a model and the caller loads the model whole: no safetensors files, a weight
conversion that is more than a renaming (fused MoE experts), tied or shared weights, modules kept
in float32 under a half-precision dtype, a key the shards lack, or a quantized source.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from torch import nn


class LazyWeights:
    """Model tensor name -> (shard file, stored key), and the dtype floating tensors are cast to."""

    def __init__(self, sources: dict[str, tuple[Path, str]]):
        self.sources = sources

    def materialize(self, module: nn.Module, prefix: str) -> None:
        """Fill `module`'s meta parameters and stored buffers from the shards (`prefix`: its name in
        the model). Tensors already in memory are left alone (a compressed block loaded from the work
        dir, a part kept from an earlier step)."""
        wanted = [(name, t) for name, t in _stored(module) if t.device.type == "meta"]
        by_file: dict[Path, list[str]] = defaultdict(list)
        for name, _ in wanted:
            by_file[self.sources[_join(prefix, name)][0]].append(name)
        loaded = {}
        from safetensors import safe_open

        for file, names in by_file.items():
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in names:
                    loaded[name] = f.get_tensor(self.sources[_join(prefix, name)][1])
        for name, meta in wanted:
            # from_pretrained casts floating tensors to the model dtype and keeps integer ones as stored.
            tensor = loaded.pop(name)
            _assign(module, name, tensor.to(meta.dtype) if tensor.is_floating_point() else tensor)

    @staticmethod
    def release(module: nn.Module) -> None:
        """Send `module`'s parameters and stored buffers (compressed ones included) back to meta;
        the module objects stay, so names, shapes and quantization_config entries are still known."""
        for name, tensor in _stored(module):
            if tensor.device.type != "meta":
                _assign(module, name, torch.empty_like(tensor, device="meta"))
        for mod in module.modules():  # a compressed layer's dense copy cached by its forward (formats/base.py)
            drop = getattr(mod, "drop_runtime_caches", None)
            if callable(drop):
                drop()
        return_freed_memory()

    @staticmethod
    def count_materialized(modules) -> int:
        """How many of `modules` hold at least one tensor in memory (what tests watch)."""
        return sum(any(t.device.type != "meta" for _, t in _stored(m)) for m in modules)


# glibc serves allocations under its mmap threshold from the heap, and raises that threshold (up to
# 32 MB) each time it frees a larger mapped block: weight-sized temporaries then land on the heap,
# which fragments, and freed memory is not given back. Measured, random 1B Llama, rtn: peak RSS 1.7
# GB, growing layer after layer (0.6 -> 1.3 GB between layers on a 250M model); with a fixed 8 MB
# threshold and a trim after each layer, 1.1 GB and flat. 8 MB: weights and their temporaries are
# mapped (given back when freed), activations of a few MB still reuse the heap (mapping every
# allocation over 1 MB measured several times slower, in page faults).
MMAP_THRESHOLD = 8 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def _libc():
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.mallopt, _LIBC.malloc_trim  # glibc only (musl, macOS: neither)
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


_LIBC = None


def bound_heap() -> None:
    """Fix glibc's mmap threshold (see above) for the rest of the process; nothing elsewhere."""
    if _libc():
        _libc().mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def return_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim; nothing elsewhere)."""
    if _libc():
        _libc().malloc_trim(0)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _stored(module: nn.Module):
    """(name, tensor) of what a state_dict stores: parameters and persistent buffers."""
    for mod_name, mod in module.named_modules():
        for key, p in mod._parameters.items():
            if p is not None:
                yield _join(mod_name, key), p
        for key, b in mod._buffers.items():
            if b is not None and key not in mod._non_persistent_buffers_set:
                yield _join(mod_name, key), b


def _assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, key = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if key in owner._parameters:
        # A new Parameter (torch refuses to move one between meta and a real device in place); nothing
        # else refers to it: open_lazy refused tied weights.
        owner._parameters[key] = nn.Parameter(tensor, requires_grad=owner._parameters[key].requires_grad)
    else:
        owner._buffers[key] = tensor


# --- the skeleton --------------------------------------------------------------------------------

def open_lazy(path: Path, dtype: torch.dtype | str) -> tuple[nn.Module, LazyWeights] | str:
    """(meta skeleton in eval mode, where its tensors come from), or why the model must be loaded whole."""
    from llava_fa.io.checkpoint import model_class, read_config

    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return "the folder holds no *.safetensors files"
    config = read_config(path)
    if config.get("quantization_config") is not None:
        return "the model is already quantized"
    skeleton = _skeleton(path, model_class(config), dtype)
    if isinstance(skeleton, str):
        return skeleton
    sources = _sources(skeleton, _index(path, files))
    return sources if isinstance(sources, str) else (skeleton, LazyWeights(sources))


def _skeleton(path: Path, cls, dtype) -> nn.Module | str:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(path)
    if dtype == "auto":
        dtype = getattr(config, "dtype", None)
        if not isinstance(dtype, torch.dtype):
            return "config.json names no dtype for --dtype auto"
    if dtype != torch.float32 and (getattr(cls, "_keep_in_fp32_modules", None)
                                   or getattr(cls, "_keep_in_fp32_modules_strict", None)):
        return f"{cls.__name__} keeps some modules in float32 under {dtype}"
    # Parameters on meta, buffers for real: the buffers a model computes in __init__ (rotary
    # frequencies) are then exactly those a from_pretrained model computes.
    with init_empty_weights(include_buffers=False):
        model = cls._from_config(config, dtype=dtype)
    if (path / "generation_config.json").is_file() and model.can_generate():
        model.generation_config = GenerationConfig.from_pretrained(path)  # what from_pretrained reads too
    model.tie_weights()  # as from_pretrained does after loading: tied weights then show up as shared
    shared = _shared(model)
    if shared:
        return f"tied or shared weights ({', '.join(shared[:2])})"
    LazyWeights.release(model)  # stored buffers too: their values come from the shards, not __init__
    return model.eval()


def _shared(model: nn.Module) -> list[str]:
    seen: dict[int, str] = {}
    shared = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            shared.append(f"{seen[id(p)]} = {name}")
        seen[id(p)] = name
    return shared


def _index(path: Path, files: list[Path]) -> dict[str, Path]:
    """Stored key -> its file (from the headers: an index file may be stale or missing)."""
    from llava_fa.io.files import read_header

    return {key: f for f in files for key in read_header(f, fix="download or rebuild the model")
            if key != "__metadata__"}


def _sources(model: nn.Module, stored: dict[str, Path]) -> dict[str, tuple[Path, str]] | str:
    """Model tensor name -> (file, stored key) through transformers' own key renamings (LLaVA stores
    `language_model.model.*` for `model.language_model.*`); a key a converter would rewrite
    (split, fuse, transpose) cannot be read as is."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    wanted = dict(_stored(model))
    sources = {}
    for key, file in stored.items():
        name, converted = rename_source_key(key, renamings, converters, model.base_model_prefix, wanted)
        if converted is not None:
            return f"stored weights are converted on load ({key})"
        sources.setdefault(name, (file, key))
    missing = [name for name in wanted if name not in sources]
    if missing:
        return f"the shards lack {len(missing)} weight(s) (e.g. {missing[0]})"
    return sources
