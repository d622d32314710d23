"""Compressed checkpoints: safetensors + config.json with a `quantization_config`, written atomically.

Layout of a checkpoint directory:
- config.json: the model config, `quantization_config` = {quant_method: "llava_fa", method,
  method_config, modules: {name: {format, in_features, out_features, bias, params}}, ...}, and
  the load guard `transformers_weights` that makes transformers refuse the folder unless llava_fa
  is imported (io/hf.py);
- model.safetensors (or shards + index): every tensor; a compressed module `m` stores its buffers
  as `m.<buffer>` (e.g. `m.qweight`, `m.scales`, `m.qzeros`) and its bias as `m.bias`;
- llava_fa_manifest.json: size and sha256 of each weight file, so truncation and corruption
  are caught with a clear message before anything is loaded;
- the processor / tokenizer files, generation_config.json, compress_report.json.
Nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llava_fa.errors import CheckpointError, ConfigError
from llava_fa.formats import FORMATS, CompressedLinear, get_format
from llava_fa.io.files import atomic_dir, check_apart, check_replaceable, check_writable, read_header
from llava_fa.io.hf import LOAD_GUARD, LOAD_GUARD_KEY, QUANT_METHOD, LlavaFAConfig, LlavaFAHfQuantizer, register
from llava_fa.io.modules import MANIFEST, REPORT, module_entry, verify_files, write_manifest


# --- save / load ---------------------------------------------------------------------------------

def quantization_config(model: nn.Module, method: str, method_config: dict, targets: list[str], ignore: list[str]):
    modules = {name: module_entry(m) for name, m in model.named_modules() if isinstance(m, CompressedLinear)}
    if not modules:
        raise CheckpointError("the model holds no compressed module to save")
    return LlavaFAConfig(method=method, method_config=method_config, modules=modules, targets=targets, ignore=ignore)


def save_compressed(model: nn.Module, out: Path, qconfig, processor=None, report: dict | None = None,
                    overwrite: bool = False, shards=None) -> Path:
    """Write the compressed model (and processor) to `out` atomically.

    `overwrite` replaces whatever `out` holds; check a user's --out with check_output_folder first.
    `shards`: an io.shards.ShardWriter that already wrote the weights (streamed compression, whose
    model is an empty skeleton by now); else save_pretrained writes them from memory."""
    register()
    model.config.quantization_config = qconfig
    model.hf_quantizer = LlavaFAHfQuantizer(qconfig, pre_quantized=True)
    with atomic_dir(out, overwrite) as tmp:
        if shards is None:
            # save_original_format=False: keys stay the in-memory module names that quantization_config uses.
            model.save_pretrained(tmp, save_original_format=False)
        else:
            shards.finish(tmp, model.num_parameters())
            _save_configs(model, tmp)
        _add_load_guard(tmp / "config.json")
        if processor is not None:
            processor.save_pretrained(tmp)
        if report is not None:
            (tmp / REPORT).write_text(json.dumps(report, indent=1) + "\n")
        stray = [p.name for p in tmp.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        if stray:
            raise CheckpointError(f"refusing to write pickled files {stray}")
        write_manifest(tmp, None if shards is None else shards.digests)
    return Path(out)


def _save_configs(model: nn.Module, folder: Path) -> None:
    """The config files save_pretrained writes beside the weights, as it writes them (transformers 5.24)."""
    model.config.dtype = str(model.dtype).split(".")[1]
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    if model.can_generate():
        model.generation_config.save_pretrained(folder)


def _add_load_guard(config_file: Path) -> None:
    # After save_pretrained, which drops the key from any config it writes (io/hf.py says why it is there).
    config = json.loads(config_file.read_text())
    config[LOAD_GUARD_KEY] = LOAD_GUARD
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_config(path: Path) -> dict[str, Any]:
    """config.json of a model folder as a dict, without the load guard (io/hf.py)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; pass the folder written by `llava-fa compress`")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"missing file {cfg}: {path} is not a model checkpoint. "
                              f"Fix: pass a folder written by save_pretrained or `llava-fa compress`")
    try:
        config = json.loads(cfg.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg} is not valid JSON ({e}). Fix: {_restore(cfg)}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg} holds a JSON {type(config).__name__}, not an object. Fix: {_restore(cfg)}")
    if config.get(LOAD_GUARD_KEY) == LOAD_GUARD:
        del config[LOAD_GUARD_KEY]
    return config


def _restore(file: Path) -> str:
    return (f"restore {file.name} (copy it from the model it came from, or write {file.parent} again "
            f"with save_pretrained or `llava-fa compress`)")


def _one_line(error: BaseException, limit: int = 300) -> str:
    """A library's error on one line, cut to `limit` characters (transformers' can run to a paragraph)."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_model_folder(path: Path) -> dict[str, Any]:
    """A model folder's config.json and other JSON files, checked as far as possible without loading
    weights: valid JSON, a config transformers accepts and whose model_type fits its architecture.
    Returns the config (as read_config)."""
    from transformers import AutoConfig

    path = Path(path)
    config = read_config(path)
    for file in sorted(path.glob("*.json")):
        try:
            json.loads(file.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{file} is not valid JSON ({e}). Fix: {_restore(file)}") from None
    try:
        parsed = AutoConfig.from_pretrained(path)
    except Exception as e:  # whatever transformers raises for a config it refuses
        raise CheckpointError(f"{path / 'config.json'} is rejected by transformers ({_one_line(e)}). "
                              f"Fix: {_restore(path / 'config.json')}") from None
    expected = getattr(getattr(model_class(config), "config_class", None), "model_type", "")
    if expected and parsed.model_type != expected:
        raise CheckpointError(f"{path / 'config.json'} says model_type {parsed.model_type!r} but its architecture "
                              f"needs {expected!r}. Fix: {_restore(path / 'config.json')}")
    return config


def check_output_folder(out: Path, overwrite: bool = False, inputs: tuple[Path, ...] = (),
                        what: str = "--out") -> None:
    """Before any work: `out` is apart from every input folder, replaced only with `overwrite` and only
    when llava-fa wrote it (its manifest is there), and its folder can be written."""
    for source in inputs:
        check_apart(out, source, what)
    check_replaceable(out, overwrite, MANIFEST, what)
    check_writable(out, what)


def written_by_llava_fa(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def check_forward_mode(path: Path, mode: str) -> None:
    """What set_forward_mode checks on a loaded model, checked on the folder's config before loading."""
    known = sorted({m for cls in FORMATS.values() for m in getattr(cls, "backends", {})})
    if mode not in known:
        raise ConfigError(f"unknown forward mode {mode!r}. Fix: use one of {', '.join(known)}")
    qc = read_config(path).get("quantization_config")
    ours = isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD and isinstance(qc.get("modules"), dict)
    modules = qc["modules"] if ours else {}
    if not modules:
        raise ConfigError(f"forward mode {mode!r}: {path} has no compressed layers. Fix: pass a checkpoint "
                          "written by `llava-fa compress`, or drop the forward mode.")
    formats = {name: get_format(entry.get("format") if isinstance(entry, dict) else None)
               for name, entry in modules.items()}
    unsupported = [(name, cls) for name, cls in formats.items() if mode not in getattr(cls, "backends", {})]
    if unsupported:
        name, cls = unsupported[0]
        raise ConfigError(f"forward mode {mode!r} is not available for {len(unsupported)} of the {len(modules)} "
                          f"compressed layers (e.g. {name}, format {cls.format!r}, modes: {', '.join(cls.backends)}). "
                          "Fix: pick a mode those layers have ('auto', 'cached' and 'dequant' work everywhere).")


def model_class(config: dict[str, Any]):
    import transformers

    for arch in config.get("architectures") or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if "vision_config" in config else AutoModelForCausalLM


def check_weight_files(path: Path, config: dict[str, Any]) -> None:
    """The weight files of a model folder are there and readable (headers only; llava-fa checkpoints:
    checksums too), with clear messages, before transformers' own, less specific, errors."""
    qc = config.get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD:
        verify_files(path)
        return
    files = sorted(path.glob("*.safetensors"))
    if not files and not list(path.glob("*.bin")):
        raise CheckpointError(f"{path} holds no weight files (*.safetensors). Fix: copy them from the original "
                              f"model, or download or rebuild it")
    for f in files:
        read_header(f, fix="download or rebuild the model")  # clear, unlike safetensors' own error


def device_map(device: str | torch.device) -> dict[str, torch.device] | None:
    """`from_pretrained`'s device_map for a model that will run on `device`: off the CPU, every weight
    goes to the device as it is read. Loading on CPU and then `.to(device)` holds the whole model in
    CPU memory wherever the load copies (a dtype conversion); where it only maps the file, the two
    peak alike (docs/results/memory_bounded_load_cpu.md). None on CPU: the plain load."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return None
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return {"": dev}


def load_model(path: Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = "auto"):
    """A model directory, compressed by llava-fa or not, with clear errors for broken ones.

    `dtype` goes to `from_pretrained` as is ("auto": the dtype the checkpoint stores); commands
    choose it with `llava_fa.runtime.resolve_dtype`, which knows the device the model computes on.
    The weights are read straight onto `device` (see device_map); compressed layers stay compressed
    (their stored tensors are integers, which no dtype converts)."""
    register()
    path = Path(path)
    config = check_model_folder(path)
    check_weight_files(path, config)
    try:
        model, info = model_class(config).from_pretrained(path, dtype=dtype, device_map=device_map(device),
                                                          output_loading_info=True)
    except CheckpointError:
        raise
    except Exception as e:  # whatever transformers/safetensors raise for a broken folder
        raise CheckpointError(f"cannot load {path} ({_one_line(e)}). Fix: download or rebuild the model, or "
                              f"compress it again") from None
    # transformers fills weights missing from the files with random values and only logs it.
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} weight(s) its architecture needs (e.g. {missing[0]}); "
                              f"they would be random. Fix: download or rebuild the model, or compress it again")
    return model.to(device).eval()  # a no-op where device_map placed it: kept for devices it does not name


def load_processor(path: Path):
    """The processor saved with the model, else its tokenizer; None when the folder has neither.

    Files that are there but do not load are an error, not None: the message names them."""
    from transformers import AutoProcessor, AutoTokenizer

    path = Path(path)
    present = sorted(p.name for p in path.iterdir() if p.name in _PROCESSOR_FILES)
    if not present:
        return None
    errors = []
    for loader in (AutoProcessor, AutoTokenizer):
        try:
            return loader.from_pretrained(path)
        except Exception as e:  # tokenizers and processors raise many types (even plain Exception)
            errors.append(e)
    raise CheckpointError(f"cannot load the tokenizer or processor of {path} ({_one_line(errors[-1])}). "
                          f"Fix: copy the tokenizer and processor files (tokenizer.json, tokenizer_config.json, "
                          f"processor_config.json, ...) from the original model into {path}")


# Files of a tokenizer or processor that save_pretrained writes.
_PROCESSOR_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "processor_config.json",
                    "preprocessor_config.json", "chat_template.json", "chat_template.jinja"}


def load_model_and_processor(path: Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = "auto"):
    """`load_model` and the processor (or tokenizer) saved with it, which running the model needs."""
    check_model_folder(path)
    processor = require_processor(path)  # first: a broken tokenizer fails before the weights load
    return load_model(path, device, dtype), processor


def require_processor(path: Path):
    """`load_processor`, refusing a folder without one (running the model needs it)."""
    processor = load_processor(path)
    if processor is None:
        raise CheckpointError(f"{path} has no processor or tokenizer files. Fix: copy them (tokenizer.json, "
                              f"tokenizer_config.json, processor_config.json, ...) from the original model into {path}")
    return processor
