"""Bit packing, the affine quantizer and the `affine` stored format, per bit width."""

import math

import pytest
import torch
from safetensors.torch import save_file

from llava_fa.formats import AffineLinear, CompressedLinear, get_format
from llava_fa.quantizers import (AffineSpec, dequantize_grouped, fit, group_count, pack, packed_width, quantize_grouped,
                                 resolve_group_size, unpack)

BITS = range(1, 9)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", BITS)
def test_pack_round_trip_and_exact_size(bits, device):
    g = torch.Generator().manual_seed(bits)
    for n in (1, 7, 8, 13, 64):
        codes = torch.randint(0, 1 << bits, (3, 2, n), generator=g).to(device)
        packed = pack(codes, bits)
        assert packed.dtype == torch.uint8 and packed.shape == (3, 2, packed_width(n, bits))
        assert packed.shape[-1] == math.ceil(n / 8) * bits  # no byte wasted beyond the 8-code padding
        assert torch.equal(unpack(packed, bits, n).long(), codes)
    # extreme codes survive (the top code sets the highest bit of the 8-code word)
    top = torch.full((1, 8), (1 << bits) - 1, device=device)
    assert torch.equal(unpack(pack(top, bits), bits, 8).long(), top)


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="1 to 8"):
        pack(torch.zeros(1, 8, dtype=torch.long), 9)
    with pytest.raises(ValueError, match="1 to 8"):
        pack(torch.zeros(1, 8, dtype=torch.long), 0)
    with pytest.raises(TypeError):
        pack(torch.zeros(1, 8), 4)
    with pytest.raises(ValueError, match="expected"):
        unpack(torch.zeros(1, 5, dtype=torch.uint8), 4, 16)


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_affine_round_trip_error_bound(bits, sym):
    if sym and bits < 2:
        with pytest.raises(ValueError, match="at least 2 bits"):
            quantize_grouped(torch.randn(4, 32), AffineSpec(bits, 16, sym))
        return
    torch.manual_seed(bits)
    w = torch.randn(8, 64)
    w[0, :16] = 0  # an all-zero group
    codes, scale, zero = quantize_grouped(w, AffineSpec(bits, 16, sym))
    assert scale.shape == zero.shape == (8, 4)
    assert codes.min() >= 0 and codes.max() <= (1 << bits) - 1
    assert torch.equal(scale, scale.half().float())  # what is stored is what was optimized
    w_hat = dequantize_grouped(codes, scale, zero)
    assert torch.equal(w_hat[0, :16], torch.zeros(16))  # zeros stay exactly zero
    # inside the grid's range, rounding is off by at most half a step
    step = scale.repeat_interleave(16, dim=1)
    assert ((w - w_hat).abs() <= step / 2 * (1 + 1e-3) + 1e-6).all()
    if bits >= 2:
        # more bits, less error
        finer = dequantize_grouped(*quantize_grouped(w, AffineSpec(min(bits + 1, 8), 16, sym)))
        assert (w - finer).norm() <= (w - w_hat).norm() + 1e-6


def test_group_size_resolution_and_shorter_last_group():
    assert resolve_group_size(-1, 576) == 576
    assert resolve_group_size(64, 576) == 64
    assert resolve_group_size(128, 576) == 128 and group_count(576, 128) == 5  # 4 groups of 128, one of 64
    with pytest.raises(ValueError, match="positive or -1"):
        resolve_group_size(0, 576)


@pytest.mark.parametrize("sym", [False, True])
def test_shorter_last_group_is_quantized_on_its_own(sym):
    """Width 103 in groups of 32: the first 96 columns as if alone, the last 7 as their own group."""
    w = torch.randn(6, 103, generator=torch.Generator().manual_seed(0))
    codes, scale, zero = quantize_grouped(w, AffineSpec(3, 32, sym))
    assert codes.shape == (6, 103) and scale.shape == (6, 4)
    head = quantize_grouped(w[:, :96], AffineSpec(3, 32, sym))
    tail = quantize_grouped(w[:, 96:], AffineSpec(3, 7, sym))
    assert torch.equal(codes[:, :96], head[0]) and torch.equal(scale[:, :3], head[1])
    assert torch.equal(codes[:, 96:], tail[0]) and torch.equal(scale[:, 3:], tail[1])
    w_hat = dequantize_grouped(codes, scale, zero, 32)
    assert torch.equal(w_hat[:, 96:], dequantize_grouped(*tail))
    with pytest.raises(ValueError, match="pass the group size"):
        dequantize_grouped(codes, scale, zero)
    mod = AffineLinear.from_codes(codes, scale, zero, bits=3, sym=sym, group_size=32)
    assert mod.scales.shape == (6, 4) and torch.equal(mod.dequantize(), w_hat)
    with pytest.raises(ValueError, match="do not fit"):
        AffineLinear.from_codes(codes, scale, zero, bits=3, sym=sym)


def test_fit_includes_zero_in_range():
    scale, zero = fit(torch.tensor([[1.0, 2.0, 3.0]]), 2)
    assert zero.item() == 0 and scale.item() == pytest.approx(1.0)  # range widened to [0, 3]


def _expected_bits(out_f, in_f, bits, group, sym):
    groups = out_f * (in_f // group)
    codes = out_f * math.ceil(in_f / 8) * bits * 8
    zeros = 0 if sym else math.ceil(groups / 8) * bits * 8
    return codes + groups * 16 + zeros


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", BITS)
def test_affine_linear_round_trip_forward_and_bits(bits, device, tmp_path):
    torch.manual_seed(0)
    out_f, in_f, group = 24, 48, 16
    w, b = torch.randn(out_f, in_f), torch.randn(out_f)
    codes, scale, zero = quantize_grouped(w, AffineSpec(bits, group))
    mod = AffineLinear.from_codes(codes, scale, zero, bits=bits, sym=False, bias=b).to(device)
    assert isinstance(mod, CompressedLinear) and get_format("affine") is AffineLinear
    w_hat = dequantize_grouped(codes, scale, zero)
    assert torch.equal(mod.dequantize().cpu(), w_hat)
    assert torch.equal(mod.codes().long().cpu(), codes)
    x = torch.randn(2, 5, in_f, device=device)
    torch.testing.assert_close(mod(x), torch.nn.functional.linear(x, w_hat.to(device), b.to(device)))
    # exact accounting: the formula, and the bytes safetensors stores for these tensors
    assert mod.storage_bits() == _expected_bits(out_f, in_f, bits, group, False)
    tensors = {k: v.cpu() for k, v in mod.stored_tensors().items()}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    data_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    assert mod.storage_bits() == 8 * data_bytes
    assert mod.bits_per_weight() == pytest.approx(mod.storage_bits() / (out_f * in_f))
    # rebuilding from (shape, params) gives the same buffer shapes: what a loader needs
    skeleton = AffineLinear.from_config(in_f, out_f, True, mod.params())
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == {k: v.shape for k, v in mod.state_dict().items()}


def test_affine_linear_sym_stores_no_zeros():
    codes, scale, zero = quantize_grouped(torch.randn(8, 32), AffineSpec(4, 32, sym=True))
    mod = AffineLinear.from_codes(codes, scale, zero, bits=4, sym=True)
    assert "qzeros" not in mod.state_dict()
    assert mod.storage_bits() == _expected_bits(8, 32, 4, 32, True)
    assert torch.equal(mod.dequantize(), dequantize_grouped(codes, scale, zero))


def test_dtype_casts_do_not_touch_stored_tensors():
    codes, scale, zero = quantize_grouped(torch.randn(16, 32), AffineSpec(3, 16))
    mod = AffineLinear.from_codes(codes, scale, zero, bits=3, sym=False, bias=torch.randn(16))
    bits_before, w_before = mod.storage_bits(), mod.dequantize()
    mod.to(torch.bfloat16)
    assert mod.bias.dtype == torch.bfloat16 and mod.scales.dtype == torch.int16
    assert mod.storage_bits() == bits_before and torch.equal(mod.dequantize(), w_before)
    y = mod(torch.randn(2, 32, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("bits", [1, 3, 5, 7])
def test_packing_in_chunks_gives_the_bytes_of_one_step(bits, monkeypatch):
    """pack/unpack convert CHUNK_WORDS words per step (bounded temporaries): any chunk size, same bytes."""
    from llava_fa.quantizers import packing

    codes = torch.randint(0, 1 << bits, (5, 37), generator=torch.Generator().manual_seed(bits))
    whole = packing.pack(codes, bits)
    monkeypatch.setattr(packing, "CHUNK_WORDS", 2)
    assert torch.equal(packing.pack(codes, bits), whole)
    assert torch.equal(packing.unpack(whole, bits, 37), codes.to(torch.uint8))
