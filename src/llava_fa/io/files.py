"""Files written whole or not at all, and the safetensors header checks every reader shares.

Outputs are checked before any work starts (`check_writable`, `check_apart`, `check_replaceable`),
then written into a temporary folder or file beside their destination and renamed into place, so a
failure leaves nothing half-written. mkdtemp / mkstemp create 0700 / 0600 entries: the finished
output gets the modes plain mkdir / open would give (0777 / 0666 less the umask).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from llava_fa.errors import CheckpointError, OutputError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- checks before writing ----------------------------------------------------------------------

def check_writable(path: Path, what: str = "--out") -> None:
    """Fail now, with the fix, when `path` (a file or folder to create or replace) cannot be written.

    The nearest existing parent gets a real write (an empty folder made and removed): permission
    bits say nothing for root or on a read-only mount."""
    path = Path(path).absolute()
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{what} {path} cannot be created: {existing} is a file, not a folder. "
                          f"Fix: choose another {what}")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".llava-fa-write-test-"))
    except OSError as e:
        raise OutputError(f"{what} {path} cannot be written: {existing} is not writable ({e.strerror}). "
                          f"Fix: choose a {what} in a folder you can write to") from None


def check_apart(output: Path, source: Path, what: str = "--out", source_what: str = "the input model folder") -> None:
    """Refuse an output that is, contains or lies inside `source`: writing it would change or delete the input."""
    out, src = Path(output).resolve(), Path(source).resolve()
    if out == src:
        relation = "is"
    elif src in out.parents:
        relation = "lies inside"
    elif out in src.parents:
        relation = "contains"
    else:
        return
    exists = "already exists and " if out.exists() else ""
    raise OutputError(f"{what} {output} {exists}{relation} {source_what} {source}: writing it would change or "
                      f"replace the input. Fix: choose a {what} outside {source}")


def check_replaceable(out: Path, overwrite: bool, marker: str, what: str = "--out") -> None:
    """An existing `out` is replaced only with `overwrite`, and only when it is empty or holds `marker`,
    the file this toolkit writes into each of its outputs: never a user's own folder."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"{what} {out} is a file. Fix: choose a folder path for {what}")
    if not overwrite:
        raise OutputError(f"{out} already exists. Fix: pass --overwrite or choose another {what}")
    if any(out.iterdir()) and not (out / marker).is_file():
        raise OutputError(f"{out} was not written by llava-fa (it has no {marker}), so it is not replaced. "
                          f"Fix: choose another {what}, or move {out} away yourself")


# --- atomic writes -------------------------------------------------------------------------------

def default_modes() -> tuple[int, int]:
    """(folder mode, file mode) that mkdir and open give here: 0777 and 0666 less the umask."""
    umask = os.umask(0)  # the only way to read it before Python 3.13 (os.get_umask is not there yet)
    os.umask(umask)
    return 0o777 & ~umask, 0o666 & ~umask


def apply_default_modes(root: Path) -> None:
    """Give `root` and everything under it the modes of default_modes() (mkdtemp/mkstemp made them private)."""
    dir_mode, file_mode = default_modes()
    os.chmod(root, dir_mode)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(folder, name), file_mode)


def is_disk_full(error: BaseException) -> bool:
    """An OSError for a full disk or quota, or a library's wrapped form of one (safetensors' own error)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error) or "StorageFull" in str(error)


@contextmanager
def atomic_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; on success it replaces `out` in one rename.

    `overwrite` replaces whatever `out` holds: callers that take --overwrite from a user check it
    first with check_replaceable. On any failure the temporary directory is removed."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputError(f"{out} already exists. Fix: pass --overwrite or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        apply_default_modes(tmp)
        _replace_dir(tmp, out)
    except Exception as e:
        if not is_disk_full(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"the disk is full while writing {out}: the partial output was removed and {out} is "
                          f"unchanged. Fix: free space on that disk or choose another --out") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, trash / "old")
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_modes()[1])
        os.replace(tmp, path)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise OutputError(f"the disk is full while writing {path}: the partial file was removed. "
                          f"Fix: free space on that disk or write elsewhere") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: Path, data: Any) -> None:
    """Indented JSON, written atomically (parents created): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def read_header(path: Path, fix: str = "compress the model again") -> dict[str, Any]:
    """The safetensors header of `path`, after checking that the file holds all the bytes it declares."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing file {path}")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it is truncated or corrupted. "
                              f"Fix: {fix}") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise CheckpointError(f"{path} holds {size} bytes but its header declares {8 + n + end}; the file is "
                              f"truncated or corrupted. Fix: {fix}")
    return header


def tensor_digests(folder: Path) -> dict[str, str]:
    """Tensor name -> sha256 of its stored bytes, over the safetensors files of `folder`: two
    checkpoints store identical tensors exactly when these are equal (the JSON headers may differ)."""
    digests = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        header = read_header(path)
        with open(path, "rb") as f:
            data_start = 8 + struct.unpack("<Q", f.read(8))[0]
            for key, entry in header.items():
                if key == "__metadata__":
                    continue
                begin, end = entry["data_offsets"]
                f.seek(data_start + begin)
                digests[key] = hashlib.sha256(f.read(end - begin)).hexdigest()
    return digests


def stored_key(stored: dict, key: str) -> str | None:
    """`key`, else the one stored key with its longest dotted suffix: transformers' save_pretrained
    may write some architectures under their original prefixes (LLaVA: language_model.model.)."""
    if key in stored:
        return key
    parts = key.split(".")
    for i in range(1, len(parts) - 1):
        tail = "." + ".".join(parts[i:])
        hits = [k for k in stored if k.endswith(tail)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            return None
    return None
