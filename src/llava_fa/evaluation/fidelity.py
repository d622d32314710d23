"""Fidelity to a reference model: per-token KL(reference || model) and top-1 agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from llava_fa.calibration.data import conversation_text
from llava_fa.evaluation._common import chunks, image_batch, model_device, on_model, padded_positions, text_batch
from llava_fa.evaluation.progress import tracked
from llava_fa.testbed.easyvqa import VQAExample, user_text

TEXT_PROMPT_TOKENS = 128  # text prompts are truncated to this many tokens


def vqa_sequence(ex: VQAExample, processor=None) -> str:
    """The prompt followed by the gold answer and end of turn: what a good model would emit, in the
    processor's chat template (the testbed's without one). Trailing whitespace is not scored."""
    return conversation_text(processor, user_text(ex.question), ex.answer).rstrip()


def text_prompts(text: str, n: int, min_words: int = 20) -> list[str]:
    """The first `n` paragraphs of a text with at least `min_words` words (skips headings)."""
    rows = [row.strip() for row in text.splitlines()]
    return [row for row in rows if len(row.split()) >= min_words][:n]


def _inputs(model, processor, group, is_text: bool) -> dict:
    if is_text:
        return text_batch(processor, group, model_device(model), max_length=TEXT_PROMPT_TOKENS)
    return image_batch(model, processor, [ex.image_path for ex in group], [vqa_sequence(ex, processor) for ex in group])


def scored_positions(batch: dict, image_token_id: int | None) -> torch.Tensor:
    """Real tokens, without the image placeholders (their predictions are never trained)."""
    ids = batch["input_ids"]
    mask = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
    if image_token_id is not None:
        mask &= ids != image_token_id
    return mask


def kl_per_position(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(ref || model) at each position, from log-probabilities over the vocabulary (last axis)."""
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


@torch.no_grad()
def _logits(model, batch: dict) -> torch.Tensor:
    return model(**batch, position_ids=padded_positions(model, batch), use_cache=False).logits.float()


class _Tally:
    """Sums of KL(ref || model) and top-1 agreement over the scored positions of each batch."""

    def __init__(self):
        self.kl_sum, self.agree, self.n_tokens = 0.0, 0, 0

    def add(self, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> None:
        if logp.shape != ref_logp.shape:
            raise ValueError(f"model and reference disagree on logits shape {tuple(logp.shape)} vs "
                             f"{tuple(ref_logp.shape)}: they need the same tokenizer and vocabulary")
        kl = kl_per_position(ref_logp, logp)
        self.kl_sum += kl[mask].double().sum().item()
        self.agree += (logp.argmax(-1) == ref_logp.argmax(-1))[mask].sum().item()
        self.n_tokens += int(mask.sum())

    def result(self, n_prompts: int) -> dict:
        n = self.n_tokens
        return {"kl": self.kl_sum / n if n else None, "top1_agreement": self.agree / n if n else None,
                "n_prompts": n_prompts, "n_tokens": n}


def _groups(examples, batch_size: int, progress: bool, what: str = "fidelity"):
    groups = list(chunks(examples, batch_size))
    return tracked(groups, len(groups), what, "batches", progress)


def _is_text(examples) -> bool:
    return bool(examples) and isinstance(examples[0], str)


@torch.no_grad()
def fidelity(model, reference, processor, examples: Sequence[VQAExample] | Sequence[str],
             batch_size: int = 8, progress: bool = True) -> dict:
    """Next-token distributions of `model` against `reference` at every scored position.

    `examples` are easy-VQA questions (image + question + gold answer) or plain strings (text
    prompts, for text-only models). Both models see the same inputs on their own devices.
    Returns {"kl" (mean per token, nats), "top1_agreement", "n_prompts", "n_tokens"}.
    Both models are in memory here; `record_model_side` + `compare_with_reference` compute the
    same numbers holding one model at a time.
    """
    model.eval()
    reference.eval()
    is_text = _is_text(examples)
    image_token_id = None if is_text else getattr(processor, "image_token_id", None)
    tally = _Tally()
    for group in _groups(examples, batch_size, progress):
        batch = _inputs(model, processor, group, is_text)
        logp = F.log_softmax(_logits(model, batch), -1)
        ref_logp = F.log_softmax(_logits(reference, on_model(reference, batch)), -1).to(logp.device)
        tally.add(logp, ref_logp, scored_positions(batch, image_token_id))
    return tally.result(len(examples))


# --- one model at a time ---------------------------------------------------------------------------
# `llava-fa eval --reference` would otherwise hold the evaluated model and the reference together.
# The evaluated model's side of every batch (its inputs, exactly as it saw them, and its log-probs at
# the scored positions) goes to a folder on disk; the model is freed, the reference loaded, and each
# batch compared as `fidelity` compares it (same inputs, same tensors, same arithmetic on the model's
# device: the same numbers). Only scored positions are kept: the other rows of the log-prob tensor are
# rebuilt as zeros, which the mask drops. Disk: scored tokens x vocabulary x 4 bytes.

_BATCH = "batch."


@torch.no_grad()
def record_model_side(model, processor, examples: Sequence[VQAExample] | Sequence[str], folder: Path,
                      batch_size: int = 8, progress: bool = True) -> dict:
    """Write the model's side of `fidelity` for each batch to `folder`; returns what
    `compare_with_reference` needs besides the folder."""
    from safetensors.torch import save_file

    model.eval()
    is_text = _is_text(examples)
    image_token_id = None if is_text else getattr(processor, "image_token_id", None)
    n, device = 0, model_device(model)
    for n, group in enumerate(_groups(examples, batch_size, progress, "fidelity (model)"), 1):
        batch = _inputs(model, processor, group, is_text)
        logp = F.log_softmax(_logits(model, batch), -1)
        mask = scored_positions(batch, image_token_id)
        tensors = {_BATCH + k: v.contiguous().cpu() for k, v in batch.items()}
        tensors.update(mask=mask.cpu(), scored=logp[mask].cpu(), shape=torch.tensor(logp.shape))
        save_file(tensors, str(Path(folder) / f"{n - 1}.safetensors"))
        device = logp.device  # where `fidelity` computes the comparison
    return {"batches": n, "n_prompts": len(examples), "device": str(device)}


@torch.no_grad()
def compare_with_reference(reference, folder: Path, record: dict, progress: bool = True) -> dict:
    """`fidelity`'s result from the batches `record_model_side` wrote and the reference."""
    from safetensors.torch import load_file

    reference.eval()
    device = torch.device(record["device"])
    tally = _Tally()
    n = record["batches"]
    for i in tracked(range(n), n, "fidelity (reference)", "batches", progress):
        stored = load_file(str(Path(folder) / f"{i}.safetensors"))
        batch = {k[len(_BATCH):]: v for k, v in stored.items() if k.startswith(_BATCH)}  # on_model moves them
        ref_logp = F.log_softmax(_logits(reference, on_model(reference, batch)), -1).to(device)
        mask = stored["mask"].to(device)
        logp = torch.zeros(tuple(stored["shape"].tolist()), dtype=stored["scored"].dtype, device=device)
        logp[mask] = stored["scored"].to(device)
        del stored
        tally.add(logp, ref_logp, mask)
    return tally.result(record["n_prompts"])
