"""The fused kernel's layout holds the only copy of a `fourier` layer's codes at run time.

The layout packs the codes at their stored width (formats/fourier_runtime.py), the layer's code
buffers are emptied, and everything that reads them (state_dict, dequantize, .to(), load_state_dict,
the bit count) gets them back bit for bit. Plain torch: runs without Triton or a GPU.
"""

import pytest
import torch
from test_fourier_kernel import CASES, make_layer

from llava_fa.formats import fourier_runtime as rt


@pytest.mark.parametrize("bits", range(1, 9))
def test_packed_codes_round_trip_at_every_width(bits):
    entries, word_bytes = rt.word_shape(bits)
    assert entries * bits == 8 * word_bytes and word_bytes <= bits  # whole codes in whole bytes
    g = torch.Generator().manual_seed(bits)
    grid = torch.randint(0, 1 << bits, (32, 7), generator=g)
    packed = rt.pack_codes(grid, bits)
    assert packed.shape == (32 * bits // 8, 7) and packed.dtype == torch.uint8  # exactly `bits` per code
    assert torch.equal(rt.unpack_codes(packed, bits), grid)


def _state(layer):
    return {k: v.clone() for k, v in layer.state_dict().items()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[2]['transform']}")
def test_layout_holds_the_codes_and_gives_them_back(case):
    m, n, params = case
    layer = make_layer(m, n, params)
    before, bits, weight = _state(layer), layer.storage_bits(), layer.dequantize()
    layout = rt.kernel_layout(layer, torch.device("cpu"))
    assert layer.mag_codes.numel() == 0 and layer.phase_codes.numel() == 0  # one copy: the layout's
    code_bytes = before["mag_codes"].numel() + before["phase_codes"].numel()
    assert layout.codes.numel() <= code_bytes + m * layout.bits * 2  # stored size, padded to 16 entries a row
    assert layer.storage_bits() == bits
    after = layer.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k  # saved bit for bit as stored
    assert layer.mag_codes.numel() == 0  # saving did not bring the copy back
    torch.testing.assert_close(layer.dequantize(), weight, rtol=0, atol=0)  # takes the codes back
    assert torch.equal(layer.mag_codes, before["mag_codes"]) and not layer.__dict__["_kernel"]


def test_to_and_load_state_dict_restore_first():
    m, n, params = CASES[0]
    layer, other = make_layer(m, n, params), make_layer(m, n, params)
    before = _state(layer)
    rt.kernel_layout(layer, torch.device("cpu"))
    layer.to(torch.float64)  # _apply drops the layout: the codes come back first
    assert torch.equal(layer.mag_codes, before["mag_codes"])
    rt.kernel_layout(other, torch.device("cpu"))
    other.load_state_dict(before)  # buffers full size again before loading
    assert torch.equal(other.phase_codes, before["phase_codes"])


def test_codes_come_back_where_the_buffers_are():
    """Buffers moved without .to() (the pipeline's offloading swaps module._buffers directly) still get
    their codes back on their own device, not the layout's."""
    m, n, params = CASES[0]
    layer = make_layer(m, n, params)
    before = _state(layer)
    rt.kernel_layout(layer, torch.device("cpu"))
    for key, b in layer._buffers.items():
        layer._buffers[key] = b.to("meta")  # a stand-in for another device
    state = layer.state_dict()
    assert state["mag_codes"].device.type == "meta" and state["mag_codes"].shape == before["mag_codes"].shape
