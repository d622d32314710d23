"""Compression end to end: a model directory in, a compressed checkpoint out.

The stages live in submodules: planning.py (what to compress, in which blocks), sequential.py
(calibrating and compressing block by block), workdir.py (shards for resuming), report.py (the
per-layer report and its errors).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from llava_fa.errors import ConfigError, DataError
from llava_fa.methods.base import Method, MethodConfig, build_config, get_method
from llava_fa.pipeline.distributed import barrier, gather_stage_seconds, init_world
from llava_fa.pipeline.layer_methods import check_layer_names, with_layer_options
from llava_fa.pipeline.planning import Plan, check_targets, make_plan, plan
from llava_fa.pipeline.report import LayerReport, bits_by_part, summarize
from llava_fa.pipeline.sequential import compress_model, image_token_id
from llava_fa.pipeline.streaming import stream_for
from llava_fa.pipeline.timing import StageClock
from llava_fa.pipeline.workdir import WorkDir, drop_if_empty, finished_blocks, make_fingerprint, prepare_work_dir
from llava_fa.runtime import environment, resolve_dtype
from llava_fa.selection import default_patterns, find_parts, select

__all__ = ["compress_checkpoint", "compress_model", "summarize", "bits_by_part", "image_token_id", "LayerReport",
           "plan", "Plan", "make_plan", "resolve_model_path", "make_fingerprint", "WorkDir", "check_targets",
           "check_recipe", "default_patterns", "find_parts", "select"]

# Bumped when shards written by an older version could not be resumed by this one.
WORK_DIR_VERSION = 1


def compress_checkpoint(model_path: str | Path, recipe, out: Path, *, device: str = "cpu", dtype: str = "auto",
                        work_dir: Path | None = None, restart: bool = False, overwrite: bool = False,
                        stream: bool = True, on_info: Callable[[str], None] | None = None,
                        on_block: Callable[[int, int, str], None] | None = None,
                        on_row: Callable[[LayerReport], None] | None = None,
                        on_layers: Callable[[int], None] | None = None,
                        on_report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Load, plan, calibrate, compress layer by layer, save atomically. Returns the report.

    Progress: `on_layers(n)` once the n selected layers are known, `on_row` after each layer,
    `on_block(done, total, label)` after each block, `on_info(message)` for what is said on the way,
    `on_report(report)` once the report is complete, before the checkpoint is saved (what the caller
    makes of the report, such as a figure, can overlap the save; the report is not changed after).
    `stream`: decoder layers read from the safetensors files and written one at a time (streaming.py).
    Under torchrun every rank calls it alike (distributed.py); rank 0 alone reports and writes."""
    from llava_fa.io.checkpoint import check_model_folder, quantization_config, save_compressed

    world, device = init_world(device)
    info = on_info if on_info and world.writer else _silent
    if not world.writer:
        on_block = on_row = on_layers = None
    path = resolve_model_path(model_path)
    # Everything that can be checked without loading the model, before any work or output.
    method, config = check_options(recipe, out, overwrite, model_path=path, work_dir=work_dir)
    check_model_folder(path)
    check_not_compressed(path)
    t0, clock = time.perf_counter(), StageClock()
    with clock("load"):
        model, processor, weights = load(path, device, dtype, stream, info)
    parts = find_parts(model)
    names, targets, ignore = plan(model, recipe, parts)
    check_layer_names(getattr(recipe, "layer_options", None) or {}, names)
    blocks = make_plan(model, names, method, parts)
    describe_selection(model, names, parts, ignore, method, info)
    if on_layers:
        on_layers(len(names))
    with clock("calibration data"):
        samples, described = calibration_samples(processor, recipe.calibration, path, multimodal=bool(parts.vision))
    info(f"calibration: {described}")

    work_dir, fingerprint, resumed = open_work_dir(work_dir, out, path, recipe, config, names, restart, world, info)
    streamer = stream_for(weights, work_dir, world.writer)
    try:
        rows = compress_model(model, method, names, samples, device=device, work_dir=work_dir,
                              fingerprint=fingerprint, on_block=on_block, on_row=on_row, plan=blocks, world=world,
                              clock=clock, stream=streamer)
    except BaseException:
        if world.writer:
            drop_if_empty(work_dir, resumed)
        raise
    report = make_report(path, recipe, config, targets, ignore, described, device, rows, t0, clock, world)
    if world.writer:
        if on_report:
            on_report(report)
        qconfig = quantization_config(model, recipe.method, config.to_dict(), targets, ignore)
        with clock("save"):  # after the report: its stage_seconds cover the run up to saving
            save_compressed(model, out, qconfig, processor, report, overwrite=overwrite, shards=streamer.writer)
        shutil.rmtree(work_dir, ignore_errors=True)
    barrier(world)
    return report


def make_report(path: Path, recipe, config: MethodConfig, targets: list[str], ignore: list[str], described: str,
                device, rows: list[LayerReport], t0: float, clock: StageClock, world) -> dict[str, Any]:
    """The run's report (compress_report.json): what was compressed how, per layer, and the wall
    seconds from `t0` (the load) to now, per stage and per rank."""
    report = dict(model=str(path), method=recipe.method, method_config=config.to_dict(), targets=targets, ignore=ignore,
                  calibration=described, device=str(device), environment=environment(), summary=summarize(rows),
                  layers=[r.to_dict() for r in rows], wall_seconds=time.perf_counter() - t0,
                  stage_seconds=clock.rounded(), rank_stage_seconds=gather_stage_seconds(world, clock.rounded()))
    if getattr(recipe, "layer_options", None):  # the per-layer options beside the default method_config
        report["layer_options"] = recipe.layer_options
    return report


def open_work_dir(work_dir: Path | None, out: Path, path: Path, recipe, config, names: list[str], restart: bool,
                  world, info: Callable[[str], None]) -> tuple[Path, str, bool]:
    """The run's work folder (resume state), its fingerprint, and whether finished blocks are reused."""
    from llava_fa.io.checkpoint import read_config

    work_dir = Path(work_dir) if work_dir is not None else Path(out).parent / f".{Path(out).name}.work"
    fingerprint = make_fingerprint(str(path.resolve()), read_config(path), recipe.to_dict(), config.to_dict(), names,
                                   WORK_DIR_VERSION)
    resumed = prepare_work_dir(work_dir, fingerprint, restart) if world.writer else False
    barrier(world)  # the other ranks read the work dir rank 0 prepared
    if resumed:
        info(f"resuming from {work_dir}: {finished_blocks(work_dir)} finished block(s) will be loaded, not recomputed")
    return work_dir, fingerprint, resumed


def _silent(message: str) -> None:
    pass


def describe_selection(model, names: list[str], parts, ignore: list[str], method: Method,
                       info: Callable[[str], None]) -> None:
    """What the selection takes, part by part and MoE experts apart, and what it leaves and why
    (make_plan warns about fused experts left dense)."""
    from llava_fa.calibration.experts import MIN_TOKEN_SHARE
    from llava_fa.pipeline.summary import summarize
    from llava_fa.selection import count_selected

    count = count_selected(model, names)
    info(count.describe())
    for line in summarize(model, names, parts, ignore, method):
        info(line)
    if count.expert_layers and method.needs:
        info(f"MoE: each expert is calibrated on the tokens routed to it; one routed under {MIN_TOKEN_SHARE:.1%} of "
             f"its module's tokens takes the statistics pooled over the module's experts (reported per layer)")


def check_options(recipe, out: Path, overwrite: bool, model_path: Path | None = None,
                  work_dir: Path | None = None) -> tuple[Method, MethodConfig]:
    """The method with its config, after every check of the options and outputs that needs no model:
    method options, re: patterns, calibration, and the outputs (apart from the model folder, an
    existing --out replaced only with `overwrite` and only if llava-fa wrote it, writable)."""
    method, config = check_recipe(recipe)
    check_outputs(Path(out), overwrite, Path(model_path) if model_path is not None else None, work_dir)
    return method, config


def check_recipe(recipe) -> tuple[Method, MethodConfig]:
    """The method (per layer where the recipe has `layer_options`) and its default config, after the
    checks of the recipe that need no model: options, per-layer options, re: patterns, calibration."""
    from llava_fa.calibration.data import SOURCES

    config = build_config(recipe.method, recipe.options)
    method = with_layer_options(get_method(recipe.method)(config), recipe.method, recipe.options,
                                getattr(recipe, "layer_options", None) or {})
    check_patterns([*(recipe.targets or []), *recipe.ignore])
    cal = recipe.calibration
    if cal.nsamples < 0 or cal.seqlen < 1:
        raise ConfigError(f"--nsamples must be >= 0 and --seqlen >= 1 (got {cal.nsamples}, {cal.seqlen})")
    if cal.source not in SOURCES and not Path(cal.source).is_file():
        raise DataError(f"calibration source {cal.source!r} is neither one of {', '.join(SOURCES)} nor an existing "
                        f"text file")
    return method, config


def check_patterns(patterns: list[str]) -> None:
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as e:
                raise ConfigError(f"bad regular expression in {pattern!r}: {e}. Fix: correct the pattern after "
                                  f"re: (Python re syntax), or escape its special characters") from None


def check_outputs(out: Path, overwrite: bool, model_path: Path | None, work_dir: Path | None) -> None:
    from llava_fa.io.checkpoint import check_output_folder
    from llava_fa.io.files import check_apart, check_writable

    inputs = (model_path,) if model_path is not None else ()
    check_output_folder(out, overwrite, inputs)
    if work_dir is not None:
        for source in inputs:
            check_apart(Path(work_dir), source, "--work-dir")
        check_writable(Path(work_dir) / "state.json", "--work-dir")


def resolve_model_path(model: str | Path) -> Path:
    """A model directory; the name `testbed` stands for the testbed built in the user cache."""
    from llava_fa.paths import cache_dir

    if str(model) == "testbed":
        path = cache_dir() / "testbed"
        if not (path / "config.json").is_file():
            raise ConfigError(f"the testbed is not built yet ({path} has no config.json). "
                              f"Fix: run `llava-fa testbed build` first, or pass a model directory")
        return path
    path = Path(model).expanduser()
    if not path.exists():
        raise ConfigError(f"model {path} does not exist; pass a Hugging Face model directory (config.json + "
                          f"*.safetensors) or `testbed`")
    return path


def check_not_compressed(path: Path) -> None:
    from llava_fa.io.checkpoint import read_config

    qc = read_config(path).get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == "llava_fa":
        raise ConfigError(f"{path} is already compressed by llava-fa; compress the original model instead")


def load(path: Path, device: str, dtype: str, stream: bool = False, info: Callable[[str], None] = _silent):
    """(model on the CPU, its processor or None, where its weights come from) in the precision it will
    compute in on `device` (runtime.resolve_dtype: `auto` is float32 on CPU, the stored dtype on
    CUDA). `stream`: a meta skeleton and its LazyWeights where streaming.py can apply (weights None:
    the model was loaded whole)."""
    from llava_fa.io.checkpoint import load_processor
    from llava_fa.pipeline.streaming import open_model

    model, weights = open_model(path, resolve_dtype(dtype, device), stream, info)
    return model, load_processor(path), weights


def calibration_samples(processor, cal, path: Path, multimodal: bool) -> tuple[list[dict], str]:
    from llava_fa.calibration.data import build_samples, require_image_processor

    if multimodal:  # also what is saved with the checkpoint: checked before any work, whatever --nsamples
        require_image_processor(processor, path)
    if cal.nsamples and processor is None:
        raise DataError(f"{path} has no tokenizer/processor to build calibration samples; pass --nsamples 0 "
                        f"(methods without calibration only)")
    return build_samples(processor, cal.source, cal.nsamples, cal.seqlen, cal.seed, multimodal=multimodal)
