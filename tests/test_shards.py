"""io/shards.py: the output shards of a streamed run, merged into model.safetensors (hashed on the way),
and synced to the disk only where they are the checkpoint's own files."""

from __future__ import annotations

import hashlib
import os
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llava_fa.io import shards
from llava_fa.io.files import sha256_of
from llava_fa.io.shards import ShardWriter, merge_safetensors, write_safetensors


def _groups(n: int) -> list[dict[str, torch.Tensor]]:
    """Groups of uneven sizes (a chunk boundary falls anywhere, a group may be smaller than one)."""
    g = torch.Generator().manual_seed(0)
    return [{f"layer.{i}.w": torch.randint(-128, 127, (3 + 17 * i,), dtype=torch.int8, generator=g),
             f"layer.{i}.s": torch.randn(2 + i, dtype=torch.bfloat16, generator=g)} for i in range(n)]


_SHA256 = hashlib.sha256


class _SlowSha256:
    """sha256 that takes its time, so that a buffer refilled too early changes what it hashes."""

    def __init__(self):
        self._digest = _SHA256()

    def update(self, data) -> None:
        time.sleep(0.002)
        self._digest.update(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


@pytest.mark.parametrize("chunk", [8, 40, 1 << 20])
def test_the_merge_holds_every_tensor_and_its_digest_is_the_files(tmp_path, monkeypatch, chunk):
    """Chunks smaller than a source and larger than all of them: the two buffers the reads alternate
    between must not be refilled while the hashing thread still reads them (a slow hash would show it)."""
    monkeypatch.setattr(shards, "MERGE_CHUNK", chunk)
    monkeypatch.setattr(hashlib, "sha256", _SlowSha256)
    groups = _groups(6)
    sources = []
    for i, tensors in enumerate(groups):
        write_safetensors(tmp_path / f"g{i}.safetensors", tensors)
        sources.append(tmp_path / f"g{i}.safetensors")
    digest = merge_safetensors(sources, tmp_path / "model.safetensors")
    assert digest == sha256_of(tmp_path / "model.safetensors")
    assert not any(p.exists() for p in sources)  # each source deleted once copied
    merged = load_file(str(tmp_path / "model.safetensors"))
    expected = {k: t for tensors in groups for k, t in tensors.items()}
    assert merged.keys() == expected.keys() and all(torch.equal(merged[k], expected[k]) for k in expected)
    with open(tmp_path / "model.safetensors", "rb") as f:
        assert struct.unpack("<Q", f.read(8))[0] % 8 == 0  # the data starts 8-byte aligned


def _record_fsyncs(monkeypatch) -> list[str]:
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_shards_merged_into_one_file_are_scratch_and_that_file_is_synced(tmp_path, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    writer = ShardWriter(tmp_path / "work")
    for i, tensors in enumerate(_groups(3)):
        writer.write(f"g{i}", tensors)
    (tmp_path / "out").mkdir()
    writer.finish(tmp_path / "out", 0)
    assert synced == [shards.SINGLE] and writer.scratch == {"g0", "g1", "g2"}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_past_the_single_file_size_every_shard_is_synced(tmp_path, monkeypatch):
    """The shards become the checkpoint's files: those written before the total passed the single
    file's size are synced when moved, the later ones as they are written."""
    groups = _groups(3)
    sizes = [sum(t.numel() * t.element_size() for t in g.values()) for g in groups]
    monkeypatch.setattr(shards, "SINGLE_FILE_BYTES", sizes[0] + sizes[1])  # passed by the third group
    synced = _record_fsyncs(monkeypatch)
    writer = ShardWriter(tmp_path / "work")
    for i, tensors in enumerate(groups):
        writer.write(f"g{i}", tensors)
    (tmp_path / "out").mkdir()
    writer.finish(tmp_path / "out", 0)
    assert writer.scratch == {"g0", "g1"}
    # g2 is synced as written (its temporary file), g0 and g1 when moved
    assert sorted(name.split(".tmp-")[0] for name in synced) == [".g2.safetensors", "g0.safetensors", "g1.safetensors"]
    assert len(list((tmp_path / "out").glob("model-*-of-00003.safetensors"))) == 3
