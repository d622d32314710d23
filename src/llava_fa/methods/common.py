"""Checks and option help shared by the methods that store affine codes (rtn, gptq, hqq, hadamard,
and the base Q of lqer and caldera) or affine-coded low-rank factors (asvd, svd-llm, lqer, caldera)."""

from __future__ import annotations

from llava_fa.errors import ConfigError

GROUP_SIZE_HELP = "weights per scale and zero, consecutive along a row; -1: one group per row"
SYM_HELP = "symmetric range with a fixed mid-level zero, no stored zeros (needs 2 bits or more)"
FACTOR_GROUP_HELP = ("entries per scale and zero of quantized factors, along each rank component "
                     "(the whole component where it does not divide)")


def check_affine_options(method: str, bits: int, group_size: int, sym: bool) -> None:
    """Raise ConfigError for bits outside 1..8, a group size that is neither positive nor -1, or
    symmetric codes below 2 bits."""
    if not 1 <= bits <= 8:
        raise ConfigError(f"{method}: --bits must be from 1 to 8, got {bits}")
    if group_size != -1 and group_size <= 0:
        raise ConfigError(f"{method}: --group-size must be positive or -1 (one group per row), got {group_size}")
    if sym and bits < 2:
        raise ConfigError(f"{method}: symmetric quantization needs at least 2 bits (got --bits {bits})")

