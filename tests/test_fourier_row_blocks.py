"""A `fourier` layer rebuilt a block of rows at a time (rfft, none on CPU: formats/fourier.py weight_rows)
gives the floats of the whole rebuild: codes of a row range, the weight, the dequant forward, W - W_hat."""

import pytest
import torch
import torch.nn.functional as F

from llava_fa.formats import fourier_layout
from llava_fa.formats.base import weight_error
from llava_fa.formats.fourier import FourierLinear
from llava_fa.methods.fa import fit_layer
from llava_fa.pipeline.report import ActivationErrorMeter
from llava_fa.quantizers.packing import unpack
from llava_fa.quantizers.polar import (cartesian_dequantize, from_bits, polar_dequantize, sym_dequantize,
                                       uniform_levels)
from llava_fa.transforms import fourier as ft

pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(m, n, transform="rfft", rank=0, quantizer="polar", levels="lloyd", group_size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g) * 0.02
    p = {"transform": transform, "rank": rank, "lr_bits": 8, "codes": True, "quantizer": quantizer,
         "mag_bits": 2, "phase_bits": 4, "real_bits": 3, "group_size": group_size, "levels": levels,
         "col_scales": True, "row_scales": True}
    cols = torch.rand(n, generator=g).add(0.5).half().float()
    rows = torch.rand(m, generator=g).add(0.5).half().float()
    if transform == "rfft_out":  # no low-rank form: codes of the spectrum only
        layer = FourierLinear(n, m, True, **p).set_bias(torch.randn(m, generator=g))
        layer.set_odc(cols, rows)
        layer.set_codes(ft.forward(layer.scale_weight(W), transform))
        return W, layer
    return W, fit_layer(W, p, cols, rows, iters=2, bias=torch.randn(m, generator=g)).layer


def _values_from_masks(layer):
    """The stored entries decoded whole, groups from the masks (the decoding before row ranges)."""
    p, lay = layer.params(), layer.layout
    gc, gr = layer.entry_groups()
    vc = vr = None
    if not lay.n_complex:
        pass
    elif p["quantizer"] == "polar":
        lv = from_bits(layer.mag_levels) if p["levels"] == "lloyd" else uniform_levels(p["mag_bits"])
        vc = polar_dequantize(unpack(layer.mag_codes, p["mag_bits"], lay.n_complex),
                              unpack(layer.phase_codes, p["phase_bits"], lay.n_complex),
                              from_bits(layer.mag_scales), lv, gc, p["phase_bits"])
    else:
        b = lay.cart_bits
        vc = cartesian_dequantize(unpack(layer.re_codes, b, lay.n_complex), unpack(layer.im_codes, b, lay.n_complex),
                                  from_bits(layer.cplx_scales), gc, b)
    if lay.n_real:
        vr = sym_dequantize(unpack(layer.real_codes, p["real_bits"], lay.n_real), from_bits(layer.real_scales), gr,
                            p["real_bits"])
    return vc, vr


def _whole_weight(layer):
    """W = inverse(Q + L) / c / r over the whole grid at once."""
    m, n = layer.out_features, layer.in_features
    grid = ft.fill(*_values_from_masks(layer), m, n, layer.mode)
    L = layer.lowrank_grid()
    W = ft.inverse(grid if L is None else grid + L, n, layer.mode)
    c, r = layer.odc_scales()
    return W / c[None, :] / r[:, None]


@pytest.mark.parametrize("transform", ["rfft", "rfft2", "rfft_out", "fft2", "none"])
@pytest.mark.parametrize("quantizer,group_size", [("polar", 16), ("polar", -1), ("cartesian", 7)])
def test_code_values_of_row_ranges_are_those_of_the_whole(transform, quantizer, group_size):
    if transform == "none" and quantizer == "cartesian":
        pytest.skip("none stores real codes only")
    _, layer = _layer(40, 26, transform, quantizer=quantizer, group_size=group_size)
    ref_c, ref_r = _values_from_masks(layer)
    vc, vr = layer.code_values()
    for ref, got in ((ref_c, vc), (ref_r, vr)):
        assert (ref is None) == (got is None) and (ref is None or torch.equal(ref, got))
    rows = ft.spectrum_shape(40, 26, transform)[0]
    spans = [(0, 3), (3, 4), (4, 17), (17, rows)]
    parts = [layer.code_values_rows(a, b) for a, b in spans]
    for k, ref in enumerate((ref_c, ref_r)):
        if ref is not None:
            assert torch.equal(torch.cat([part[k] for part in parts]), ref)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 64 rows on small layers (the real size, 2^20 entries, needs layers of megabytes)."""
    monkeypatch.setattr(fourier_layout, "ROW_BLOCK_ELEMENTS", 64 * 70)


@pytest.mark.parametrize("transform,rank", [("rfft", 0), ("rfft", 3), ("none", 0), ("rfft2", 2)])
def test_weight_rebuilt_in_row_blocks_is_the_whole_rebuild(small_blocks, transform, rank):
    W, layer = _layer(300, 70, transform, rank=rank, levels="uniform" if rank else "lloyd")
    blocks = [(a, b) for a, b, _ in layer.weight_rows()]
    assert len(blocks) == (1 if transform == "rfft2" else 4) and blocks[0][0] == 0 and blocks[-1][1] == 300
    ref = _whole_weight(layer)
    assert torch.equal(layer.dequantize(), ref)
    assert torch.equal(layer.dequantize(torch.bfloat16), ref.to(torch.bfloat16))
    assert torch.equal(weight_error(layer, W), W - ref)


@pytest.mark.parametrize("transform", ["rfft", "none"])
def test_dequant_forward_in_row_blocks_equals_the_whole_weight_forward(small_blocks, transform):
    _, layer = _layer(300, 70, transform)
    ref = _whole_weight(layer)
    layer.forward_mode = "dequant"
    x = torch.randn(4, 16, 70)
    # Exactly equal where the BLAS computes each output alike whatever the number of weight rows:
    # MKL's sgemm for 16 or more input rows (the pass after each block runs nsamples * seqlen rows).
    assert torch.equal(layer(x), F.linear(x, ref, layer.bias))
    # Fewer input rows take other kernels, whose sums may round differently for another row count.
    one = x[:1, :1]
    torch.testing.assert_close(layer(one), F.linear(one, ref, layer.bias), rtol=1e-5, atol=1e-6)


def test_gather_without_projection_takes_the_projected_entries():
    g = torch.Generator().manual_seed(1)
    for transform in ("rfft", "none"):
        shape = ft.spectrum_shape(12, 10, transform)
        S = torch.randn(shape, generator=g, dtype=torch.complex64 if transform == "rfft" else torch.float32)
        cmask, rmask = ft.stored_masks(12, 10, transform)
        P = ft.project(S, 10, transform)
        vc, vr = ft.gather(S, 10, transform)
        assert torch.equal(vc, P[cmask]) and torch.equal(vr, (P[rmask] if transform == "none" else P[rmask].real))


def test_meter_keeps_w_minus_w_hat_in_bfloat16_and_measures_it_in_float32():
    W, layer = _layer(64, 48)
    meter = ActivationErrorMeter()
    meter.track("l", layer, weight_error(layer, W))
    x = torch.randn(32, 48)
    with meter:
        layer(x)
    assert meter._tracked["l"].diff.dtype == torch.bfloat16
    err = meter.errors()["l"]
    exact = ((x.double() @ (W.double() - layer.dequantize().double()).T).norm() / (x.double() @ W.double().T).norm())
    assert err == pytest.approx(exact.item(), rel=1e-2)
