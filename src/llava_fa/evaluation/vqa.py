"""easy-VQA accuracy: greedy generation with exact match, or a fast one-forward answer ranking."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from llava_fa.calibration.data import conversation_text
from llava_fa.evaluation._common import chunks, image_batch, model_device, padded_positions, tokenizer_of
from llava_fa.evaluation.progress import progress_counter
from llava_fa.testbed.easyvqa import VQAExample, load_answers, load_split, normalize_answer, user_text

MODES = ("fast", "generate")
N_WRONG_EXAMPLES = 5


def vqa_questions(limit: int | None = None, root: Path | None = None) -> list[VQAExample]:
    """The first `limit` questions of the easy-VQA test split (all when None)."""
    examples = load_split("test", root)
    return examples if limit is None else examples[:limit]


def answer_token_ids(tokenizer, answers: Sequence[str]) -> list[int]:
    """The first token of each answer; fast mode needs them distinct to tell answers apart."""
    tok = tokenizer_of(tokenizer)
    ids = [tok.encode(a, add_special_tokens=False)[0] for a in answers]
    clashes = {t: [a for a, i in zip(answers, ids) if i == t] for t, c in Counter(ids).items() if c > 1}
    if clashes:
        detail = "; ".join(f"{tok.convert_ids_to_tokens(t)!r}: {a}" for t, a in clashes.items())
        raise ValueError(f"answers share a first token, so fast mode cannot rank them ({detail}). "
                         f"Fix: use --vqa-mode generate")
    return ids


def summarize(examples: Sequence[VQAExample], predictions: Sequence[str], mode: str) -> dict:
    """Accuracy overall and per gold answer, plus a few wrong answers to look at."""
    per_answer: dict[str, dict] = {}
    wrong = []
    for ex, pred in zip(examples, predictions):
        row = per_answer.setdefault(ex.answer, {"n": 0, "correct": 0})
        row["n"] += 1
        row["correct"] += int(pred == ex.answer)
        if pred != ex.answer and len(wrong) < N_WRONG_EXAMPLES:
            wrong.append({"question": ex.question, "answer": ex.answer, "prediction": pred, "image_id": ex.image_id})
    for row in per_answer.values():
        row["accuracy"] = row["correct"] / row["n"]
    correct = sum(r["correct"] for r in per_answer.values())
    return {"accuracy": correct / len(examples) if examples else None, "n": len(examples),
            "correct": correct, "mode": mode, "per_answer": dict(sorted(per_answer.items())), "wrong": wrong}


def vqa_prompt(processor, ex: VQAExample) -> str:
    """The image and question in the model's chat template, ready for the answer."""
    return conversation_text(processor, user_text(ex.question))


def _batches(model, processor, examples, batch_size: int, desc: str, progress: bool):
    """Left-padded image+question batches."""
    with progress_counter(len(examples), desc, "questions", progress) as advance:
        for group in chunks(examples, batch_size):
            texts = [vqa_prompt(processor, ex) for ex in group]
            yield group, image_batch(model, processor, [ex.image_path for ex in group], texts)
            advance(len(group))


@torch.no_grad()
def predict_fast(model, processor, examples: Sequence[VQAExample], answers: Sequence[str],
                 batch_size: int = 16, progress: bool = True) -> list[str]:
    """The answer whose first token has the highest logit at the next-token slot."""
    ids = torch.tensor(answer_token_ids(processor, answers), device=model_device(model))
    predictions = []
    for _, batch in _batches(model, processor, examples, batch_size, "vqa fast", progress):
        logits = model(**batch, position_ids=padded_positions(model, batch), use_cache=False,
                       logits_to_keep=1).logits  # only the next-token slot: skips a vocab-sized matmul per position
        best = logits[:, -1, ids].argmax(-1)  # left padding: -1 is every row's next-token slot
        predictions += [answers[i] for i in best.tolist()]
    return predictions


@torch.no_grad()
def predict_generate(model, processor, examples: Sequence[VQAExample], batch_size: int = 16,
                     max_new_tokens: int = 4, progress: bool = True) -> list[str]:
    """Greedy decoding of a few tokens, normalized to the first word."""
    tok = tokenizer_of(processor)
    predictions = []
    for _, batch in _batches(model, processor, examples, batch_size, "vqa generate", progress):
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        predictions += [normalize_answer(t) for t in tok.batch_decode(new, skip_special_tokens=True)]
    return predictions


def vqa_accuracy(model, processor, mode: str = "fast", limit: int | None = None, root: Path | None = None,
                 batch_size: int = 16, max_new_tokens: int = 4, progress: bool = True) -> dict:
    """easy-VQA test accuracy of a vision-language model in "fast" or "generate" mode.

    Returns {"accuracy", "n", "correct", "mode", "per_answer": {answer: {n, correct, accuracy}}, "wrong"}.
    """
    if mode not in MODES:
        raise ValueError(f"unknown VQA mode {mode!r}; use one of {MODES}")
    model.eval()
    examples = vqa_questions(limit, root)
    if mode == "fast":
        predictions = predict_fast(model, processor, examples, load_answers(root), batch_size, progress)
    else:
        predictions = predict_generate(model, processor, examples, batch_size, max_new_tokens, progress)
    return summarize(examples, predictions, mode)
