"""Bit packing of integer codes (1..8 bits) into bytes.

Every width uses one layout: each run of 8 consecutive codes along the last axis becomes `bits`
bytes (8 codes * bits = 8*bits bits, little-endian: code k sits at bit offset k*bits). So a row of
n codes takes exactly ceil(n/8)*bits bytes and the stored size is exact for widths like 3, 5, 6, 7
that do not divide a byte. Plain tensor ops: runs on CPU and CUDA alike.
"""

from __future__ import annotations

import torch


def packed_width(n: int, bits: int) -> int:
    """Bytes per row of `n` codes of `bits` bits."""
    _check_bits(bits)
    return (n + 7) // 8 * bits


# Words (runs of 8 codes) converted per step: bounds the int64 temporaries of the bit arithmetic
# (a large layer holds millions of codes; whole-tensor int64 temporaries were fa's memory peak).
CHUNK_WORDS = 1 << 16


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) along the last axis into uint8 (padding the row to 8)."""
    _check_bits(bits)
    if codes.dtype.is_floating_point:
        raise TypeError("pack expects integer codes")
    *lead, n = codes.shape
    words = torch.nn.functional.pad(codes, (0, (-n) % 8)).reshape(-1, 8)
    if bits == 8:
        return words.reshape(*lead, -1).to(torch.uint8)
    out = torch.empty(words.shape[0], bits, dtype=torch.uint8, device=codes.device)
    shifts = torch.arange(8, device=codes.device, dtype=torch.int64) * bits
    byte_shifts = torch.arange(bits, device=codes.device, dtype=torch.int64) * 8
    for start in range(0, words.shape[0], CHUNK_WORDS):
        # 8 codes of <= 7 bits fit in 56 bits of an int64 without touching the sign bit.
        word = (words[start:start + CHUNK_WORDS].to(torch.int64) << shifts).sum(-1, keepdim=True)
        out[start:start + CHUNK_WORDS] = (word >> byte_shifts) & 0xFF
    return out.reshape(*lead, -1)


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack`: uint8 rows back to `n` codes per row (as uint8)."""
    _check_bits(bits)
    *lead, width = packed.shape
    if width != packed_width(n, bits):
        raise ValueError(f"packed row has {width} bytes, expected {packed_width(n, bits)} for {n} codes of {bits} bits")
    if bits == 8:
        return packed[..., :n]
    words = packed.reshape(-1, bits)
    out = torch.empty(words.shape[0], 8, dtype=torch.uint8, device=packed.device)
    byte_shifts = torch.arange(bits, device=packed.device, dtype=torch.int64) * 8
    shifts = torch.arange(8, device=packed.device, dtype=torch.int64) * bits
    for start in range(0, words.shape[0], CHUNK_WORDS):
        word = (words[start:start + CHUNK_WORDS].to(torch.int64) << byte_shifts).sum(-1, keepdim=True)
        out[start:start + CHUNK_WORDS] = (word >> shifts) & ((1 << bits) - 1)
    return out.reshape(*lead, -1)[..., :n].contiguous()


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 1 to 8, got {bits!r}")
