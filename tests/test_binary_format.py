"""The `binary` storage format: packing round trips, skeleton from params, counted bits."""

import pytest
import torch

from llava_fa.formats.binary import BinaryLinear, BinaryParts, reconstruct, round_parts
from llava_fa.formats.registry import get_format


def _parts(out_f=12, in_f=200, bs=64, *, bitmap=True, salient=True, means=True, col=True, outliers=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    nb = -(-in_f // bs)
    G = 1 + bitmap + salient
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    bit = lambda *s: torch.rand(*s, generator=g) > 0.5  # noqa: E731
    p = BinaryParts(signs=bit(out_f, in_f), row_scales=rnd(out_f, nb, G).abs())
    if means:
        p.means = rnd(out_f, nb, G) * 0.1
    if col:
        p.col_scales = rnd(in_f).abs() + 0.5
    if salient:
        p.salient = torch.rand(in_f, generator=g) < 0.1
        p.res_signs_full = bit(out_f, in_f) & p.salient[None, :]
        p.res_scales, p.res_means = rnd(out_f, nb).abs(), rnd(out_f, nb) * 0.1
    if bitmap:
        p.bitmap = bit(out_f, in_f) & (~p.salient[None, :] if salient else True)
    if outliers:
        p.outlier_mask = torch.rand(out_f, in_f, generator=g) < outliers
        p.outlier_codes = torch.randint(1, 256, (int(p.outlier_mask.sum()),), generator=g)
        p.outlier_scales = rnd(out_f, nb).abs() * 0.01
    return p


@pytest.mark.parametrize("opts", [dict(), dict(bitmap=False), dict(salient=False, col=False),
                                  dict(means=False, outliers=0.1), dict(bitmap=False, salient=False, outliers=0.2)])
def test_round_trip_and_skeleton(opts):
    p = _parts(**opts)
    mod = BinaryLinear.from_parts(p, block_size=64, bias=torch.ones(12))
    # unpacked parts are the packed ones, floats rounded to fp16
    q, r = mod.parts(), round_parts(p)
    for name in BinaryParts.__dataclass_fields__:
        a, b = getattr(q, name), getattr(r, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a.float(), b.float()), name
    assert torch.equal(mod.dequantize(), reconstruct(r, 64))
    # the skeleton from params alone has the exact stored shapes and loads the state dict
    skel = get_format("binary").from_config(200, 12, True, mod.params())
    assert {k: v.shape for k, v in skel.state_dict().items()} == {k: v.shape for k, v in mod.state_dict().items()}
    skel.load_state_dict(mod.state_dict())
    assert torch.equal(skel.dequantize(), mod.dequantize())
    x = torch.randn(3, 200)
    for mode in ("cached", "dequant"):
        skel.forward_mode = mode
        assert torch.allclose(skel(x), x @ mod.dequantize().T + 1, atol=1e-5)


def test_counted_bits():
    p = _parts(out_f=16, in_f=200, bs=64, outliers=0.1)
    mod = BinaryLinear.from_parts(p, block_size=64)
    nb, G, n_sal, n_out = 4, 3, int(p.salient.sum()), int(p.outlier_mask.sum())
    row_bits = 16 * 25 * 8  # one packed bit per column (200 -> 25 bytes)
    expect = {"signs": row_bits, "row_scales": 16 * nb * G * 16, "means": 16 * nb * G * 16, "col_scales": 200 * 16,
              "salient_cols": 25 * 8, "res_signs": 16 * ((n_sal + 7) // 8) * 8, "res_scales": 16 * nb * 16,
              "res_means": 16 * nb * 16, "bitmap": row_bits, "outlier_mask": row_bits, "outlier_codes": n_out * 8,
              "outlier_scales": 16 * nb * 16}
    assert mod.bits_breakdown() == expect
    assert mod.storage_bits() == sum(expect.values())
    assert mod.bits_per_weight() == pytest.approx(sum(expect.values()) / (16 * 200))
    conv = mod.bpw_conventions()
    assert conv["stored"] == mod.bits_per_weight()
    masks = expect["salient_cols"] + expect["bitmap"] + expect["outlier_mask"]
    assert conv["no_masks"] == pytest.approx((sum(expect.values()) - masks) / 3200)
    # fp16 values are int16 bit patterns: a dtype cast of the module does not widen them
    assert mod.to(torch.float64).storage_bits() == mod.storage_bits()
