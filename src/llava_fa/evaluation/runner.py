"""Load a model directory, run every metric, and present the result (a JSON-ready dict)."""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

from llava_fa.calibration.data import require_image_processor
from llava_fa.evaluation._common import model_dtype
from llava_fa.evaluation.fidelity import compare_with_reference, record_model_side, text_prompts
from llava_fa.evaluation.perplexity import load_text, perplexity
from llava_fa.evaluation.size import model_size
from llava_fa.evaluation.vqa import MODES, vqa_accuracy, vqa_questions
from llava_fa.io.checkpoint import (check_model_folder, check_weight_files, load_model_and_processor,
                                    require_processor)
from llava_fa.io.lazy import return_freed_memory
from llava_fa.runtime import resolve_device, resolve_dtype

VQA_MODES = (*MODES, "both")
TEXT_ONLY_NOTE = "text-only model: VQA skipped"


def load_for_evaluation(model_dir: str | Path, device: torch.device | str,
                        dtype: torch.dtype | str) -> tuple[torch.nn.Module, object, bool]:
    """(model, processor or tokenizer, takes images?) for a model directory, compressed or not. A model
    that takes images needs its own processor: VQA and image fidelity feed it every input it makes."""
    model, processor = load_model_and_processor(Path(model_dir), device, dtype)
    multimodal = getattr(model.config, "vision_config", None) is not None
    if multimodal:
        require_image_processor(processor, model_dir)
    return model, processor, multimodal


def check_reference(reference: str | Path) -> bool:
    """What `load_for_evaluation(reference)` checks, without loading its weights (the reference loads
    last, see `evaluate`, so a broken one must fail before the long metrics): its config, weight
    files and processor. Returns whether it takes images."""
    from transformers import AutoConfig

    path = Path(reference)
    check_weight_files(path, check_model_folder(path))
    processor = require_processor(path)
    # The config class from_pretrained builds the model with (check_model_folder checked its model_type).
    multimodal = getattr(AutoConfig.from_pretrained(path), "vision_config", None) is not None
    if multimodal:
        require_image_processor(processor, path)
    return multimodal


def release_memory(device: torch.device) -> None:
    """Give the memory of freed models back (the CUDA cache; glibc's heap on CPU) before the next load."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return_freed_memory()


def _timed(seconds: dict, key: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), recording its wall time under `key`."""
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    seconds[key] = round(time.perf_counter() - start, 2)
    return value


def evaluate(model_dir: str | Path, reference: str | Path | None = None, limit: int | None = None,
             vqa_mode: str = "fast", text_source: str | Path | None = None, seqlen: int = 2048,
             ppl_windows: int | None = None, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
             vqa_root: Path | None = None, batch_size: int = 16, fidelity_prompts: int = 64,
             progress: bool = True, forward_mode: str | None = None,
             announce: Callable[[str], None] | None = None) -> dict:
    """Size, WikiText-2 perplexity, easy-VQA accuracy and (with a reference) fidelity of a model.

    limit: first N easy-VQA test questions; ppl_windows: at most N perplexity windows (0 skips
    perplexity); vqa_mode: "fast", "generate" or "both"; fidelity uses the first
    min(limit, fidelity_prompts) questions. Text-only models skip VQA and measure fidelity on
    WikiText paragraphs. forward_mode: how the evaluated model's compressed layers run (see
    `layers.set_forward_mode`; default: their own, "auto"); the reference is never changed.
    device and dtype: see `llava_fa.runtime` ("auto" dtype: float32 on CPU, the stored one on CUDA).
    announce: given, it receives one line before the metrics run: what will be measured (windows,
    questions, prompts) and an estimate of the time from one timed forward.
    One model is in memory at a time: the reference loads after the model's metrics, once the model's
    side of fidelity is on disk and the model is freed (evaluation/fidelity.py).
    """
    if vqa_mode not in VQA_MODES:
        raise ValueError(f"unknown VQA mode {vqa_mode!r}; use one of {VQA_MODES}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model, processor, multimodal = load_for_evaluation(model_dir, dev, dt)
    if forward_mode is not None:
        from llava_fa.formats import set_forward_mode
        set_forward_mode(model, forward_mode)
    image_fidelity = reference is not None and check_reference(reference) and multimodal  # both take images
    result = {"model_dir": str(model_dir), "model_type": model.config.model_type, "multimodal": multimodal,
              "device": str(dev), "dtype": str(model_dtype(model)).removeprefix("torch."),
              "reference": str(reference) if reference is not None else None,
              "size": None, "perplexity": None, "vqa": None, "fidelity": None, "notes": [], "seconds": {}}
    text = load_text(text_source) if ppl_windows != 0 or (reference is not None and not image_fidelity) else None
    modes = (MODES if vqa_mode == "both" else (vqa_mode,)) if multimodal else ()
    n_fidelity = 0 if reference is None else min(fidelity_prompts, limit) if limit is not None else fidelity_prompts
    if announce is not None:
        from llava_fa.evaluation.sizing import plan_evaluation
        announce(plan_evaluation(model, processor, text, seqlen, ppl_windows, limit, modes, vqa_root, n_fidelity,
                                 reference is not None).describe(dev))
    _model_metrics(result, model_dir, model, processor, text, seqlen, ppl_windows, modes, limit, vqa_root,
                   batch_size, progress)
    if reference is None:
        return result
    examples = vqa_questions(n_fidelity, vqa_root) if image_fidelity else text_prompts(text, n_fidelity)
    with tempfile.TemporaryDirectory(prefix="llava-fa-fidelity-") as folder:
        start = time.perf_counter()
        record = record_model_side(model, processor, examples, Path(folder), max(1, batch_size // 2), progress)
        del model  # the only reference left: the reference model loads next, into the memory it frees
        release_memory(dev)
        result["fidelity"] = _against_reference(reference, dev, dt, Path(folder), record, progress,
                                                time.perf_counter() - start, result["seconds"])
    result["fidelity"]["prompts"] = "easy-VQA" if image_fidelity else "WikiText"
    return result


def _model_metrics(result: dict, model_dir, model, processor, text, seqlen: int, ppl_windows, modes: tuple,
                   limit, vqa_root, batch_size: int, progress: bool) -> None:
    """Size, perplexity and easy-VQA of the evaluated model, into `result`."""
    sec = result["seconds"]
    result["size"] = _timed(sec, "size", model_size, model_dir, model)
    if ppl_windows == 0:
        result["notes"].append("perplexity skipped (ppl_windows=0)")
    else:
        result["perplexity"] = _timed(sec, "perplexity", perplexity, model, processor, text, seqlen,
                                      ppl_windows, progress)
    if result["multimodal"]:
        result["vqa"] = {m: _timed(sec, f"vqa_{m}", vqa_accuracy, model, processor, m, limit, vqa_root,
                                   batch_size, progress=progress) for m in modes}
    else:
        result["notes"].append(TEXT_ONLY_NOTE)


def _against_reference(reference, dev, dt, folder: Path, record: dict, progress: bool, seconds: float,
                       sec: dict) -> dict:
    """Load the reference and compare it with the recorded batches; the fidelity time counts the
    model's side (`seconds`) and the comparison, not the load."""
    ref_model = load_for_evaluation(reference, dev, dt)[0]
    start = time.perf_counter()
    fid = compare_with_reference(ref_model, folder, record, progress)
    sec["fidelity"] = round(seconds + time.perf_counter() - start, 2)
    return fid


def _fmt(value, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def render_table(result: dict) -> Table:
    """The headline numbers of an `evaluate` result as a two-column rich table."""
    table = Table(title=f"llava-fa eval: {result['model_dir']}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    size = result.get("size") or {}
    table.add_row("model type", f"{result['model_type']} ({result['device']}, {result['dtype']})")
    if size:
        table.add_row("parameters", f"{size['params']:,}")
        table.add_row("safetensors on disk", f"{size['disk_bytes'] / 2**20:,.1f} MiB")
        table.add_row("decoder linears bpw", _fmt(size["decoder_linear"]["bpw"], ".3f"))
        comp = size["compressed"]
        if comp["count"]:
            table.add_row(f"compressed modules bpw ({comp['count']})", _fmt(comp["bpw"], ".3f"))
    if ppl := result.get("perplexity"):
        table.add_row(f"perplexity (seqlen {ppl['seqlen']}, {ppl['windows']} windows)", _fmt(ppl["ppl"], ".3f"))
    for mode, vqa in (result.get("vqa") or {}).items():
        table.add_row(f"easy-VQA accuracy, {mode} (n={vqa['n']})", _fmt(vqa["accuracy"], ".2%"))
    if fid := result.get("fidelity"):
        table.add_row(f"KL(ref || model) per token ({fid['n_tokens']} tokens)", _fmt(fid["kl"], ".4g"))
        table.add_row("top-1 agreement with reference", _fmt(fid["top1_agreement"], ".2%"))
    for note in result.get("notes", []):
        table.add_row("note", note)
    return table


def print_result(result: dict, console: Console | None = None) -> None:
    (console or Console()).print(render_table(result))
