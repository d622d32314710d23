"""`llava-fa chat DIR [--image IMG] "question"`: one answer from a (compressed) model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from llava_fa.commands.common import FORWARD_MODE_HELP, check_model_inputs, reported_as_user_errors

if TYPE_CHECKING:
    import torch


def chat(
    model_dir: Path = typer.Argument(..., help="Checkpoint directory (compressed by llava-fa or not)."),
    question: str = typer.Argument(..., help="The question to ask."),
    image: Optional[Path] = typer.Option(None, "--image", help="An image file (PNG/JPEG) to ask about."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Longest answer, in tokens."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    forward_mode: Optional[str] = typer.Option(None, "--forward-mode", help=FORWARD_MODE_HELP),
) -> None:
    """Answer a question about an image (greedy decoding)."""
    from llava_fa.runtime import quiet_transformers, resolve_device

    with reported_as_user_errors():  # every flag, before the model loads
        dev = resolve_device(device)
    check_model_inputs(model_dir, forward_mode)
    quiet_transformers()
    with reported_as_user_errors():
        typer.echo(answer(model_dir, question, image, max_new_tokens, dev, forward_mode))


def answer(model_dir: Path, question: str, image: Path | None = None, max_new_tokens: int = 32,
           device: str | torch.device = "cpu", forward_mode: str | None = None) -> str:
    """The model's greedy answer to `question` (about `image`, if given), without the prompt."""
    import torch

    from llava_fa.calibration.data import conversation_text, require_image_processor
    from llava_fa.io.checkpoint import load_model_and_processor
    from llava_fa.runtime import resolve_dtype

    img = _open_image(image) if image is not None else None  # a bad image fails before the model loads
    model, processor = load_model_and_processor(model_dir, device, resolve_dtype("auto", device))
    if forward_mode is not None:
        from llava_fa.formats import set_forward_mode
        set_forward_mode(model, forward_mode)
    if img is not None:
        require_image_processor(processor, model_dir)  # names why it did not load and the fix
    text = conversation_text(processor, question, None, image=img is not None)  # the model's chat template
    if img is not None:  # every input the processor makes (image_grid_thw, image_sizes, pixel_attention_mask...)
        inputs = processor(images=[[img]], text=[text], return_tensors="pt")
    else:
        tok = getattr(processor, "tokenizer", processor)
        inputs = tok([text], return_tensors="pt", add_special_tokens=False)
    dtype = next(model.parameters()).dtype
    inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()
              if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    tok = getattr(processor, "tokenizer", processor)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _open_image(path: Path):
    from PIL import Image

    from llava_fa.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}. Fix: pass a PNG/JPEG file that opens with Pillow") from None
