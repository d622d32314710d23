"""lmms-eval (image-text) tasks on a model loaded by `llava_fa.io.checkpoint.load_model_and_processor`.

lmms-eval gets an instance of `LlavaFALMMS`, a subclass of its `lmms` model base that wraps the
already loaded model and its processor, so a compressed folder is evaluated through the toolkit's
compressed layers (lmms-eval's own model classes, such as `llava_hf`, would reload the folder by name).
It answers lmms-eval's "simple" requests: `generate_until` (greedy by default, images through the
model's own processor and chat template, left-padded batches) and `loglikelihood` (one forward of
prompt + continuation; lmms-eval ranks multiple-choice answers by the lowest value, so the value
returned is the summed negative log-likelihood of the continuation, as lmms-eval's models return losses).

Tasks come from lmms-eval's catalogue (data sets from the Hugging Face Hub) or from a folder of task
YAMLs (`include_path`); when every task comes from that folder the run is offline (HF_DATASETS_OFFLINE=1,
HF_HUB_OFFLINE=1). Task groups run as their member tasks (their own aggregate row is not reported).
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from llava_fa.errors import ConfigError, DataError
from llava_fa.evaluation._common import model_device, on_model, prepare_tokenizer, tokenizer_of
from llava_fa.evaluation.harness import hub_offline, load_for_tasks, metrics_of, with_model_fields

# lmms-eval's declared requirements pull a CUDA torchvision (and ~50 other packages); on a CPU torch
# only tenacity is needed besides what llava-fa already installs.
LMMS_EVAL_PIP = 'pip install --no-deps "lmms-eval==0.7.3" "tenacity>=8"'
LMMS_EVAL_PIP_GPU = 'pip install "llava-fa[lmms]"'
IMAGE_MARK = "<image>"


def require_lmms_eval():
    """The `lmms_eval.evaluator` module, or a ConfigError that names the install command."""
    try:
        from lmms_eval import evaluator
    except ImportError as e:
        missing = f" ({e})" if getattr(e, "name", None) not in (None, "lmms_eval") else ""
        raise ConfigError(f"--harness lmms-eval needs lmms-eval, which is not installed or does not import"
                          f"{missing}. Fix: {LMMS_EVAL_PIP} (CPU torch; with a CUDA torch: "
                          f"{LMMS_EVAL_PIP_GPU})") from None
    _quiet_loguru()
    _skip_filelock_patch(evaluator)
    return evaluator


def _skip_filelock_patch(evaluator) -> None:
    """lmms-eval 0.7.3 patches `filelock._api`, which filelock 4 no longer has (ModuleNotFoundError in
    simple_evaluate). The patch guards nested dataset loads across ranks; one process loading its
    tasks before evaluating does not need it, so with filelock 4 it is marked as done."""
    try:
        import filelock._api  # noqa: F401
    except ImportError:
        patch = getattr(evaluator, "_enable_reentrant_filelocks", None)
        if patch is not None:
            patch._patched = True


def _quiet_loguru() -> None:
    """lmms-eval sends its loguru log to stdout at import; send warnings and errors to stderr instead."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="lmms-eval {level}: {message}")


def task_manager(names: Sequence[str], include_path: str | Path | None = None):
    """An lmms-eval TaskManager that knows every name in `names`; a ConfigError lists close names.

    lmms-eval's own catalogue (~2000 YAMLs, ~25 s to index) is read only when `include_path` does
    not hold every task."""
    require_lmms_eval()
    from lmms_eval.tasks import TaskManager

    include = str(include_path) if include_path is not None else None
    if include is not None:
        local = TaskManager("ERROR", include_path=include, include_defaults=False)
        if all(name in local.all_tasks for name in names):
            return local
    manager = TaskManager("ERROR", include_path=include)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        parts = []
        for name in unknown:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            parts.append(f"{name!r} (close: {', '.join(close)})" if close else repr(name))
        where = "lmms-eval's catalogue" + (f" or {include}" if include else "")
        raise ConfigError(f"unknown lmms-eval task {'; '.join(parts)}: not in {where}. Fix: check the spelling "
                          f"(`python -m lmms_eval --tasks list` lists them), drop --harness lmms-eval for a "
                          f"text task of lm-eval, or put the task's YAML in a folder and pass --tasks-include FOLDER")
    return manager


def all_local(manager, names: Sequence[str], include_path: str | Path | None) -> bool:
    """True when every task of `names` is defined in `include_path` (so its data should be local)."""
    if include_path is None:
        return False
    root = Path(include_path).resolve()
    for name in names:
        yaml_path = manager.task_index.get(name, {}).get("yaml_path")
        if not isinstance(yaml_path, str) or root not in Path(yaml_path).resolve().parents:
            return False
    return True


def _leaf_tasks(loaded: dict) -> list:
    """The Task objects of lmms-eval's nested {name or group: Task or {...}} dict."""
    tasks = []
    for value in loaded.values():
        if isinstance(value, dict):
            tasks += _leaf_tasks(value)
        elif isinstance(value, tuple):  # (group, task) pairs of older layouts
            tasks += [v for v in value[1:] if v is not None]
        elif value is not None:
            tasks.append(value)
    return tasks


def load_tasks(manager, names: Sequence[str], offline: bool) -> list:
    """The Task objects of `names`, their data loaded; a DataError names the fix when data cannot be had."""
    tasks = []
    for name in names:
        try:
            tasks += _leaf_tasks(manager.load_task_or_group([name], "simple"))
        except Exception as e:  # datasets / hub / fsspec / a task's own utils raise many types
            detail = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            how = ("this run is offline (every task comes from --tasks-include), so its data must be local files"
                   if offline else "its data set downloads from the Hugging Face Hub, which needs internet access "
                                    "(or the data set already in the local Hugging Face cache)")
            raise DataError(f"the data of lmms-eval task {name!r} is not available ({detail}); {how}. Fix: run with "
                            f"internet access, or pass --tasks-include FOLDER holding a task YAML whose data are local "
                            f"files (dataset_path: json, dataset_kwargs: {{data_files: {{test: FILE.jsonl}}}}, "
                            f"relative to the YAML's folder)") from None
    return tasks


def prompt_text(processor, context: str, n_images: int) -> str:
    """The user turn (images, then the context) in the processor's chat template, ready for the answer;
    the testbed's ChatML when the processor has no template. A context that already places its
    images (holds "<image>") is kept as it is."""
    images = 0 if IMAGE_MARK in context else n_images
    content = [{"type": "image"}] * images + [{"type": "text", "text": context}]
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    return f"<|im_start|>user\n{(IMAGE_MARK + chr(10)) * images}{context}<|im_end|>\n<|im_start|>assistant\n"


def model_inputs(model, processor, texts: Sequence[str], visuals: Sequence[list]) -> dict:
    """Left-padded model inputs for texts, each with its list of images (all rows with or all without)."""
    prepare_tokenizer(processor)
    if any(visuals):
        enc = processor(images=[list(v) for v in visuals], text=list(texts), padding=True, return_tensors="pt")
    else:
        enc = tokenizer_of(processor)(list(texts), padding=True, return_tensors="pt")
    return on_model(model, enc)


def cut_at(text: str, until: Sequence[str]) -> str:
    """`text` up to the first of the stop strings."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def generation_settings(gen_kwargs: dict, pad_token_id: int | None) -> tuple[dict, list[str]]:
    """generate() arguments and the stop strings from a task's generation_kwargs (greedy by default)."""
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = float(gen_kwargs.get("temperature") or 0)
    sample = temperature > 0 and gen_kwargs.get("do_sample", True) is not False  # as lmms-eval's own models
    settings = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens", 128)), "do_sample": sample,
                "num_beams": int(gen_kwargs.get("num_beams") or 1), "pad_token_id": pad_token_id}
    if sample:
        settings["temperature"] = temperature
        if gen_kwargs.get("top_p") is not None:
            settings["top_p"] = float(gen_kwargs["top_p"])
    return settings, until


def _lmms_base():
    require_lmms_eval()
    from lmms_eval.api.model import lmms

    return lmms


def wrap_model(model, processor, batch_size: int = 1):
    """An lmms-eval model (an `lmms` instance) around the already loaded model and its processor."""
    base = _lmms_base()

    class LlavaFALMMS(base):
        """lmms-eval's model interface on a llava-fa model: "simple" requests, one process."""

        is_simple = True

        def __init__(self):
            super().__init__()
            self._model, self._processor, self._batch_size = model.eval(), processor, batch_size

        def _doc_visuals(self, doc_to_visual, doc_id, task, split) -> list:
            if doc_to_visual is None:
                return []
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
            visuals = visuals if isinstance(visuals, (list, tuple)) else [visuals]
            if any(not hasattr(v, "convert") for v in visuals):
                raise DataError(f"lmms-eval task {task!r} gives a visual that is not an image (video or audio). "
                                f"Fix: run image-text tasks only with llava-fa eval --harness lmms-eval")
            return [v.convert("RGB") for v in visuals]

        def generate_until(self, requests) -> list[str]:
            return generate_answers(self, [r.args for r in requests])

        def loglikelihood(self, requests) -> list:
            # lmms-eval 0.7.3 turns a response that is a plain (float, bool) tuple into its str() (its
            # unwrap_generation_output), which breaks every multiple_choice task; a GenerationResult
            # is handed on as it is, so the pair travels inside one.
            from lmms_eval.api.instance import GenerationResult

            return [GenerationResult(text=continuation_nll(self, *r.args)) for r in requests]

        def generate_until_multi_round(self, requests) -> list[str]:
            raise ConfigError("multi-round lmms-eval tasks are not supported by llava-fa eval. Fix: choose a "
                              "single-turn image-text task")

    return LlavaFALMMS()


@torch.no_grad()
def generate_answers(lm, args: Sequence[tuple]) -> list[str]:
    """Answers to generate_until requests, in their order: batches of up to lm._batch_size requests
    in a row that share generation settings and having images or not."""
    model, processor = lm._model, lm._processor
    tok = prepare_tokenizer(processor)
    out: list[str] = []
    start = 0
    while start < len(args):
        rows = [args[start]]
        visuals = [lm._doc_visuals(*args[start][2:6])]
        key = (json.dumps(args[start][1], sort_keys=True, default=str), bool(visuals[0]))
        while len(rows) < lm._batch_size and start + len(rows) < len(args):
            nxt = args[start + len(rows)]
            nxt_visuals = lm._doc_visuals(*nxt[2:6])
            if (json.dumps(nxt[1], sort_keys=True, default=str), bool(nxt_visuals)) != key:
                break
            rows.append(nxt)
            visuals.append(nxt_visuals)
        settings, until = generation_settings(dict(rows[0][1] or {}), tok.pad_token_id)
        texts = [prompt_text(processor, row[0], len(v)) for row, v in zip(rows, visuals)]
        batch = model_inputs(model, processor, texts, visuals)
        new = model.generate(**batch, **settings)[:, batch["input_ids"].shape[1]:]
        out += [cut_at(text, until) for text in tok.batch_decode(new, skip_special_tokens=True)]
        start += len(rows)
    return out


@torch.no_grad()
def continuation_nll(lm, context: str, continuation, doc_to_visual, doc_id, task, split) -> tuple[float, bool]:
    """(-log p(continuation | images, context), whether greedy decoding would give the continuation)."""
    model, processor = lm._model, lm._processor
    if callable(continuation):  # loglikelihood tasks pass doc_to_target itself
        continuation = continuation(lm.task_dict[task][split][doc_id])
    visuals = lm._doc_visuals(doc_to_visual, doc_id, task, split)
    batch = model_inputs(model, processor, [prompt_text(processor, context, len(visuals))], [visuals])
    cont = tokenizer_of(processor)(str(continuation), add_special_tokens=False)["input_ids"]
    if not cont:
        return 0.0, True
    cont_ids = torch.tensor([cont], device=model_device(model))
    batch["input_ids"] = torch.cat([batch["input_ids"], cont_ids], 1)
    batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(cont_ids)], 1)
    logits = model(**batch, use_cache=False).logits[0, -len(cont) - 1:-1].float()
    logprobs = torch.log_softmax(logits, -1)
    nll = -logprobs.gather(1, cont_ids[0, :, None]).sum().item()
    return nll, bool((logprobs.argmax(-1) == cont_ids[0]).all())


def samples_of(out: dict) -> dict[str, list[dict]]:
    """Per task, each document's id, target and generated answer (generation tasks only)."""
    table = {}
    for task, rows in (out.get("samples") or {}).items():
        kept = [{"doc_id": row.get("doc_id"), "target": str(row.get("target")), "response": row["filtered_resps"][0]}
                for row in rows if row.get("filtered_resps") and isinstance(row["filtered_resps"][0], str)]
        if kept:
            table[task] = sorted(kept, key=lambda r: r["doc_id"])
    return table


def run_tasks(model, processor, names: Sequence[str], manager, limit: int | None = None,
              num_fewshot: int | None = None, batch_size: int = 1, offline: bool = False,
              bootstrap_iters: int = 1000) -> dict[str, Any]:
    """Run lmms-eval tasks on a loaded model: {"results": task -> metric -> value, "n_samples",
    "samples": task -> [{doc_id, target, response}], ...} (the shape of harness.run_tasks plus samples)."""
    evaluator = require_lmms_eval()
    with hub_offline(offline):
        tasks = load_tasks(manager, names, offline)
        lm = wrap_model(model, processor, batch_size)
        out = evaluator.simple_evaluate(model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot,
                                        task_manager=manager, bootstrap_iters=bootstrap_iters, log_samples=True,
                                        batch_size=batch_size, verbosity="ERROR", process_docs_parallel=1)
    _quiet_loguru()  # simple_evaluate may set its own handler up again
    if out is None:
        raise DataError("lmms-eval returned no result (a distributed run's other rank?). Fix: run in one process")
    n_samples = {task: int(n.get("effective", n.get("original", 0))) if isinstance(n, dict) else int(n)
                 for task, n in (out.get("n-samples") or {}).items()}
    return {"results": metrics_of(out), "n_samples": n_samples, "samples": samples_of(out),
            "harness": "lmms-eval", "lmms_eval_version": _version_of("lmms_eval"), "limit": limit,
            "num_fewshot": num_fewshot, "offline": offline}


def _version_of(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:  # an unusual install without metadata
        return "unknown"


def evaluate_tasks(model_dir: str | Path, names: Sequence[str], include_path: str | Path | None = None,
                   limit: int | None = None, num_fewshot: int | None = None, device="cpu", dtype="auto",
                   batch_size: int = 1, forward_mode: str | None = None, manager=None) -> dict[str, Any]:
    """Load a model folder with `load_model_and_processor` (compressed layers registered) and run the
    lmms-eval tasks. Returns run_tasks' dict with "model_dir", "model_type", "tasks" and "device" added."""
    manager = manager if manager is not None else task_manager(names, include_path)
    model, processor = load_for_tasks(model_dir, device, dtype, forward_mode)
    result = run_tasks(model, processor, names, manager, limit, num_fewshot, batch_size,
                       offline=all_local(manager, names, include_path))
    return with_model_fields(result, model_dir, model, names, device)
