"""Stored formats by name: a checkpoint names each module's format, the loader looks it up here.

Every format of the toolkit registers when `llava_fa.formats` is imported (its __init__)."""

from __future__ import annotations

import re

from llava_fa.errors import CheckpointError

FORMATS: dict[str, type] = {}


def register_format(cls: type) -> type:
    name = getattr(cls, "format", "")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"format name {name!r} of {cls.__name__} must be a short lowercase word")
    if name in FORMATS and FORMATS[name] is not cls:
        raise ValueError(f"format {name!r} is already registered by {FORMATS[name].__name__}")
    FORMATS[name] = cls
    return cls


def get_format(name: str) -> type:
    if name not in FORMATS:
        raise CheckpointError(f"unknown storage format {name!r}; known formats: {', '.join(sorted(FORMATS))}. "
                              f"Fix: upgrade llava-fa or re-compress the model with this version")
    return FORMATS[name]
