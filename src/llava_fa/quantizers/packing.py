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
    # 8 codes of <= 7 bits fit in 56 bits of an int64 without touching the sign bit.
    return _regroup(words, bits, bits, 8, 0xFF).reshape(*lead, -1)


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack`: uint8 rows back to `n` codes per row (as uint8)."""
    _check_bits(bits)
    *lead, width = packed.shape
    if width != packed_width(n, bits):
        raise ValueError(f"packed row has {width} bytes, expected {packed_width(n, bits)} for {n} codes of {bits} bits")
    if bits == 8:
        return packed[..., :n]
    codes = _regroup(packed.reshape(-1, bits), 8, 8, bits, (1 << bits) - 1)
    return codes.reshape(*lead, -1)[..., :n].contiguous()


def unpack_range(packed: torch.Tensor, bits: int, start: int, stop: int) -> torch.Tensor:
    """Codes start..stop of a 1-D packed stream: only the words (runs of 8 codes) that hold them unpacked."""
    w0, w1 = start // 8, -(-stop // 8)
    return unpack(packed[w0 * bits:w1 * bits], bits, (w1 - w0) * 8)[start - w0 * 8:stop - w0 * 8]


def _regroup(words: torch.Tensor, in_step: int, out_count: int, out_step: int, mask: int) -> torch.Tensor:
    """Each row of `words` (k fields of `in_step` bits, little-endian) joined into one int64 and cut into
    `out_count` fields of `out_step` bits (masked), CHUNK_WORDS rows at a time; uint8 (rows, out_count)."""
    out = torch.empty(words.shape[0], out_count, dtype=torch.uint8, device=words.device)
    in_shifts = torch.arange(words.shape[1], device=words.device, dtype=torch.int64) * in_step
    out_shifts = torch.arange(out_count, device=words.device, dtype=torch.int64) * out_step
    for start in range(0, words.shape[0], CHUNK_WORDS):
        word = (words[start:start + CHUNK_WORDS].to(torch.int64) << in_shifts).sum(-1, keepdim=True)
        out[start:start + CHUNK_WORDS] = (word >> out_shifts) & mask
    return out


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 1 to 8, got {bits!r}")
