"""Helpers shared by the evaluation metrics: model device and dtype, left-padded batches made by the
model's own processor, the positions generate() gives them."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence, TypeVar

import torch

from llava_fa.testbed.easyvqa import load_image

T = TypeVar("T")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    # The first floating parameter: compressed modules may hold integer buffers/params.
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def tokenizer_of(processor):
    """The tokenizer inside a processor, or the object itself when it is already a tokenizer."""
    return getattr(processor, "tokenizer", processor)


def prepare_tokenizer(processor):
    """Left padding (so the last position is the next-token slot for every row) and a pad token."""
    tok = tokenizer_of(processor)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    # A plain forward numbers positions 0..L-1 regardless of padding; with left padding each row
    # must start at 0 at its first real token, as generate() does.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def on_model(model: torch.nn.Module, inputs) -> dict[str, torch.Tensor]:
    """Every tensor of a processor's output on the model's device, floating ones in its dtype."""
    device, dtype = model_device(model), model_dtype(model)
    return {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
            for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def image_batch(model: torch.nn.Module, processor, paths: Sequence[Path], texts: Sequence[str]) -> dict:
    """Model inputs for texts that each hold one image (the file at the same index), left padded.

    The model's own processor makes them, so every input it produces reaches the model
    (pixel_values, image_grid_thw, image_sizes, pixel_attention_mask, mm_token_type_ids, ...)."""
    prepare_tokenizer(processor)
    images = [[load_image(Path(path))] for path in paths]
    return on_model(model, processor(images=images, text=list(texts), padding=True, return_tensors="pt"))


def padded_positions(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The position ids generate() gives a left-padded batch: each row counts from its first real
    token, in the model's own scheme (Qwen2-VL's 3-D M-RoPE positions follow the image grids)."""
    # generate() computes them with this hook of GenerationMixin; models without it use plain positions.
    prepare = getattr(model, "_prepare_position_ids_for_generation", None)
    if prepare is None:
        return position_ids(batch["attention_mask"])
    return prepare(batch["input_ids"], dict(batch))


def text_batch(tokenizer, texts: Sequence[str], device: torch.device, max_length: int | None = None) -> dict:
    tok = prepare_tokenizer(tokenizer)
    enc = tok(list(texts), padding=True, truncation=max_length is not None, max_length=max_length,
              return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
