"""The `fourier` stored format: exact bit counts, the two forward paths, save/load."""

import itertools

import pytest
import torch
from safetensors.torch import load_file, save_file

from llava_fa.formats import get_format
from llava_fa.formats.fourier import FourierLinear
from llava_fa.formats.fourier_layout import Layout
from llava_fa.methods.fa import fit_layer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


pytestmark = pytest.mark.usefixtures("one_thread")


def _params(**kw):
    p = {"transform": "rfft2", "rank": 3, "lr_bits": 8, "codes": True, "quantizer": "polar", "mag_bits": 3,
         "phase_bits": 2, "real_bits": 3, "group_size": 16, "levels": "uniform", "col_scales": True,
         "row_scales": False}
    p.update(kw)
    return p


def _weight(m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g) * 0.02
    W[:, 1] *= 8  # an outlier input channel, as in LLM weights
    return W


def _fit(m, n, seed=0, **kw):
    W = _weight(m, n, seed)
    p = _params(**kw)
    g = torch.Generator().manual_seed(seed)
    cols = torch.rand(n, generator=g).add(0.5).half().float() if p["col_scales"] else None
    rows = torch.rand(m).add(0.5).half().float() if p["row_scales"] else None
    return W, fit_layer(W, p, cols, rows, iters=2, bias=torch.randn(m)).layer


FORMULA_CASES = [
    dict(transform=t, quantizer=q, levels=lv, rank=r, lr_bits=lb, group_size=g, codes=c, row_scales=rs)
    for t, q, lv, r, lb, g, c, rs in [
        ("rfft2", "polar", "uniform", 3, 8, 16, True, False),
        ("rfft2", "polar", "lloyd", 0, 16, -1, True, True),
        ("rfft2", "cartesian", "uniform", 2, 4, 7, True, False),
        ("rfft", "polar", "lloyd", 5, 16, 16, True, False),
        ("rfft", "cartesian", "uniform", 0, 8, 32, True, True),
        ("fft2", "polar", "uniform", 1, 4, 16, True, False),
        ("none", "polar", "uniform", 2, 8, 16, True, False),
        ("none", "polar", "uniform", 0, 8, -1, True, True),
        ("rfft2", "polar", "uniform", 4, 16, 16, False, False),
        ("none", "polar", "uniform", 4, 4, 16, False, False),
    ]
]


@pytest.mark.parametrize("m,n", [(24, 20), (17, 13), (16, 9)])
@pytest.mark.parametrize("case", range(len(FORMULA_CASES)))
def test_bpw_formula_equals_counted_bits(m, n, case):
    p = _params(**FORMULA_CASES[case])
    if p["quantizer"] == "cartesian":
        p["mag_bits"] = p["phase_bits"] = 3
    layer = FourierLinear(n, m, True, **p)
    formula = layer.layout.formula()
    assert layer.storage_bits() == sum(formula.values()) == Layout(m, n, p).storage_bits()
    assert layer.bits_breakdown() == formula
    assert layer.bits_per_weight() == sum(formula.values()) / (m * n)


def test_bpw_formula_by_hand():
    # rfft2, 24 x 20: h = 11; self-conjugate columns 0 and 10 keep complex rows 1..11 and real rows 0, 12.
    m, n = 24, 20
    layer = FourierLinear(n, m, **_params(rank=3, lr_bits=8, group_size=16))
    n_c = 24 * 9 + 2 * 11
    assert n_c * 2 + 4 == m * n  # m*n real degrees of freedom
    groups = 13 + 11  # rows 0 and 12..23 hold 9 entries, rows 1..11 hold 11: one group of <= 16 each
    expected = (
        (3 * 24 * 2 + 72) * 8 + 2 * 3 * 16  # low-rank reals (B's 66 padded to 72) at 8 bits + a scale per component
        + 240 * (3 + 2)  # complex codes * (b_r + b_theta), 238 padded to 240 by packing
        + 8 * 3  # 4 real codes at 3 bits, padded to 8
        + (groups + 1) * 16  # group scales (the 4 reals form one group)
        + n * 16  # ODC column scales
    )
    assert layer.storage_bits() == expected


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("transform", ["rfft2", "rfft", "fft2", "none"])
@pytest.mark.parametrize("m,n", [(24, 20), (17, 13), (16, 9)])
def test_forward_paths_match_dequantized_weight(transform, m, n, device):
    _, layer = _fit(m, n, transform=transform, row_scales=True, levels="lloyd" if transform == "rfft2" else "uniform")
    layer = layer.to(device)
    x = torch.randn(3, 5, n, device=device)
    ref = x @ layer.dequantize().T + layer.bias
    for mode in ("cached", "dequant", "spectral"):
        layer.forward_mode = mode
        y = layer(x)
        assert y.shape == (3, 5, m)
        assert ((y - ref).norm() / ref.norm()).item() < 1e-5, mode
    assert "_cache" not in "".join(layer.state_dict())  # the cached weight is not stored


def test_cache_is_dropped_on_load():
    _, a = _fit(24, 20, seed=0)
    _, b = _fit(24, 20, seed=1)
    x = torch.randn(2, 20)
    a(x)  # fills the cache
    a.load_state_dict(b.state_dict())
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("transform,quantizer,levels,lr_bits", list(itertools.product(
    ["rfft2", "rfft", "fft2"], ["polar", "cartesian"], ["uniform"], [16, 4])) + [("rfft2", "polar", "lloyd", 8),
                                                                                ("none", "polar", "uniform", 8)])
def test_save_load_into_skeleton_is_exact(transform, quantizer, levels, lr_bits, tmp_path):
    kw = dict(transform=transform, quantizer=quantizer, levels=levels, lr_bits=lr_bits, row_scales=True)
    if quantizer == "cartesian":
        kw.update(mag_bits=3, phase_bits=3)
    _, layer = _fit(17, 14, **kw)
    save_file(layer.state_dict(), tmp_path / "l.safetensors")
    skeleton = get_format("fourier").from_config(14, 17, True, layer.params())
    assert {k: (v.shape, v.dtype) for k, v in skeleton.state_dict().items()} == \
        {k: (v.shape, v.dtype) for k, v in layer.state_dict().items()}
    skeleton.load_state_dict(load_file(tmp_path / "l.safetensors"))
    assert torch.equal(skeleton.dequantize(), layer.dequantize())
    # a dtype cast of the model does not touch the stored tensors (float16 kept as int16 bits)
    before = {k: v.clone() for k, v in skeleton.named_buffers()}
    skeleton.to(torch.bfloat16)
    assert all(torch.equal(before[k], v) for k, v in skeleton.named_buffers())


def test_bad_params_are_rejected():
    with pytest.raises(ValueError, match="transform"):
        FourierLinear(8, 8, transform="dct")
    with pytest.raises(ValueError, match="even"):
        FourierLinear(8, 8, quantizer="cartesian", mag_bits=3, phase_bits=2)
    with pytest.raises(ValueError, match="lr_bits"):
        FourierLinear(8, 8, rank=2, lr_bits=3)
