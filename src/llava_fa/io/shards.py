"""Output shards written as the model is compressed, one group of tensors (a decoder layer) at a time.

`ShardWriter.write(group, tensors)` writes `<folder>/<group>.safetensors` atomically, streaming each
tensor's bytes straight from its memory: safetensors' own `save_file` first copies every tensor into
a bytes object, which would double the memory of the group being written. `finish(dest)` puts them
into the (temporary) output folder as save_pretrained would lay them out: one model.safetensors
(copied shard by shard, never loaded), or past 50 GB the shards under transformers' names with the
index `from_pretrained` reads. The bytes stored are the tensors' own, so a checkpoint written this way
holds the same tensors as one written by `save_pretrained` (io.files.tensor_digests compares them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from llava_fa.io.background import BackgroundWrites
from llava_fa.io.files import default_modes, read_header

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
SINGLE_FILE_BYTES = 50 * 10**9  # save_pretrained's default max_shard_size, "50GB"
_DTYPE_NAMES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.uint16: "U16",
                torch.int32: "I32", torch.uint32: "U32", torch.int64: "I64", torch.float16: "F16",
                torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                      durable: bool = True) -> None:
    """A safetensors file, written atomically, without copying the tensors (CPU, contiguous or not).
    `durable`: on the disk (fsync) before it replaces `path`; a scratch file that is read back soon
    and deleted skips that wait (and, deleted before the kernel writes it back, any disk write)."""
    tensors = {k: t.detach().cpu().contiguous() for k, t in sorted(tensors.items())}
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for key, t in tensors.items():
        if t.dtype not in _DTYPE_NAMES:
            raise TypeError(f"{key}: dtype {t.dtype} cannot be stored in safetensors here")
        size = t.numel() * t.element_size()
        header[key] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for t in tensors.values():
                if t.numel():
                    f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, default_modes()[1])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ShardWriter:
    """Groups of tensors written to `folder` as they are ready; `finish` assembles the checkpoint."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.groups: dict[str, list[str]] = {}  # group -> its tensor names, in the order first written
        self.sizes: dict[str, int] = {}  # group -> bytes of its tensors (the index's total_size)
        self.background = BackgroundWrites()
        self.digests: dict[str, str] = {}  # file in the output folder -> sha256, where `finish` hashed it on the way
        # Groups written without fsync: shards of a checkpoint within SINGLE_FILE_BYTES are merged into
        # model.safetensors (synced once) and deleted; past it they are the output's own files.
        self.scratch: set[str] = set()

    def write(self, group: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write (or rewrite, on a resumed run) one group's shard, in the background (`finish` waits)."""
        tensors = {k: t.detach().cpu() for k, t in tensors.items()}  # copies off the GPU, now
        self.groups[group] = sorted(tensors)
        self.sizes[group] = sum(t.numel() * t.element_size() for t in tensors.values())
        durable = sum(self.sizes.values()) > SINGLE_FILE_BYTES
        if durable:
            self.scratch.discard(group)
        else:
            self.scratch.add(group)
        self.background.submit(write_safetensors, self.folder / f"{group}.safetensors", tensors, None, durable)

    def finish(self, dest: Path, total_parameters: int) -> None:
        """Put the shards into `dest` as save_pretrained lays them out: one model.safetensors (it
        shards only past 50 GB), else model-0000i-of-0000n.safetensors with their index."""
        self.background.drain()
        groups = [g for g in self.groups if self.groups[g]]
        if sum(self.sizes[g] for g in groups) <= SINGLE_FILE_BYTES:
            sources = [self.folder / f"{g}.safetensors" for g in groups]
            self.digests[SINGLE] = merge_safetensors(sources, Path(dest) / SINGLE)
            return
        weight_map, total_size = {}, 0
        for i, group in enumerate(groups, 1):
            name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            total_size += self.sizes[group]
            if group in self.scratch:  # written before the total passed the single file's size
                _sync(self.folder / f"{group}.safetensors")
            shutil.move(str(self.folder / f"{group}.safetensors"), str(Path(dest) / name))  # a rename beside --out
            weight_map.update({key: name for key in self.groups[group]})
        index = {"metadata": {"total_parameters": total_parameters, "total_size": total_size},
                 "weight_map": dict(sorted(weight_map.items()))}
        (Path(dest) / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def merge_safetensors(sources: list[Path], dest: Path) -> str:
    """One safetensors file holding the tensors of `sources`, copied a chunk at a time (no tensor is
    loaded); each source is deleted once copied, so the disk holds the checkpoint about once. Returns
    the file's sha256, taken from the bytes as they are written (the manifest needs it: reading a 7B
    checkpoint back to hash it took seconds of every run)."""
    headers = [read_header(source) for source in sources]
    merged: dict = {"__metadata__": {"format": "pt"}}
    base = 0
    for source, header in zip(sources, headers):
        for key, entry in header.items():
            if key != "__metadata__":
                begin, end = entry["data_offsets"]
                merged[key] = {**entry, "data_offsets": [base + begin, base + end]}
        base += source.stat().st_size - _data_start(source)
    raw = json.dumps(merged, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(dest, "wb") as out, _HashBehind() as digest:
        head = struct.pack("<Q", len(raw)) + raw
        out.write(head)
        digest.update(head)
        for source in sources:
            with open(source, "rb") as f:
                f.seek(_data_start(source))
                while chunk := digest.read(f):
                    out.write(chunk)
            source.unlink()
        out.flush()
        os.fsync(out.fileno())
        return digest.hexdigest()


# Bytes read, hashed and written at a time by merge_safetensors, into two reused buffers (a fresh
# bytes object per read is mapped and faulted in anew). Two 8 MB buffers stay in the CPU cache
# between the read, the hash and the write; 64 MB ones measured 3-4x slower to read into.
MERGE_CHUNK = 8 << 20


class _HashBehind:
    """sha256 taken by a worker thread while the caller writes the same bytes (hashlib and file I/O
    release the interpreter lock): hashing a 4 GB checkpoint, 2-3 s at 1.4 GB/s, then overlaps its
    copy instead of following it. `read` fills one of two reused buffers, the one the worker is done with."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._buffers = [memoryview(bytearray(MERGE_CHUNK)) for _ in range(2)]
        self._turn = 0  # the buffer the next `read` fills
        self._pending: deque[tuple[int | None, Future]] = deque()  # (buffer or None, its hashing), in order
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llava-fa-hash")

    def __enter__(self) -> "_HashBehind":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)

    def update(self, data: bytes) -> None:
        """Hash `data`, which the caller does not change afterwards, after what came before."""
        self._pending.append((None, self._pool.submit(self._digest.update, data)))

    def read(self, f) -> memoryview:
        """The next chunk of the file `f` (empty at its end), queued for hashing; the view stays valid
        until the second `read` after this one."""
        buffer = self._buffers[self._turn]
        while any(index == self._turn for index, _ in self._pending):
            self._pending.popleft()[1].result()
        n = f.readinto(buffer)
        if not n:
            return buffer[:0]
        self._pending.append((self._turn, self._pool.submit(self._digest.update, buffer[:n])))
        self._turn ^= 1
        return buffer[:n]

    def hexdigest(self) -> str:
        while self._pending:
            self._pending.popleft()[1].result()
        return self._digest.hexdigest()


def _sync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _data_start(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]
