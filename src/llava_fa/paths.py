"""Where the toolkit keeps downloaded assets and finds shared data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """User cache for downloaded wheels and built artefacts (never inside the repo)."""
    return Path(os.environ.get("LLAVA_FA_CACHE", Path.home() / ".cache" / "llava_fa")).expanduser()


def data_dir() -> Path:
    """The shared data folder: $LLAVA_FA_DATA, else ../shared/data beside the checkout or cwd."""
    if "LLAVA_FA_DATA" in os.environ:
        return Path(os.environ["LLAVA_FA_DATA"]).expanduser()
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *here.parents]:
        candidate = parent.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"
