"""Checks shared by the methods that store `affine` codes (rtn, gptq)."""

from __future__ import annotations

import torch

from llava_fa.errors import ConfigError
from llava_fa.quantizers import resolve_group_size


def check_affine_options(method: str, bits: int, group_size: int, sym: bool) -> None:
    if not 1 <= bits <= 8:
        raise ConfigError(f"{method}: --bits must be from 1 to 8, got {bits}")
    if group_size != -1 and group_size <= 0:
        raise ConfigError(f"{method}: --group-size must be positive or -1 (one group per row), got {group_size}")
    if sym and bits < 2:
        raise ConfigError(f"{method}: symmetric quantization needs at least 2 bits (got --bits {bits})")


def check_group_divides(method: str, name: str, weight: torch.Tensor, group_size: int) -> None:
    try:
        resolve_group_size(group_size, weight.shape[1])
    except ValueError as e:
        raise ConfigError(f"{method}: layer {name}: {e}") from None
