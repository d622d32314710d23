"""Benchmark sweeps: compress a model with each run of a list, evaluate it, keep one JSON record per run.

A run list is a YAML or JSON list such as

    - {name: rtn3, method: rtn, options: {bits: 3, group_size: 64}, nsamples: 0}
    - {name: fa3, method: fa, options: {structure: quant, odc: calibrated}}
    - {name: gptq3-builtin, method: gptq, options: {bits: 3}, nsamples: 8, calib: builtin}

Records land in OUT/NAME.json (written atomically); a run whose record exists is skipped, so an
interrupted sweep resumes where it stopped (and compress itself resumes inside a run).
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import yaml

from llava_fa.errors import ConfigError, LlavaFAError, OutputError
from llava_fa.runtime import resolve_device

if TYPE_CHECKING:
    from llava_fa.recipe import Recipe

# What the records table and the report read from every record.
RECORD_KEYS = {"name", "method", "bpw", "perplexity", "vqa_accuracy", "kl", "top1_agreement", "compress_seconds",
               "peak_memory_mib"}


@dataclass
class BenchRun:
    name: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    nsamples: int | None = None  # None: the recipe's default calibration size
    calib: str | None = None  # None: the recipe's default source (auto, wikitext, builtin, easyvqa, mixed, a path)


def load_runs(path: Path) -> list[BenchRun]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"run list {path} does not exist. Fix: pass a YAML/JSON list of {{name, method, options}}")
    data = yaml.safe_load(path.read_text())  # JSON is YAML too
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: expected a non-empty list of runs")
    runs = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not {"name", "method"} <= set(item):
            raise ConfigError(f"{path}: run {i} needs at least 'name' and 'method'")
        unknown = set(item) - {"name", "method", "options", "nsamples", "calib"}
        if unknown:
            raise ConfigError(f"{path}: run {item['name']!r} has unknown key(s) {', '.join(sorted(unknown))}")
        runs.append(BenchRun(str(item["name"]), str(item["method"]), dict(item.get("options") or {}), item.get("nsamples"),
                             item.get("calib")))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be unique")
    return runs


def recipe_of(run: BenchRun) -> Recipe:
    from llava_fa.recipe import Recipe

    recipe = Recipe(method=run.method, options=dict(run.options))
    if run.nsamples is not None:
        recipe.calibration.nsamples = run.nsamples
    if run.calib is not None:
        recipe.calibration.source = run.calib
    return recipe


def read_record(path: Path, name: str) -> dict:
    """The record of run `name` at `path`; anything else there is an error, not a finished run."""
    try:
        record = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError):
        record = None
    if not (isinstance(record, dict) and record.get("name") == name and RECORD_KEYS <= set(record)):
        raise OutputError(f"{path} is not the bench record of run {name!r} (runs whose record exists are skipped). "
                          f"Fix: move {path} away, or choose another --out")
    return record


def check_runs(runs: list[BenchRun], model: Path, out: Path) -> dict[str, Recipe]:
    """Before the first run starts: every run's method, options and calibration, every existing record,
    and every output (OUT apart from the model; OUT/models/NAME replaced only if llava-fa wrote it)."""
    from llava_fa.io.files import check_apart
    from llava_fa.pipeline import check_options

    out = Path(out)
    check_apart(out, model, "--out")
    recipes = {}
    for run in runs:
        recipes[run.name] = recipe_of(run)
        try:
            if (out / f"{run.name}.json").exists():
                read_record(out / f"{run.name}.json", run.name)
            else:
                check_options(recipes[run.name], out / "models" / run.name, overwrite=True, model_path=model)
        except LlavaFAError as e:
            raise type(e)(f"run {run.name!r}: {e}") from None
    return recipes


def peak_memory_mib(device: str | torch.device) -> float:
    """Peak memory of the run: CUDA allocations on a GPU, the process's peak RSS on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; process-wide, never resets


def run_bench(model: Path, runs: list[BenchRun], out: Path, *, device: str | torch.device = "cpu",
              limit: int | None = None, ppl_windows: int | None = None, seqlen: int = 2048,
              text_source: str | None = None, keep_models: bool = False,
              on_info: Callable[[str], None] = print) -> list[dict]:
    from llava_fa.evaluation.runner import evaluate
    from llava_fa.io.files import write_json_atomic
    from llava_fa.pipeline import compress_checkpoint

    dev = resolve_device(device)
    out = Path(out)
    recipes = check_runs(runs, model, out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, run in enumerate(runs, 1):
        record_path = out / f"{run.name}.json"
        if record_path.exists():
            on_info(f"[{i}/{len(runs)}] {run.name}: record exists, skipped")
            records.append(read_record(record_path, run.name))
            continue
        on_info(f"[{i}/{len(runs)}] {run.name}: {run.method} {run.options}")
        recipe = recipes[run.name]
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model_dir = out / "models" / run.name
        t0 = time.perf_counter()
        report = compress_checkpoint(model, recipe, model_dir, device=str(dev), overwrite=True)
        seconds = time.perf_counter() - t0
        memory = peak_memory_mib(dev)
        result = evaluate(model_dir, reference=model, limit=limit, ppl_windows=ppl_windows, seqlen=seqlen,
                          text_source=text_source, device=dev, progress=False)
        fid = result.get("fidelity") or {}
        vqa = (result.get("vqa") or {}).get("fast") or {}
        record = {"name": run.name, "method": run.method, "options": run.options, "recipe": recipe.to_dict(),
                  "bpw": report["summary"]["bpw"], "mean_rel_error": report["summary"]["mean_rel_error"],
                  "mean_act_error": report["summary"]["mean_act_error"],
                  "perplexity": (result.get("perplexity") or {}).get("ppl"), "vqa_accuracy": vqa.get("accuracy"),
                  "kl": fid.get("kl"), "top1_agreement": fid.get("top1_agreement"),
                  "compress_seconds": round(seconds, 2), "peak_memory_mib": round(memory, 1), "device": str(dev),
                  "eval": result, "layers": report["layers"]}
        write_json_atomic(record_path, record)
        if not keep_models:
            shutil.rmtree(model_dir, ignore_errors=True)
        records.append(record)
    models = out / "models"
    if models.is_dir() and not any(models.iterdir()):
        models.rmdir()
    return records
