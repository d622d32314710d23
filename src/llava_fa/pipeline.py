"""Sequential, layer-by-layer compression with per-layer shards for resuming.

Order of work (a "block" is one unit of progress and one shard in the work dir):
1. `pre`: targets outside the decoder layers that run before them (vision tower, projector),
   calibrated on one pass of the original model;
2. the decoder layers, one at a time: the inputs of layer i are captured after layers < i are
   compressed; statistics of its targeted linears are collected, they are compressed, and the
   compressed layer's outputs become the next inputs. Only the current layer sits on `device`;
3. `post`: the LM head, calibrated on the final (normed) hidden states.
A block whose shard exists in the work dir is loaded instead of recomputed; its outputs are still
recomputed (a forward pass), so a resumed run gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llava_fa.calibration.stats import StatsCollector
from llava_fa.errors import CheckpointError, ConfigError, DataError
from llava_fa.io.modules import build_module, module_entry, set_module
from llava_fa.io.files import atomic_write_bytes, read_header
from llava_fa.formats import CompressedLinear
from llava_fa.calibration.stats import XTX, LayerStats
from llava_fa.methods.base import Method
from llava_fa.selection import default_patterns, find_parts, select

log = logging.getLogger("llava_fa")


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
    act_error: float | None  # ||(W - W_hat) X^T||_F / ||W X^T||_F on the calibration inputs
    seconds: float
    # Stored bits per part (codes, scales, masks...) where the format itemizes them, so bpw can be
    # reported under the conventions of other papers too (e.g. sign codes only for binarization).
    bits: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stop(Exception):
    """Raised by the hook on the first decoder layer once its inputs are captured."""


# --- work dir ------------------------------------------------------------------------------------

class WorkDir:
    """Per-block shards: `<block>.safetensors` (the compressed modules) then `<block>.json`, whose
    presence marks the block finished. Both are written atomically."""

    def __init__(self, path: Path | None, fingerprint: str):
        self.path = Path(path) if path is not None else None
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        state = self.path / "state.json"
        if state.exists():
            try:
                old = json.loads(state.read_text()).get("fingerprint")
            except ValueError:
                old = None
            if old != fingerprint:
                raise ConfigError(f"work dir {self.path} holds a run with another model, recipe or calibration. "
                                  f"Fix: pass --restart to discard it, or another --work-dir")
        else:
            atomic_write_bytes(state, json.dumps({"fingerprint": fingerprint}).encode())

    def done(self, block: str) -> bool:
        if self.path is None or not (self.path / f"{block}.json").exists():
            return False
        try:
            read_header(self.path / f"{block}.safetensors")
            json.loads((self.path / f"{block}.json").read_text())
            return True
        except (CheckpointError, ValueError):
            log.warning("work dir shard %s is damaged; recomputing it", block)
            return False

    def save(self, block: str, modules: dict[str, CompressedLinear], rows: list[LayerReport]) -> None:
        if self.path is None:
            return
        tensors = {f"{n}.{k}": t.detach().cpu().contiguous()
                   for n, m in modules.items() for k, t in m.state_dict().items()}
        tmp = self.path / f".{block}.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(self.path / f"{block}.safetensors")
        meta = {"modules": {n: module_entry(m) for n, m in modules.items()}, "rows": [r.to_dict() for r in rows]}
        atomic_write_bytes(self.path / f"{block}.json", json.dumps(meta).encode())

    def load(self, block: str, device: torch.device | str) -> tuple[dict[str, CompressedLinear], list[LayerReport]]:
        meta = json.loads((self.path / f"{block}.json").read_text())
        tensors = load_file(str(self.path / f"{block}.safetensors"))
        modules = {}
        for name, entry in meta["modules"].items():
            mod = build_module(name, entry)
            sd = {k: tensors[f"{name}.{k}"] for k in mod.state_dict()}
            mod.load_state_dict(sd)
            modules[name] = mod.to(device)
        return modules, [LayerReport(**r) for r in meta["rows"]]


def make_fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- helpers -------------------------------------------------------------------------------------

def check_targets(model: nn.Module, names: list[str], method: Method) -> None:
    """Everything that can be wrong with the targets, found before any work starts."""
    for name in names:
        mod = model.get_submodule(name)
        if not isinstance(mod, nn.Linear):
            raise ConfigError(f"{name} is a {type(mod).__name__}, not a linear layer")
        if not torch.isfinite(mod.weight).all():
            bad = int((~torch.isfinite(mod.weight)).sum())
            raise DataError(f"layer {name} has {bad} NaN/Inf weight(s); the model is broken. "
                            f"Fix: check the checkpoint you are compressing")
        method.check_layer(name, mod)


def _move_except(model: nn.Module, keep: list[nn.Module], device: torch.device | str) -> None:
    """Move every parameter and buffer not inside `keep` (in place, so tied weights stay tied)."""
    skip = {id(t) for k in keep for t in [*k.parameters(), *k.buffers()]}
    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None and id(p) not in skip:
                p.data = p.data.to(device)
        for key, b in mod._buffers.items():
            if b is not None and id(b) not in skip:
                mod._buffers[key] = b.to(device)


def _to_device(sample: dict, device, dtype: torch.dtype) -> dict:
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in sample.items()}


def image_token_id(model: nn.Module) -> int | None:
    cfg = model.config
    for key in ("image_token_id", "image_token_index"):
        v = getattr(cfg, key, None)
        if isinstance(v, int):
            return v
    return None


def _report_row(name: str, block: str, method: str, dense: nn.Linear, q: CompressedLinear, stats: LayerStats | None,
                seconds: float) -> LayerReport:
    W = dense.weight.detach().float()
    D = W - q.dequantize(torch.float32).to(W.device)
    rel = (D.norm() / W.norm().clamp_min(1e-30)).item()
    act = None
    if stats is not None and stats.xtx and stats.count() > 0:
        H = stats.xtx_sum().to(W.device)
        num = ((D @ H) * D).sum().clamp_min(0)
        den = ((W @ H) * W).sum().clamp_min(1e-30)
        act = math.sqrt((num / den).item())
    bits = q.bits_breakdown() if hasattr(q, "bits_breakdown") else None
    return LayerReport(name, block, q.out_features, q.in_features, method, q.format, q.storage_bits(),
                       q.bits_per_weight(), rel, act, seconds, bits)


# --- the pipeline --------------------------------------------------------------------------------

def compress_model(model: nn.Module, method: Method, names: list[str], samples: list[dict], *,
                   device: str | torch.device = "cpu", work_dir: Path | None = None, fingerprint: str = "",
                   on_block: Callable[[int, int, str], None] | None = None,
                   on_row: Callable[[LayerReport], None] | None = None) -> list[LayerReport]:
    """Compress the linear layers `names` of `model` in place; return one report row per layer.

    `samples`: calibration inputs (batch-1 dicts), may be empty for methods that need no
    statistics. `work_dir`: per-block shards; blocks found there (written under the same
    `fingerprint`) are loaded instead of recomputed. `on_block(done, total, label)` and
    `on_row(report)` report progress.
    """
    # A coarsely quantized layer can feed denormal floats to the next ones, and x86 CPUs process
    # those ~5x slower (measured: testbed, rtn 3-bit, 130 s -> 27 s). Values below 1e-38 carry no
    # information here, so flush them to zero while compressing.
    flushing = torch.set_flush_denormal(True)
    try:
        return _compress_model(model, method, names, samples, device=device, work_dir=work_dir,
                               fingerprint=fingerprint, on_block=on_block, on_row=on_row)
    finally:
        if flushing:
            torch.set_flush_denormal(False)


@torch.no_grad()
def _compress_model(model, method, names, samples, *, device, work_dir, fingerprint, on_block, on_row):
    device = torch.device(device)
    parts = find_parts(model)
    layers: nn.ModuleList = model.get_submodule(parts.layers)
    check_targets(model, names, method)
    needs = set(method.needs)
    if needs and not samples:
        raise ConfigError(f"method {method.name} needs calibration data; pass --nsamples > 0")
    if samples:
        needs.add(XTX)  # X^T X also gives the activation-weighted error of the report
    if len({getattr(layer, "attention_type", None) for layer in layers}) > 1:
        raise ConfigError("decoder layers with different attention types (sliding/full) are not supported yet")

    per_layer: dict[int, list[str]] = {}
    pre, post = [], []
    for n in names:
        if n.startswith(parts.layers + "."):
            per_layer.setdefault(int(n[len(parts.layers) + 1:].split(".")[0]), []).append(n)
        elif n == parts.lm_head:
            post.append(n)
        else:
            pre.append(n)
    if post and samples and not hasattr(model.get_submodule(parts.decoder), "norm"):
        raise ConfigError(f"cannot calibrate {parts.lm_head}: the decoder has no final `norm`")

    blocks = (["pre"] if pre else []) + [f"layer_{i:03d}" for i in sorted(per_layer)] + (["post"] if post else [])
    total, finished = len(blocks), 0
    work = WorkDir(work_dir, fingerprint)
    rows: list[LayerReport] = []
    img_id = image_token_id(model)
    masks = [(s["input_ids"] == img_id) if (img_id is not None and "input_ids" in s) else None for s in samples]
    dtype = next(model.parameters()).dtype
    home = next(layers[0].parameters()).device
    vision_like = tuple(p + "." for p in (parts.vision, parts.projector) if p)
    # The catch pass stops at layer 0: the layers and an untied LM head need not visit the device.
    stay: list[nn.Module] = [layers]
    if parts.lm_head and hasattr(model, "get_input_embeddings"):
        head, emb = model.get_submodule(parts.lm_head), model.get_input_embeddings()
        if getattr(head, "weight", None) is not getattr(emb, "weight", None):
            stay.append(head)

    def progress(label: str) -> None:
        nonlocal finished
        finished += 1
        if on_block:
            on_block(finished, total, label)

    def run_block(block: str, block_names: list[str], collect: Callable[[StatsCollector], None] | None) -> None:
        if work.done(block):
            modules, done_rows = work.load(block, device)
            for n, m in modules.items():
                set_module(model, n, m.to(_device_of(model.get_submodule(n))))
            rows.extend(done_rows)
            for r in done_rows:
                if on_row:
                    on_row(r)
            return
        stats: dict[str, LayerStats] = {}
        if collect is not None and samples:
            mods = {n: model.get_submodule(n) for n in block_names}
            modality = {n: "image" for n in block_names if n.startswith(vision_like)}
            with StatsCollector(mods, needs, modality) as col:
                collect(col)
            stats = col.stats
        new_modules, new_rows = {}, []
        for n in block_names:
            dense = model.get_submodule(n)
            st = stats.get(n)
            if st is not None and method.needs and st.count() == 0:
                raise DataError(f"{n} saw no calibration tokens; for vision/projector targets use image samples "
                                f"(--calib easyvqa or mixed)")
            t0 = time.perf_counter()
            q = method.compress(dense.weight.data, st, None if dense.bias is None else dense.bias.data)
            seconds = time.perf_counter() - t0
            q = q.to(dense.weight.device)
            row = _report_row(n, block, method.name, dense, q, st, seconds)
            set_module(model, n, q)
            new_modules[n] = q
            new_rows.append(row)
            stats.pop(n, None)  # free X^T X as soon as it is used
            if on_row:
                on_row(row)
        rows.extend(new_rows)
        work.save(block, new_modules, new_rows)

    # 1. before the decoder: vision tower / projector (statistics from one pass of the model)
    def catch_pass(col: StatsCollector | None = None) -> list[tuple]:
        captured: list[tuple] = []

        def hook(module, args, kwargs):
            captured.append((args, kwargs))
            raise _Stop

        handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        _move_except(model, stay, device)
        try:
            for sample, mask in zip(samples, masks):
                if col is not None:
                    col.new_sample(None if mask is None else mask.to(device))
                try:
                    model(**_to_device(sample, device, dtype), use_cache=False)
                except _Stop:
                    continue
                raise RuntimeError(f"{type(model).__name__} never called its first decoder layer")
        finally:
            handle.remove()
            _move_except(model, stay, home)
        return captured

    if pre:
        run_block("pre", pre, lambda col: catch_pass(col))
        progress("pre")

    # 2. decoder layers, in order
    last = max(per_layer) if per_layer else -1
    if post and samples:
        last = len(layers) - 1
    inputs: list[tuple] = catch_pass() if samples and last >= 0 else []
    hidden = [args[0] if args else kw.pop("hidden_states") for args, kw in inputs]
    rest = [(args[1:], kw) for args, kw in inputs]
    for i in range(last + 1):
        layer = layers[i].to(device)
        block_names = per_layer.get(i, [])

        def collect(col: StatsCollector) -> None:
            for h, (a, kw), mask in zip(hidden, rest, masks):
                col.new_sample(None if mask is None else mask.to(device))
                layer(h, *a, **kw)

        if block_names:
            run_block(f"layer_{i:03d}", block_names, collect)
        for j, (h, (a, kw)) in enumerate(zip(hidden, rest)):
            out = layer(h, *a, **kw)
            hidden[j] = out[0] if isinstance(out, (tuple, list)) else out
        layer.to(home)
        if block_names:
            progress(f"layer {i + 1}/{len(layers)}")
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # 3. the LM head, on the final normed hidden states
    if post:
        norm = getattr(model.get_submodule(parts.decoder), "norm", None)

        def collect_head(col: StatsCollector) -> None:
            norm_dev = norm.to(device)
            for h, mask in zip(hidden, masks):
                col.new_sample(None if mask is None else mask.to(device))
                col.add(post[0], norm_dev(h))
            norm.to(home)

        head = model.get_submodule(post[0])
        head.to(device)
        run_block("post", post, collect_head)
        model.get_submodule(post[0]).to(home)
        progress("post")
    return rows


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


# --- end to end: a model directory in, a compressed checkpoint out -------------------------------

def resolve_model_path(model: str | Path) -> Path:
    """A model directory; the name `testbed` stands for the testbed built in the user cache."""
    from llava_fa.paths import cache_dir

    if str(model) == "testbed":
        path = cache_dir() / "testbed"
        if not (path / "config.json").is_file():
            raise ConfigError(f"the testbed is not built yet ({path} has no config.json). "
                              f"Fix: run `llava-fa testbed build` first, or pass a model directory")
        return path
    path = Path(model).expanduser()
    if not path.exists():
        raise ConfigError(f"model {path} does not exist; pass a Hugging Face model directory (config.json + "
                          f"*.safetensors) or `testbed`")
    return path


def plan(model: nn.Module, recipe) -> tuple[list[str], list[str], list[str]]:
    """(selected names, targets, ignore) for a recipe on a model."""
    parts = find_parts(model)
    d_targets, d_ignore = default_patterns(parts, recipe.vision, recipe.projector)
    if recipe.targets:
        targets = list(recipe.targets) + d_targets[1:]  # explicit targets replace the decoder default
    else:
        targets = d_targets
    ignore = list(recipe.ignore) + [p for p in d_ignore if p not in recipe.ignore]
    return select(model, targets, ignore), targets, ignore


def summarize(rows: list[LayerReport]) -> dict[str, Any]:
    weights = sum(r.in_features * r.out_features for r in rows)
    bits = sum(r.storage_bits for r in rows)
    acts = [r.act_error for r in rows if r.act_error is not None]
    return {"layers": len(rows), "weights": weights, "storage_bits": bits, "bpw": bits / weights if weights else 0.0,
            "mean_rel_error": sum(r.rel_error for r in rows) / max(len(rows), 1),
            "mean_act_error": sum(acts) / len(acts) if acts else None,
            "seconds": sum(r.seconds for r in rows), "bits_by_part": bits_by_part(rows)}


def bits_by_part(rows: list[LayerReport]) -> dict[str, int] | None:
    """Stored bits summed per part name over the layers that itemize them (None if none does)."""
    total: dict[str, int] = {}
    for r in rows:
        for k, v in (r.bits or {}).items():
            total[k] = total.get(k, 0) + v
    return total or None


def compress_checkpoint(model_path: str | Path, recipe, out: Path, *, device: str = "cpu", dtype: str = "auto",
                        work_dir: Path | None = None, restart: bool = False, overwrite: bool = False,
                        on_info: Callable[[str], None] | None = None,
                        on_block: Callable[[int, int, str], None] | None = None,
                        on_row: Callable[[LayerReport], None] | None = None) -> dict[str, Any]:
    """Load, select, calibrate, compress layer by layer, save atomically. Returns the report."""
    from llava_fa.calibration.data import SOURCES, build_samples
    from llava_fa.io.checkpoint import load_model, load_processor, quantization_config, read_config, save_compressed
    from llava_fa.methods.base import build_config, get_method

    info = on_info or (lambda msg: None)
    # Everything that can be checked without the model is checked first.
    config = build_config(recipe.method, recipe.options)
    method = get_method(recipe.method)(config)
    cal = recipe.calibration
    if cal.nsamples < 0 or cal.seqlen < 1:
        raise ConfigError(f"--nsamples must be >= 0 and --seqlen >= 1 (got {cal.nsamples}, {cal.seqlen})")
    if cal.source not in SOURCES and not Path(cal.source).is_file():
        raise DataError(f"calibration source {cal.source!r} is neither one of {', '.join(SOURCES)} nor an existing "
                        f"text file")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists. Fix: pass --overwrite or choose another --out")
    path = resolve_model_path(model_path)
    qc = read_config(path).get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == "llava_fa":
        raise ConfigError(f"{path} is already compressed by llava-fa; compress the original model instead")

    t0 = time.perf_counter()
    torch_dtype = {"auto": torch.float32 if torch.device(device).type == "cpu" else "auto", "float32": torch.float32,
                   "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ConfigError(f"--dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    model = load_model(path, "cpu", torch_dtype)
    processor = load_processor(path)
    names, targets, ignore = plan(model, recipe)
    check_targets(model, names, method)
    info(f"{len(names)} linear layers selected ({sum(model.get_submodule(n).weight.numel() for n in names):,} weights)")
    if cal.nsamples and processor is None:
        raise DataError(f"{path} has no tokenizer/processor to build calibration samples; pass --nsamples 0 "
                        f"(methods without calibration only)")
    samples, described = build_samples(processor, cal.source, cal.nsamples, cal.seqlen, cal.seed,
                                       multimodal=find_parts(model).vision is not None)
    info(f"calibration: {described}")

    work_dir = Path(work_dir) if work_dir is not None else out.parent / f".{out.name}.work"
    if restart and work_dir.exists():
        shutil.rmtree(work_dir)
    resumed = work_dir.exists()
    fp = make_fingerprint(str(path.resolve()), read_config(path), recipe.to_dict(), config.to_dict(), names, 1)
    if resumed:
        WorkDir(work_dir, fp)  # raises if the shards belong to another run
        done = sum(1 for p in work_dir.glob("*.json") if p.name != "state.json")
        info(f"resuming from {work_dir}: {done} finished block(s) will be loaded, not recomputed")
    try:
        rows = compress_model(model, method, names, samples, device=device, work_dir=work_dir, fingerprint=fp,
                              on_block=on_block, on_row=on_row)
    except BaseException:
        _drop_if_empty(work_dir, resumed)
        raise
    report = {"model": str(path), "method": recipe.method, "method_config": config.to_dict(),
              "targets": targets, "ignore": ignore, "calibration": described, "device": str(device),
              "layers": [r.to_dict() for r in rows], "summary": summarize(rows),
              "wall_seconds": time.perf_counter() - t0}
    qconfig = quantization_config(model, recipe.method, config.to_dict(), targets, ignore)
    save_compressed(model, out, qconfig, processor, report, overwrite=overwrite)
    shutil.rmtree(work_dir, ignore_errors=True)
    return report


def _drop_if_empty(work_dir: Path, existed_before: bool) -> None:
    """A work dir with no finished block is worth nothing: do not leave it behind."""
    if work_dir.exists() and not existed_before and not any(p.suffix == ".json" and p.name != "state.json"
                                                            for p in work_dir.iterdir()):
        shutil.rmtree(work_dir, ignore_errors=True)
