"""Decode speed of a causal LM: time to first token, greedy tokens/s, weight and peak memory.

`measure(model, spec, device)` times, on random prompt tokens:
- the prefill of a `prompt_len`-token prompt at batch 1 up to its first greedy token (TTFT, median
  of `repeats` after `warmup` untimed ones);
- greedy decoding of `new_tokens` tokens at each batch size (tokens/s = batch * steps / seconds).

Decoding is our own loop over a transformers StaticCache (`StaticDecoder`): every step has the same
shapes and tensor addresses (the token, its position and a 4-D additive attention mask over the whole
cache are buffers updated in place), so one step can be captured in a CUDA graph
(torch.cuda.CUDAGraph) and replayed. A step whose capture fails (a forward backend that synchronizes
with the host, e.g. one that calls nonzero()) runs eagerly; the record says which one ran and why.
The cache's own write position (its layers' `cumulative_length` tensor) is rewound in place, so
warm-up steps and repeated prefills leave no trace.

Memory: `weight_memory` counts the bytes of the model's parameters and buffers and of the tensors
its modules keep as plain attributes (the dense weight a compressed layer caches in forward mode
"cached", a kernel's repacked codes...), each storage once; on CUDA the record adds what was
allocated when the measurement started (the weights, for a freshly loaded model) and the peak.
On CPU everything runs eagerly (that is how the tests use it).

`compile_backend` (`--compile`: "inductor") runs each decode step through torch.compile, which fuses the
ops between the linears (norms, rotary, residuals, the attention's glue). On the H200 those take about
3 ms of the 7B bf16 step: 6.94 ms per step (decode_h200/synthetic-7b_bf16.json) against 3.80 ms for its
224 linears (kernels_h200/0101892/fourier_rfft.json, dense bf16 at one token, warm L2). Compressed layers
stay outside the compiled graphs (CompressedLinear.forward is excluded from tracing), so each runs its
own kernel; the graphs between them are then captured in the step's CUDA graph as before.
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from llava_fa.errors import ConfigError
from llava_fa.formats.base import CompressedLinear, set_forward_mode


@dataclass(frozen=True)
class DecodeSpec:
    batch_sizes: tuple[int, ...] = (1, 16)
    prompt_len: int = 512
    new_tokens: int = 128
    warmup: int = 3  # untimed decode steps (and prefills) before the timed ones
    repeats: int = 3  # timed prefills; TTFT is their median
    cuda_graphs: bool = True
    forward_mode: str = "auto"
    seed: int = 0
    compile_backend: str = ""  # torch.compile backend of the decode steps ("inductor"; "" = eager)

    def check(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"batch sizes must be positive integers, got {self.batch_sizes}. Fix: e.g. --batch 1,16")
        for key, flag in (("prompt_len", "--prompt"), ("new_tokens", "--new-tokens"), ("repeats", "--repeats")):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} ({flag}) must be at least 1, got {getattr(self, key)}. Fix: e.g. {flag} 8")
        if not 0 <= self.warmup <= self.new_tokens:
            raise ConfigError(f"warmup (--warmup) must be from 0 to new_tokens ({self.new_tokens}), got {self.warmup}. "
                              "Fix: e.g. --warmup 3")


# --- the decode loop -----------------------------------------------------------------------------

def _call_style(model: nn.Module) -> tuple[str, bool]:
    """The forward's name for the cache (transformers 5.2x: `cache`, earlier: `past_key_values`) and
    whether it takes `logits_to_keep`."""
    names = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in names else "past_key_values"), "logits_to_keep" in names


def _rewind(cache, length: int) -> None:
    """Set the write position of every layer of a StaticCache (stale entries are overwritten later)."""
    for layer in cache.layers:
        pos = getattr(layer, "cumulative_length", None)
        if isinstance(pos, torch.Tensor):
            pos.fill_(length)
        elif pos is not None:
            layer.cumulative_length = length


class StaticDecoder:
    """Greedy decoding of a fixed batch over a StaticCache of `max_len` positions."""

    def __init__(self, model: nn.Module, batch: int, max_len: int, device: torch.device, compile_backend: str = ""):
        from transformers import StaticCache

        max_len = -(-max_len // 64) * 64  # aligned rows for SDPA's masked kernels; extra positions stay masked
        self.model, self.batch, self.max_len, self.device = model, batch, max_len, device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.min = torch.finfo(self.dtype).min
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.cache_kw, self.keep = _call_style(model)
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.mask = torch.full((1, 1, 1, max_len), self.min, dtype=self.dtype, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.start, self.first = 0, self.tok.clone()
        # the decode step compiled (same shapes every step: no recompiles); the prefill stays eager
        self.decode_next = torch.compile(self._next, backend=compile_backend, dynamic=False) if compile_backend \
            else self._next

    def _next(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kwargs = {self.cache_kw: self.cache, "use_cache": True}
        if self.keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask, **kwargs)
        return out.logits[:, -1].argmax(-1, keepdim=True)

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """Run the prompt (batch, P) from an empty cache; returns the first token, ready to decode on."""
        P = prompt.shape[1]
        _rewind(self.cache, 0)
        q = torch.arange(P, device=self.device)
        k = torch.arange(self.max_len, device=self.device)
        mask = torch.zeros(P, self.max_len, dtype=self.dtype, device=self.device)
        mask = mask.masked_fill(k[None, :] > q[:, None], self.min)[None, None]
        self.first = self._next(prompt, q[None].expand(prompt.shape[0], P), mask)
        self.start = P
        self.reset()
        return self.first

    def reset(self) -> None:
        """Back to the state right after the prefill."""
        _rewind(self.cache, self.start)
        self.tok.copy_(self.first)
        self.pos.fill_(self.start)
        self.mask.fill_(self.min)
        self.mask[..., :self.start] = 0

    def step(self) -> None:
        """One token: attend to the positions so far and this one, write the greedy next token."""
        self.mask.index_fill_(-1, self.pos, 0.0)
        self.tok.copy_(self.decode_next(self.tok, self.pos.view(1, 1).expand(self.batch, 1), self.mask))
        self.pos.add_(1)

    def warm(self, steps: int) -> None:
        """Untimed steps (on a side stream on CUDA, as graph capture wants), then reset."""
        if self.device.type == "cuda":
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(steps):
                    self.step()
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:
            for _ in range(steps):
                self.step()
        self.reset()

    def capture(self) -> str | None:
        """Capture one step in a CUDA graph; returns why it failed (then steps run eagerly), else None."""
        graph = torch.cuda.CUDAGraph()
        try:  # a stream of its own: a failed capture leaves nothing behind on a shared one
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(self.device)):
                self.step()
        except Exception as e:  # whatever a backend does that capture forbids (host syncs, CPU tensors)
            self.graph = None
            try:
                torch.cuda.synchronize(self.device)
            except RuntimeError:
                pass
            self.reset()
            first_line = (str(e).strip().splitlines() or [""])[0]
            return f"{type(e).__name__}: {first_line[:300]}"
        self.graph = graph
        self.reset()
        return None

    def run(self, steps: int, out: torch.Tensor | None = None) -> None:
        """`steps` decode steps from the current state; out[:, i] receives the tokens of step i."""
        for i in range(steps):
            if self.graph is not None:
                self.graph.replay()
            else:
                self.step()
            if out is not None:
                out[:, i:i + 1].copy_(self.tok)

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.cache.layers
                   for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)


@torch.inference_mode()
def static_greedy(model: nn.Module, prompt: torch.Tensor, new_tokens: int, cuda_graphs: bool = False,
                  warmup: int = 0, compile_backend: str = "") -> tuple[torch.Tensor, dict[str, Any]]:
    """Greedy continuation (batch, new_tokens) of `prompt` by the static-cache loop, and how it ran."""
    device = prompt.device
    dec = StaticDecoder(model, prompt.shape[0], prompt.shape[1] + new_tokens, device, compile_backend)
    first = dec.prefill(prompt)
    info: dict[str, Any] = {"cuda_graph": False, "graph_error": None}
    dec.warm(min(warmup, new_tokens))
    if cuda_graphs and device.type == "cuda":
        info["graph_error"] = dec.capture()
        info["cuda_graph"] = dec.graph is not None
    out = torch.empty(prompt.shape[0], new_tokens, dtype=torch.long, device=device)
    out[:, :1] = first
    dec.run(new_tokens - 1, out[:, 1:])
    return out, info


# --- timing ----------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def random_prompt(model: nn.Module, batch: int, length: int, seed: int, device: torch.device) -> torch.Tensor:
    """Random token ids of the model's vocabulary, avoiding an image placeholder token if it has one."""
    cfg = model.config
    vocab = cfg.get_text_config(decoder=True).vocab_size
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    for key in ("image_token_id", "image_token_index"):
        special = getattr(cfg, key, None)
        if isinstance(special, int):
            ids[ids == special] = (special + 1) % vocab
    return ids.to(device)


def time_prefill(model: nn.Module, spec: DecodeSpec, device: torch.device) -> dict[str, Any]:
    """TTFT: a `prompt_len`-token prompt at batch 1 up to its first greedy token."""
    prompt = random_prompt(model, 1, spec.prompt_len, spec.seed, device)
    dec = StaticDecoder(model, 1, spec.prompt_len + 1, device)
    for _ in range(spec.warmup):
        dec.prefill(prompt)
    times = [_timed(lambda: dec.prefill(prompt), device) for _ in range(spec.repeats)]
    ttft = statistics.median(times)
    return {"prompt_len": spec.prompt_len, "batch": 1, "ttft_ms": ttft * 1e3, "ttft_ms_all": [t * 1e3 for t in times],
            "prefill_tokens_per_s": spec.prompt_len / ttft}


def time_decode(model: nn.Module, spec: DecodeSpec, batch: int, device: torch.device) -> dict[str, Any]:
    """Greedy tokens/s at `batch` after a `prompt_len`-token prefill (CUDA graph where it captures)."""
    prompt = random_prompt(model, batch, spec.prompt_len, spec.seed + batch, device)
    dec = StaticDecoder(model, batch, spec.prompt_len + spec.new_tokens, device, spec.compile_backend)
    dec.prefill(prompt)
    dec.warm(spec.warmup)
    graph_error = None
    if spec.cuda_graphs and device.type == "cuda":
        graph_error = dec.capture()
        if dec.graph is not None:  # replay the graph a few times before timing, too
            dec.run(spec.warmup)
            dec.reset()
    seconds = _timed(lambda: dec.run(spec.new_tokens), device)
    return {"batch": batch, "new_tokens": spec.new_tokens, "seconds": seconds,
            "tokens_per_s": batch * spec.new_tokens / seconds, "ms_per_step": seconds / spec.new_tokens * 1e3,
            "cuda_graph": dec.graph is not None, "graph_error": graph_error, "kv_cache_bytes": dec.cache_bytes()}


# --- memory and modes ------------------------------------------------------------------------------

_MODULE_SLOTS = {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"}


def _held_tensors(obj: Any, depth: int = 4) -> list[torch.Tensor]:
    """Tensors inside a plain attribute value (dicts, lists, tuples, simple objects), not modules."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth == 0 or isinstance(obj, (nn.Module, str, bytes, int, float, type)) or obj is None:
        return []
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        items = list(obj)
    elif hasattr(obj, "__dict__") and not callable(obj):
        items = list(vars(obj).values())
    else:
        return []
    return [t for item in items for t in _held_tensors(item, depth - 1)]


def weight_memory(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's tensors, each storage once: compressed layers' stored tensors, the other
    parameters and buffers, and workspaces (tensors modules keep as attributes: cached dense weights...)."""
    seen: set[tuple[str, int]] = set()

    def size(t: torch.Tensor) -> int:
        if t.device.type == "meta":
            return 0
        key = (str(t.device), t.untyped_storage().data_ptr())
        if key in seen:
            return 0
        seen.add(key)
        return t.untyped_storage().nbytes()

    # the buffers resident now (not stored_tensors(), which rebuilds codes a kernel layout holds: counted there)
    stored = sum(size(t) for m in model.modules() if isinstance(m, CompressedLinear)
                 for t in m.buffers(recurse=False))
    dense = sum(size(t) for t in (*model.parameters(), *model.buffers()))
    work = sum(size(t) for m in model.modules() for k, v in vars(m).items() if k not in _MODULE_SLOTS
               for t in _held_tensors(v))
    return {"weight_bytes": stored + dense + work, "compressed_stored_bytes": stored, "other_bytes": dense,
            "workspace_bytes": work}


def forward_backends(model: nn.Module, device: torch.device) -> dict[str, str]:
    """Per format, the backend its forward mode picks for a 1-token input in the model's dtype here."""
    dtype = model.get_input_embeddings().weight.dtype
    found: dict[str, str] = {}
    for m in model.modules():
        if isinstance(m, CompressedLinear) and m.format not in found:
            x = torch.zeros(1, 1, m.in_features, dtype=dtype, device=device)
            mode = getattr(m, "forward_mode", "auto")
            chosen = next((b for b in m.backends.get(mode, ()) if b.runs(m, x)), None)
            found[m.format] = getattr(getattr(chosen, "run", None), "__name__", "none")
    return found


@torch.inference_mode()
def measure(model: nn.Module, spec: DecodeSpec, device: str | torch.device) -> dict[str, Any]:
    """TTFT, decode tokens/s per batch size and memory of `model` (already on `device`)."""
    spec.check()
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    n_compressed = sum(isinstance(m, CompressedLinear) for m in model.modules())
    if n_compressed:
        set_forward_mode(model, spec.forward_mode)
    memory: dict[str, Any] = {}
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        memory["allocated_at_start_bytes"] = torch.cuda.memory_allocated(device)
    prefill = time_prefill(model, spec, device)
    decode = {}
    for b in spec.batch_sizes:
        decode[str(b)] = time_decode(model, spec, b, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next batch's cache takes the room of this one's
    memory.update(weight_memory(model))
    if device.type == "cuda":
        memory["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return {"spec": asdict(spec), "device": str(device), "compressed_layers": n_compressed,
            "forward_mode": spec.forward_mode if n_compressed else None,
            "backends": forward_backends(model, device), "prefill": prefill, "decode": decode, "memory": memory}
