"""lm-evaluation-harness tasks on a model loaded by `llava_fa.io.checkpoint.load_model`.

The harness gets the model object itself (`HFLM(pretrained=model)`), so a compressed folder is
evaluated through the toolkit's compressed layers, never reloaded by the harness. A LLaVA / VLM
folder is evaluated as a language model: text-only forwards of the whole model and the tokenizer
inside its processor, as `perplexity.py` does.

Tasks come from lm-eval's own catalogue (their data sets download from the Hugging Face Hub) or
from a folder of task YAMLs (`include_path`). When every task comes from that folder, the run is
offline (HF_DATASETS_OFFLINE=1, HF_HUB_OFFLINE=1): such tasks read local files only.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from llava_fa.errors import ConfigError, DataError

LM_EVAL_PIP = 'pip install "lm-eval>=0.4,<0.5"'
OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
# Module constants that `datasets` and `huggingface_hub` read from the variables when imported.
_OFFLINE_CONSTANTS = (("datasets.config", "HF_HUB_OFFLINE"), ("datasets.config", "HF_DATASETS_OFFLINE"),
                      ("huggingface_hub.constants", "HF_HUB_OFFLINE"))
_NOT_METRICS = {"sample_len"}


def parse_tasks(text: str) -> list[str]:
    """'wikitext, arc_easy' -> ['wikitext', 'arc_easy'] (order kept, repeats dropped)."""
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise ConfigError(f"--tasks {text!r} names no task. Fix: pass task names separated by commas, "
                          f"e.g. --tasks wikitext,arc_easy")
    return names


def require_lm_eval():
    """The `lm_eval` package, or a ConfigError that names the install command."""
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(f"--tasks needs lm-evaluation-harness, which is not installed. Fix: {LM_EVAL_PIP} "
                          f"(in a llava-fa checkout: pip install -e '.[harness]')") from None
    return lm_eval


def task_manager(names: Sequence[str], include_path: str | Path | None = None):
    """An lm-eval TaskManager that knows every name in `names` (tasks, groups or tags).

    The built-in catalogue (thousands of YAMLs, ~20 s to index) is only read when `include_path`
    does not hold every task. Unknown names are a ConfigError listing close names."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    include = str(include_path) if include_path is not None else None
    if include is not None:
        local = TaskManager(include_path=include, include_defaults=False)
        if all(name in local.all_tasks for name in names):
            return local
    manager = TaskManager(include_path=include)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise ConfigError(_unknown_message(unknown, manager.all_tasks, include))
    return manager


def _unknown_message(unknown: Sequence[str], known: Sequence[str], include: str | None) -> str:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        parts.append(f"{name!r} (close: {', '.join(close)})" if close else repr(name))
    where = "lm-eval's catalogue" + (f" or {include}" if include else "")
    return (f"unknown lm-eval task {'; '.join(parts)}: not in {where}. Fix: check the spelling (`lm-eval ls tasks` "
            f"lists them all), or put the task's YAML in a folder and pass --tasks-include FOLDER; image-text "
            f"tasks (textvqa_val, mme, ...) run with --harness lmms-eval")


def all_local(manager, names: Sequence[str], include_path: str | Path | None) -> bool:
    """True when every task of `names` is defined in `include_path` (so its data should be local)."""
    if include_path is None:
        return False
    root = Path(include_path).resolve()
    for name in names:
        entry = manager.task_index.get(name)
        yaml_path = getattr(entry, "yaml_path", None)
        if yaml_path is None or root not in Path(yaml_path).resolve().parents:
            return False
    return True


@contextmanager
def hub_offline(enabled: bool = True) -> Iterator[None]:
    """No Hugging Face Hub access inside (datasets and huggingface_hub raise instead); restored after."""
    if not enabled:
        yield
        return
    old_env = {key: os.environ.get(key) for key in OFFLINE_VARIABLES}
    os.environ.update(dict.fromkeys(OFFLINE_VARIABLES, "1"))
    patched = []
    for module_name, attr in _OFFLINE_CONSTANTS:  # read at import: the variables alone come too late
        module = importlib.import_module(module_name)
        if hasattr(module, attr):
            patched.append((module, attr, getattr(module, attr)))
            setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in reversed(patched):
            setattr(module, attr, value)
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_tasks(manager, names: Sequence[str], offline: bool) -> list:
    """The Task / Group objects of `names`, their data sets loaded; a DataError names the fix when a
    data set cannot be had (no internet, offline, missing local file)."""
    objects = []
    for name in names:
        try:
            loaded = manager.load([name])
        except Exception as e:  # datasets / hub / fsspec raise many types; all mean "no data"
            raise DataError(_data_message(name, e, offline)) from None
        if name in loaded["groups"]:
            objects.append(loaded["groups"][name])
        else:  # a task, or a tag: its tasks
            objects.extend(loaded["tasks"].values())
    return objects


def _data_message(name: str, error: BaseException, offline: bool) -> str:
    detail = " ".join(f"{type(error).__name__}: {error}".split())[:300]
    how = ("this run is offline (every task comes from --tasks-include), so its data must be local files"
           if offline else "its data set downloads from the Hugging Face Hub, which needs internet access "
                            "(or the data set already in the local Hugging Face cache)")
    return (f"the data of lm-eval task {name!r} is not available ({detail}); {how}. Fix: run with internet "
            f"access, or pass --tasks-include FOLDER holding a task YAML whose data are local files "
            f"(dataset_path: json, dataset_kwargs: {{data_files: {{test: /absolute/path.jsonl}}}})")


def text_max_length(model) -> int | None:
    """The context length of the model's language model (the text config of a VLM)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(text, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def harness_model(model, processor, batch_size: int = 1, max_length: int | None = None):
    """An lm-eval HFLM around the already loaded model and the tokenizer of its processor."""
    require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    from llava_fa.evaluation._common import tokenizer_of

    tokenizer = tokenizer_of(processor)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # HFLM warns that a model object (not a name) was passed: that is the point here.
    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        return HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                    max_length=max_length or text_max_length(model))
    finally:
        hf_logger.setLevel(level)


def metrics_of(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lm-eval's results["results"] as task -> metric -> value (plain floats).

    lm-eval names metrics "acc,none" (metric, filter): the filter is kept only when it is not
    "none" ("exact_match,strict-match"); non-numeric entries (alias, "N/A" stderr) and the document
    count (sample_len: run_tasks' n_samples has it) are dropped."""
    table: dict[str, dict[str, float]] = {}
    for task, row in results.get("results", {}).items():
        metrics = {}
        for key, value in row.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or key in _NOT_METRICS:
                continue
            metric, _, filt = key.partition(",")
            name = metric if filt in ("", "none") else key
            metrics[name] = float(value) if math.isfinite(value) else None
        table[task] = metrics
    return table


def run_tasks(model, processor, names: Sequence[str], manager, limit: int | None = None,
              num_fewshot: int | None = None, batch_size: int = 1, offline: bool = False,
              bootstrap_iters: int = 1000) -> dict[str, Any]:
    """Run lm-eval tasks on a loaded model: {"results": task -> metric -> value, "n_samples": task -> n, ...}.

    manager: from `task_manager`; offline: no Hub access at all (HF_DATASETS_OFFLINE, HF_HUB_OFFLINE);
    limit: the first N documents of each task; bootstrap_iters: draws for the bootstrapped standard
    errors (bleu, f1, ...; lm-eval's default 100000 takes minutes on CPU), 0 for no standard errors."""
    lm_eval = require_lm_eval()
    with hub_offline(offline):
        tasks = load_tasks(manager, names, offline)
        lm = harness_model(model, processor, batch_size)
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot,
                                      task_manager=manager, bootstrap_iters=bootstrap_iters,
                                      log_samples=False, batch_size=batch_size)
    n_samples = {task: int(n.get("effective", n.get("original", 0))) if isinstance(n, dict) else int(n)
                 for task, n in (out.get("n-samples") or {}).items()}
    return {"results": metrics_of(out), "n_samples": n_samples, "harness": "lm-eval",
            "lm_eval_version": _version(lm_eval), "limit": limit, "num_fewshot": num_fewshot, "offline": offline}


def _version(module) -> str:
    try:
        from importlib.metadata import version
        return version("lm_eval")
    except Exception:  # an unusual install without metadata
        return str(getattr(module, "__version__", "unknown"))


def evaluate_tasks(model_dir: str | Path, names: Sequence[str], include_path: str | Path | None = None,
                   limit: int | None = None, num_fewshot: int | None = None, device="cpu", dtype="auto",
                   batch_size: int = 1, forward_mode: str | None = None, manager=None) -> dict[str, Any]:
    """Load a model folder with `load_model_and_processor` (compressed layers registered) and run the tasks.

    Returns run_tasks' dict with "model_dir", "model_type", "tasks" and "device" added."""
    manager = manager if manager is not None else task_manager(names, include_path)
    model, processor = load_for_tasks(model_dir, device, dtype, forward_mode)
    result = run_tasks(model, processor, names, manager, limit, num_fewshot, batch_size,
                       offline=all_local(manager, names, include_path))
    return with_model_fields(result, model_dir, model, names, device)


def load_for_tasks(model_dir: str | Path, device, dtype, forward_mode: str | None):
    """The model and processor our loader builds (compressed layers registered), in the chosen forward mode:
    what both harnesses evaluate."""
    from llava_fa.io.checkpoint import load_model_and_processor

    model, processor = load_model_and_processor(Path(model_dir), device, dtype)
    if forward_mode is not None:
        from llava_fa.formats import set_forward_mode
        set_forward_mode(model, forward_mode)
    return model, processor


def with_model_fields(result: dict[str, Any], model_dir, model, names: Sequence[str], device) -> dict[str, Any]:
    return {"model_dir": str(model_dir), "model_type": model.config.model_type, "tasks": list(names),
            "device": str(device), **result}


def render_table(result: dict[str, Any]):
    """The task metrics as a rich table (task, metric, value)."""
    from rich.table import Table

    harness = result.get("harness", "lm-eval")
    table = Table(title=f"llava-fa eval --tasks ({harness}): {result['model_dir']}", show_header=True)
    for column in ("task", "metric"):
        table.add_column(column)
    table.add_column("value", justify="right")
    for task, metrics in result["results"].items():
        n = result.get("n_samples", {}).get(task)
        label = f"{task} (n={n})" if n else task
        for metric, value in metrics.items():
            table.add_row(label, metric, "-" if value is None else format(value, ".4g"))
            label = ""
    return table

