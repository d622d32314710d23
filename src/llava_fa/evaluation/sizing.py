"""How much `llava-fa eval` measures by default, sized to the device, and what it says before starting.

On a GPU the full splits take about a minute, so they are the default. On CPU all of WikiText-2
(148 windows of 2048 tokens on the testbed) takes about 40 minutes on 2 cores, so the default is a
bounded run (a few windows, a few hundred questions) and `--full` asks for the whole splits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

# The bounded CPU run: a few minutes on 2 cores for the 135M testbed.
CPU_PPL_WINDOWS = 4
CPU_VQA_QUESTIONS = 300
FIDELITY_PROMPTS = 64
# Tokens of one easy-VQA prompt on the testbed (64 image tokens + the question in the chat
# template), used only for the time estimate.
VQA_PROMPT_TOKENS = 100
TIMING_TOKENS = 256  # length of the one forward that is timed


@dataclass(frozen=True)
class EvalSizes:
    limit: int | None  # easy-VQA questions (None: the whole test split)
    ppl_windows: int | None  # perplexity windows (None: every window, 0: none)
    fidelity_prompts: int
    bounded: bool  # smaller than the full splits because of the device (not because the user asked)


def eval_sizes(device: torch.device, full: bool, limit: int | None = None,
               ppl_windows: int | None = None) -> EvalSizes:
    """The sizes of an evaluation: what the user gave, else the full splits on a GPU or with `full`,
    else the bounded CPU run."""
    if full or device.type != "cpu":
        return EvalSizes(limit, ppl_windows, FIDELITY_PROMPTS, False)
    bounded = limit is None or ppl_windows is None
    return EvalSizes(CPU_VQA_QUESTIONS if limit is None else limit,
                     CPU_PPL_WINDOWS if ppl_windows is None else ppl_windows, FIDELITY_PROMPTS, bounded)


@torch.no_grad()
def seconds_per_token(model, processor) -> float:
    """Wall seconds per token of one text forward of TIMING_TOKENS tokens (after one warm-up forward)."""
    from llava_fa.evaluation._common import model_device, tokenizer_of

    vocab = len(tokenizer_of(processor))
    ids = torch.randint(0, min(vocab, 1000), (1, TIMING_TOKENS), device=model_device(model))
    model(input_ids=ids, use_cache=False)  # warm-up: the first call of a shape allocates and plans
    start = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    return (time.perf_counter() - start) / TIMING_TOKENS


@dataclass
class EvalPlan:
    """What an evaluation will measure, counted before it starts, and its rough duration."""
    windows: int  # perplexity windows to run
    windows_total: int  # windows in the text
    seqlen: int
    questions: int  # easy-VQA questions per mode
    questions_total: int
    vqa_modes: tuple[str, ...]
    fidelity_prompts: int
    seconds_per_token: float
    with_reference: bool

    def estimated_seconds(self) -> float:
        # Measured on the testbed on CPU: a fast-mode question costs about 2/3 of a perplexity token per
        # token (logits of the last slot only); generation decodes 4 tokens after the prompt; fidelity
        # runs two models on prompt + answer.
        per_mode = {"fast": 0.65, "generate": 1.3}
        tokens = (self.windows * self.seqlen + sum(per_mode[m] for m in self.vqa_modes) * self.questions
                  * VQA_PROMPT_TOKENS + (2 if self.with_reference else 1) * self.fidelity_prompts * VQA_PROMPT_TOKENS)
        return tokens * self.seconds_per_token

    def describe(self, device: torch.device) -> str:
        parts = []
        if self.windows_total:
            parts.append(f"{self.windows} of {self.windows_total} WikiText-2 windows of {self.seqlen} tokens")
        if self.vqa_modes:
            parts.append(f"{self.questions:,} of {self.questions_total:,} easy-VQA questions "
                         f"({', '.join(self.vqa_modes)})")
        if self.fidelity_prompts:
            parts.append(f"{self.fidelity_prompts} fidelity prompts")
        return (f"evaluating on {device}: {', '.join(parts) or 'size only'}; about {_duration(self.estimated_seconds())} "
                f"(one forward: {self.seconds_per_token * 1e3:.2f} ms per token)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def plan_evaluation(model, processor, text: str | None, seqlen: int, ppl_windows: int | None, questions: int | None,
                    vqa_modes: tuple[str, ...], vqa_root, fidelity_prompts: int, with_reference: bool) -> EvalPlan:
    """Count what `evaluate` will run (tokenizing the text once more) and time one forward."""
    from llava_fa.evaluation.perplexity import tokenize_text
    from llava_fa.evaluation.vqa import vqa_questions

    windows_total = tokenize_text(processor, text).numel() // seqlen if text is not None and ppl_windows != 0 else 0
    windows = windows_total if ppl_windows is None else min(ppl_windows, windows_total)
    questions_total = len(vqa_questions(None, vqa_root)) if vqa_modes else 0
    n_questions = questions_total if questions is None else min(questions, questions_total)
    if vqa_modes:  # image fidelity takes its prompts from the test questions
        fidelity_prompts = min(fidelity_prompts, questions_total)
    return EvalPlan(windows, windows_total, seqlen, n_questions, questions_total, vqa_modes, fidelity_prompts,
                    seconds_per_token(model, processor), with_reference)
