"""The work dir: one shard per finished block, so an interrupted run resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from llava_fa.errors import CheckpointError, ConfigError
from llava_fa.formats import CompressedLinear
from llava_fa.io.background import BackgroundWrites
from llava_fa.io.files import atomic_write_bytes, read_header
from llava_fa.io.modules import build_module, module_entry
from llava_fa.pipeline.report import LayerReport

log = logging.getLogger("llava_fa")

STATE = "state.json"


class WorkDir:
    """Per-block shards: `<block>.safetensors` (the compressed modules) then `<block>.json`, whose
    presence marks the block finished. Both are written atomically. `path` None: keep nothing.
    `writer` False (the other ranks of a distributed run): read finished shards, never write."""

    def __init__(self, path: Path | None, fingerprint: str, writer: bool = True):
        self.path = Path(path) if path is not None else None
        self.writer = writer
        self.background = BackgroundWrites()  # blocks are written while the next one is compressed
        if self.path is None or not writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        state = self.path / STATE
        if state.exists():
            try:
                old = json.loads(state.read_text()).get("fingerprint")
            except ValueError:
                old = None
            if old != fingerprint:
                raise ConfigError(f"work dir {self.path} holds a run with another model, recipe or calibration. "
                                  f"Fix: pass --restart to discard it, or another --work-dir")
        else:
            atomic_write_bytes(state, json.dumps({"fingerprint": fingerprint}).encode())

    def done(self, block: str) -> bool:
        if self.path is None or not (self.path / f"{block}.json").exists():
            return False
        try:
            read_header(self.path / f"{block}.safetensors")
            json.loads((self.path / f"{block}.json").read_text())
            return True
        except (CheckpointError, ValueError):
            log.warning("work dir shard %s is damaged; recomputing it", block)
            return False

    def save(self, block: str, modules: dict[str, CompressedLinear], rows: list[LayerReport]) -> None:
        if self.path is None or not self.writer:
            return
        tensors = {f"{n}.{k}": t.detach().cpu().contiguous()
                   for n, m in modules.items() for k, t in m.state_dict().items()}
        meta = {"modules": {n: module_entry(m) for n, m in modules.items()}, "rows": [r.to_dict() for r in rows]}
        self.background.submit(self._write_block, block, tensors, meta)

    def _write_block(self, block: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """The shard, then the JSON whose presence marks the block finished (a crash between leaves it unfinished)."""
        atomic_write_bytes(self.path / f"{block}.safetensors", safetensors_bytes(tensors))
        atomic_write_bytes(self.path / f"{block}.json", json.dumps(meta).encode())

    def drain(self) -> None:
        """Wait for the blocks still being written."""
        self.background.drain()

    def load(self, block: str, device: torch.device | str) -> tuple[dict[str, CompressedLinear], list[LayerReport]]:
        meta = json.loads((self.path / f"{block}.json").read_text())
        tensors = load_file(str(self.path / f"{block}.safetensors"))
        modules = {}
        for name, entry in meta["modules"].items():
            mod = build_module(name, entry)
            mod.load_state_dict({k: tensors[f"{name}.{k}"] for k in mod.state_dict()})
            modules[name] = mod.to(device)
        return modules, [LayerReport(**r) for r in meta["rows"]]


def make_fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished_blocks(path: Path) -> int:
    return sum(1 for p in Path(path).glob("*.json") if p.name != STATE)


def prepare_work_dir(path: Path, fingerprint: str, restart: bool) -> bool:
    """Discard the shards of an earlier run on `restart`; check that kept ones belong to this run
    (same fingerprint). True when a work dir from an earlier run is resumed."""
    if restart and path.exists():
        shutil.rmtree(path)
    if not path.exists():
        return False
    WorkDir(path, fingerprint)  # raises if the shards belong to another run
    return True


def drop_if_empty(path: Path, existed_before: bool) -> None:
    """A work dir with no finished block is worth nothing: do not leave it behind."""
    if path.exists() and not existed_before and finished_blocks(path) == 0:
        shutil.rmtree(path, ignore_errors=True)
