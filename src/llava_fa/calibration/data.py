"""Calibration samples: each one a dict of batch-1 model inputs (input_ids, pixel_values, ...).

Sources (`--calib`):
- `wikitext`: random windows of `seqlen` tokens from WikiText-2 validation (`data_dir()`);
- `builtin`: the same from a short text shipped here (no files needed; a weak fallback);
- a path to any UTF-8 text file: the same from that file;
- `easyvqa`: easy-VQA train images with their question and answer in the model's chat format;
- `mixed`: half `easyvqa`, half `wikitext`; `auto`: `mixed` for multimodal models, else `wikitext`.
`auto` and `mixed` fall back to `builtin` text, with a warning, when WikiText-2 is absent.

A model that takes images is calibrated, evaluated and saved with its own processor (image
processor, chat template): without it, image samples would silently become text-only ones and
the saved folder could not feed the model images, so a missing one is an error (`require_image_processor`).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from llava_fa.errors import DataError
from llava_fa.paths import data_dir

log = logging.getLogger("llava_fa")

SOURCES = ("auto", "wikitext", "builtin", "easyvqa", "mixed")
MAX_TEXT_CHARS = 4_000_000  # tokenizing more than this buys no diversity for 128 windows

BUILTIN_TEXT = (
    "The river rises in the hills to the north and runs for some forty miles before it reaches the sea. "
    "Along its course it passes three market towns, each built where an old road crossed the water. "
    "In the nineteenth century mills were raised on its banks, and the population of the valley doubled "
    "within a generation. Most of the mills closed after the war, and several of the buildings now hold "
    "small museums, workshops and apartments.\n"
    "A computer program is a sequence of instructions that a machine can carry out. Programs are written "
    "in languages that people can read, then translated into the simple operations a processor performs. "
    "Good programs are short, clear and tested; a test states what the program must do and fails when it "
    "does not.\n"
    "The recipe calls for two cups of flour, one egg, a pinch of salt and enough milk to make a smooth "
    "batter. Heat a pan, pour in a thin layer, and turn it once when bubbles appear on the surface.\n"
    "Question: What shape is in the image? Answer: circle. Question: Is there a blue shape? Answer: no. "
    "Question: What color is the triangle? Answer: green.\n"
    "The committee met on Tuesday to review the budget for the coming year. After a long discussion it "
    "agreed to fund the new library, to repair the bridge on the east road, and to postpone the sports hall.\n"
)


def wikitext_file() -> Path:
    return data_dir() / "wikitext-2" / "valid.txt"


def read_text(path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration text file {path} does not exist. Fix: pass an existing UTF-8 text file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_TEXT_CHARS)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read calibration text {path}: {e}. Fix: pass a UTF-8 text file") from None
    if not text.strip():
        raise DataError(f"calibration text file {path} is empty")
    return text


def text_samples(tokenizer, text: str, nsamples: int, seqlen: int, seed: int = 0) -> list[dict]:
    """`nsamples` random windows of exactly `seqlen` tokens (GPTQ-style), the text tiled if short."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if ids.numel() == 0:
        raise DataError("the calibration text tokenizes to nothing")
    if ids.numel() < seqlen + 1:
        ids = ids.repeat(seqlen // ids.numel() + 2)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=g).tolist()
    return [{"input_ids": ids[s:s + seqlen][None].clone(), "attention_mask": torch.ones(1, seqlen, dtype=torch.long)}
            for s in starts]


def takes_images(processor) -> bool:
    return hasattr(processor, "image_processor")


def require_image_processor(processor, path: Path | str | None = None) -> None:
    """Refuse a processor that cannot feed a vision-language model images (a bare tokenizer, or none),
    naming why the model's own processor did not load and how to fix it."""
    if takes_images(processor):
        return
    if path is None:
        where, cause = "the model", f"the processor given is a {type(processor).__name__}, without an image processor"
        fix = "pass the model's processor (AutoProcessor.from_pretrained(model_dir))"
    else:
        where, (cause, fix) = str(path), processor_problem(Path(path))
    raise DataError(f"{where} takes images, but its processor cannot be used: {cause}. Without it images would be "
                    f"left out (calibration on text only, a saved folder that cannot take images). Fix: {fix}")


def processor_problem(path: Path) -> tuple[str, str]:
    """(why the processor of the model folder `path` does not load, how to fix it)."""
    from transformers import AutoProcessor

    copy = (f"copy the processor files of the original model (preprocessor_config.json or processor_config.json, "
            f"the chat template) into {path}")
    try:
        loaded = AutoProcessor.from_pretrained(path)
    except ImportError as e:  # transformers names the missing package (torchvision for most video processors)
        return (_first_sentence(e), "install the package it names (for torchvision: `pip install torchvision` "
                                    "matching your torch), then run again")
    except Exception as e:  # transformers raises many types for files it cannot use
        return f"{type(e).__name__}: {_first_sentence(e)}", copy
    if takes_images(loaded):
        return f"it loads as {type(loaded).__name__} here, but was not passed", "pass the processor of the folder"
    return f"the folder has a tokenizer but no image processor ({type(loaded).__name__} only)", copy


def _first_sentence(error: BaseException) -> str:
    """The error's first sentence: transformers follows it with advice about the Hub that does not apply."""
    line = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return line.split(". ")[0].rstrip(".")


def image_samples(processor, nsamples: int, seed: int = 0, root: Path | None = None) -> list[dict]:
    """easy-VQA train examples: image, question and answer, as the model sees them in chat."""
    from llava_fa.testbed import easyvqa

    examples = easyvqa.load_split("train", root)
    rng = random.Random(seed)
    picks = rng.sample(range(len(examples)), min(nsamples, len(examples)))
    samples = []
    for i in picks:
        ex = examples[i]
        image = easyvqa.load_image(ex.image_path)
        text = conversation_text(processor, easyvqa.user_text(ex.question), ex.answer)
        batch = processor(images=[[image]], text=[text], return_tensors="pt")  # every input it makes
        samples.append({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
    return samples


def conversation_text(processor, question: str, answer: str | None = None, image: bool = True) -> str:
    """The prompt (and answer) in the processor's chat template, else in the testbed's format."""
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)
    from llava_fa.testbed.prompt import image_prompt, text_prompt

    prompt = image_prompt(question) if image else text_prompt(question)
    return prompt if answer is None else f"{prompt}{answer}<|im_end|>\n"


def build_samples(processor, source: str, nsamples: int, seqlen: int, seed: int = 0, multimodal: bool = False,
                  ) -> tuple[list[dict], str]:
    """Samples and a one-line description of where they came from."""
    if nsamples < 0 or seqlen < 1:
        raise DataError(f"--nsamples must be >= 0 and --seqlen >= 1 (got {nsamples}, {seqlen})")
    if nsamples == 0:
        return [], "no calibration data"
    tokenizer = getattr(processor, "tokenizer", processor)
    if source == "auto":
        source = "mixed" if multimodal else "wikitext"
    if source in ("easyvqa", "mixed") and not multimodal:
        raise DataError(f"--calib {source} needs a multimodal model; use wikitext, builtin or a text file")
    n_img = nsamples if source == "easyvqa" else nsamples // 2 if source == "mixed" else 0
    if n_img:
        require_image_processor(processor)
    samples = image_samples(processor, n_img, seed) if n_img else []
    n_txt = nsamples - n_img
    what = f"{n_img} easy-VQA image+text samples" if n_img else ""
    if n_txt:
        if source in ("wikitext", "mixed"):
            path = wikitext_file()
            if path.is_file():
                text, origin = read_text(path), f"WikiText-2 ({path})"
            elif source == "mixed":
                log.warning("WikiText-2 not found at %s; calibrating on the built-in text instead", path)
                text, origin = BUILTIN_TEXT, "built-in text"
            else:
                raise DataError(f"WikiText-2 not found at {path}. Fix: set LLAVA_FA_DATA to the shared data folder, "
                                f"or pass --calib builtin or --calib PATH.txt")
        elif source == "builtin":
            text, origin = BUILTIN_TEXT, "built-in text"
        elif source not in SOURCES:
            text, origin = read_text(Path(source)), str(source)
        else:
            raise DataError(f"unknown calibration source {source!r}")
        samples += text_samples(tokenizer, text, n_txt, seqlen, seed)
        what = ", ".join(x for x in (what, f"{n_txt} x {seqlen} tokens of {origin}") if x)
    return samples, what
