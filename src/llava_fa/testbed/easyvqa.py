"""easy-VQA: 64x64 images of one shape, questions with 13 possible one-word answers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from llava_fa.assets import easy_vqa_root

# The instruction appended to every question, so that the model answers with a single word.
ANSWER_INSTRUCTION = "Answer with one word."


@dataclass(frozen=True)
class VQAExample:
    question: str
    answer: str
    image_id: int
    image_path: Path


def load_split(split: str, root: Path | None = None) -> list[VQAExample]:
    """The questions of `split` ("train" or "test"), in the file's order."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown easy-VQA split {split!r}; use 'train' or 'test'")
    root = Path(root) if root is not None else easy_vqa_root()
    rows = json.loads((root / split / "questions.json").read_text())
    images = root / split / "images"
    return [VQAExample(q, a, int(i), images / f"{int(i)}.png") for q, a, i in rows]


def load_answers(root: Path | None = None) -> list[str]:
    root = Path(root) if root is not None else easy_vqa_root()
    return [line.strip() for line in (root / "answers.txt").read_text().splitlines() if line.strip()]


@lru_cache(maxsize=4096)
def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}. Fix: pass a PNG/JPEG file that opens with Pillow.") from e


def normalize_answer(text: str) -> str:
    """Exact-match normalization: lowercase, first word, letters only ("Yes." -> "yes")."""
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words else ""


def user_text(question: str) -> str:
    """The user turn's text after the image: the question and the one-word instruction."""
    return f"{question[0].upper()}{question[1:]} {ANSWER_INSTRUCTION}"


def load_split_image_path(split: str, image_id: int, root: Path | None = None) -> Path:
    root = Path(root) if root is not None else easy_vqa_root()
    return root / split / "images" / f"{image_id}.png"
