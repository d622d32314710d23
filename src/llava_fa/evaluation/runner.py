"""Load a model directory, run every metric, and present the result (a JSON-ready dict)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from llava_fa.evaluation._common import resolve_device
from llava_fa.evaluation.fidelity import fidelity, text_prompts
from llava_fa.evaluation.perplexity import load_text, perplexity
from llava_fa.evaluation.size import model_size
from llava_fa.evaluation.vqa import MODES, vqa_accuracy, vqa_questions

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VQA_MODES = (*MODES, "both")
TEXT_ONLY_NOTE = "text-only model: VQA skipped"


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto": bfloat16 on CUDA (fast, what the models ship in), float32 on CPU (bf16 matmuls are slow there)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def is_multimodal(model_dir: str | Path) -> bool:
    from transformers import AutoConfig
    return getattr(AutoConfig.from_pretrained(model_dir), "vision_config", None) is not None


def load_model(model_dir: str | Path, device: torch.device, dtype: torch.dtype):
    """(model, processor or tokenizer, multimodal?) for a Hugging Face model directory."""
    from transformers import (AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
                              AutoTokenizer)
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json. Fix: pass a folder written by save_pretrained")
    multimodal = is_multimodal(model_dir)
    auto_model, auto_proc = ((AutoModelForImageTextToText, AutoProcessor) if multimodal
                             else (AutoModelForCausalLM, AutoTokenizer))
    model = auto_model.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    return model, auto_proc.from_pretrained(model_dir), multimodal


def _timed(result: dict, key: str, fn, *args, **kwargs):
    start = time.perf_counter()
    result[key] = fn(*args, **kwargs)
    result["seconds"][key] = round(time.perf_counter() - start, 2)


def evaluate(model_dir: str | Path, reference: str | Path | None = None, limit: int | None = None,
             vqa_mode: str = "fast", text_source: str | Path | None = None, seqlen: int = 2048,
             ppl_windows: int | None = None, device: str = "auto", dtype: str | torch.dtype = "auto",
             vqa_root: Path | None = None, batch_size: int = 16, fidelity_prompts: int = 64,
             progress: bool = True) -> dict:
    """Size, WikiText-2 perplexity, easy-VQA accuracy and (with a reference) fidelity of a model.

    limit: first N easy-VQA test questions; ppl_windows: at most N perplexity windows (0 skips
    perplexity); vqa_mode: "fast", "generate" or "both". Text-only models skip VQA and measure
    fidelity on WikiText paragraphs.
    """
    if vqa_mode not in VQA_MODES:
        raise ValueError(f"unknown VQA mode {vqa_mode!r}; use one of {VQA_MODES}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model, processor, multimodal = load_model(model_dir, dev, dt)
    result = {"model_dir": str(model_dir), "model_type": model.config.model_type, "multimodal": multimodal,
              "device": str(dev), "dtype": str(dt).removeprefix("torch."), "reference": None,
              "perplexity": None, "vqa": None, "fidelity": None, "notes": [], "seconds": {}}
    _timed(result, "size", model_size, model_dir, model)
    text = load_text(text_source) if ppl_windows != 0 or (reference and not multimodal) else None
    if ppl_windows == 0:
        result["notes"].append("perplexity skipped (--ppl-windows 0)")
    else:
        _timed(result, "perplexity", perplexity, model, processor, text, seqlen, ppl_windows, progress)
    if multimodal:
        modes = MODES if vqa_mode == "both" else (vqa_mode,)
        result["vqa"] = {}
        for mode in modes:
            _timed(result["vqa"], mode, vqa_accuracy, model, processor, mode, limit, vqa_root, batch_size,
                   progress=progress) if "seconds" in result["vqa"] else None
    else:
        result["notes"].append(TEXT_ONLY_NOTE)
    if reference is not None:
        _fidelity_section(result, model, processor, multimodal, reference, dev, dt, text, limit, vqa_root,
                          fidelity_prompts, batch_size, progress)
    return result
