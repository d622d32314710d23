"""Fidelity to a reference model: per-token KL(reference || model) and top-1 agreement."""

from __future__ import annotations

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


def _scored_positions(batch: dict, image_token_id: int | None) -> torch.Tensor:
    """Real tokens, without the image placeholders (their predictions are never trained)."""
    mask = batch["attention_mask"].bool()
    if image_token_id is not None:
        mask &= batch["input_ids"] != image_token_id
    return mask


@torch.no_grad()
def _logits(model, batch: dict) -> torch.Tensor:
    return model(**batch, position_ids=padded_positions(model, batch), use_cache=False).logits.float()


@torch.no_grad()
def fidelity(model, reference, processor, examples: Sequence[VQAExample] | Sequence[str],
             batch_size: int = 8, progress: bool = True) -> dict:
    """Next-token distributions of `model` against `reference` at every scored position.

    `examples` are easy-VQA questions (image + question + gold answer) or plain strings (text
    prompts, for text-only models). Both models see the same inputs on their own devices.
    Returns {"kl" (mean per token, nats), "top1_agreement", "n_prompts", "n_tokens"}.
    """
    model.eval()
    reference.eval()
    is_text = bool(examples) and isinstance(examples[0], str)
    image_token_id = None if is_text else getattr(processor, "image_token_id", None)
    kl_sum, agree, n_tokens = 0.0, 0, 0
    groups = list(chunks(examples, batch_size))
    for group in tracked(groups, len(groups), "fidelity", "batches", progress):
        batch = _inputs(model, processor, group, is_text)
        ref_batch = on_model(reference, batch)
        logp = F.log_softmax(_logits(model, batch), -1)
        ref_logp = F.log_softmax(_logits(reference, ref_batch), -1).to(logp.device)
        if logp.shape != ref_logp.shape:
            raise ValueError(f"model and reference disagree on logits shape {tuple(logp.shape)} vs "
                             f"{tuple(ref_logp.shape)}: they need the same tokenizer and vocabulary")
        mask = _scored_positions(batch, image_token_id)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # KL(ref || model) per position
        kl_sum += kl[mask].double().sum().item()
        agree += (logp.argmax(-1) == ref_logp.argmax(-1))[mask].sum().item()
        n_tokens += int(mask.sum())
    return {"kl": kl_sum / n_tokens if n_tokens else None, "top1_agreement": agree / n_tokens if n_tokens else None,
            "n_prompts": len(examples), "n_tokens": n_tokens}
