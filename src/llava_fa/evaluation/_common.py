"""Helpers shared by the evaluation metrics: model device and dtype, left-padded batches, cached pixel values."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence, TypeVar

import torch

from llava_fa.testbed.easyvqa import load_image
from llava_fa.testbed.prompt import IMAGE_TOKEN

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


class PixelCache:
    """Pixel values and the expanded image-token run, computed once per image file.

    easy-VQA asks several questions about each image, so processing each image once saves the
    image processor's work; `maxsize` bounds memory on the full test split.
    """

    def __init__(self, processor, maxsize: int = 2048):
        self.processor = processor
        self.maxsize = maxsize
        self._items: OrderedDict[Path, tuple[torch.Tensor, str]] = OrderedDict()

    def get(self, path: Path) -> tuple[torch.Tensor, str]:
        if path in self._items:
            self._items.move_to_end(path)
            return self._items[path]
        pixel_values = self.processor.image_processor(images=[load_image(path)], return_tensors="pt")["pixel_values"]
        # The processor's own rule for how many placeholder tokens one image takes.
        run = self.processor.replace_image_token({"pixel_values": pixel_values}, 0)
        self._items[path] = (pixel_values, run)
        if len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return pixel_values, run


def image_batch(processor, cache: PixelCache, paths: Sequence[Path], texts: Sequence[str],
                device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Model inputs for prompts that each hold one IMAGE_TOKEN, left padded."""
    tok = prepare_tokenizer(processor)
    pixels, expanded = [], []
    for path, text in zip(paths, texts):
        pv, run = cache.get(path)
        pixels.append(pv)
        expanded.append(text.replace(IMAGE_TOKEN, run, 1))
    enc = tok(expanded, padding=True, return_tensors="pt")
    return {
        "input_ids": enc["input_ids"].to(device),
        "attention_mask": enc["attention_mask"].to(device),
        "pixel_values": torch.cat(pixels).to(device=device, dtype=dtype),
    }


def text_batch(tokenizer, texts: Sequence[str], device: torch.device, max_length: int | None = None) -> dict:
    tok = prepare_tokenizer(tokenizer)
    enc = tok(list(texts), padding=True, truncation=max_length is not None, max_length=max_length,
              return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
