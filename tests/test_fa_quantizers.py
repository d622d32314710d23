"""PolarQuant, the cartesian and real controls, groups and float16 storage."""

import math

import pytest
import torch

from llava_fa.quantizers.polar import (cartesian_dequantize, cartesian_quantize, flat_groups, flat_groups_count,
                                       from_bits, lloyd_levels, phase_values, polar_dequantize, polar_quantize,
                                       row_groups, row_groups_count, sym_dequantize, sym_quantize, to_bits,
                                       uniform_levels)


def _z(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(n, generator=g), torch.randn(n, generator=g))


def _rel(a, b):
    return ((a - b).abs().norm() / b.abs().norm()).item()


def test_groups_stay_in_rows_and_counts_agree():
    rows = torch.tensor([5, 3, 0, 4])  # entries per row
    g = row_groups(rows, 2)
    assert g.gid.tolist() == [0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 6]
    assert g.count == row_groups_count([5, 3, 0, 4], 2) == 7
    alike = row_groups(torch.tensor([4, 4, 4]), 3)  # every row alike: the broadcast path
    assert alike.gid.tolist() == [0, 0, 0, 1, 2, 2, 2, 3, 4, 4, 4, 5] and alike.count == 6
    whole = row_groups(rows, -1)
    assert whole.gid.tolist() == [0] * 5 + [1] * 3 + [2] * 4 and whole.count == row_groups_count([5, 3, 0, 4], -1)
    f = flat_groups(10, 4)
    assert f.gid.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2] and f.count == flat_groups_count(10, 4) == 3
    assert flat_groups(5, -1).count == flat_groups_count(5, -1) == 1


def test_float16_bits_round_trip():
    x = torch.tensor([0.1, 1.5, -3.25, 1e-3])
    assert to_bits(x).dtype == torch.int16
    torch.testing.assert_close(from_bits(to_bits(x)), x.half().float())


@pytest.mark.parametrize("levels", ["uniform", "lloyd"])
def test_polar_codes_ranges_and_stored_values(levels):
    z = _z()
    groups = flat_groups(z.numel(), 64)
    q = polar_quantize(z, groups, 3, 2, levels)
    assert 0 <= q.mag.min() and q.mag.max() < 8 and 0 <= q.phase.min() and q.phase.max() < 4
    assert torch.equal(q.scale, q.scale.half().float()) and torch.equal(q.levels, q.levels.half().float())
    assert torch.all(q.levels[1:] >= q.levels[:-1])
    zh = polar_dequantize(q.mag, q.phase, q.scale, q.levels, groups, 2)
    # phase error at most half a step; real numbers stay real (0 and -pi are levels)
    dphi = torch.remainder(torch.angle(zh) - torch.angle(z) + math.pi, 2 * math.pi) - math.pi
    assert dphi.abs().max() <= math.pi / 4 + 1e-5
    real = torch.tensor([1.5, -0.5, 2.0], dtype=torch.complex64)
    qr = polar_quantize(real, flat_groups(3, -1), 3, 2)
    assert polar_dequantize(qr.mag, qr.phase, qr.scale, qr.levels, flat_groups(3, -1), 2).imag.abs().max() < 1e-6
    assert phase_values(torch.tensor([0, 2]), 2).tolist() == pytest.approx([-math.pi, 0.0])


@pytest.mark.parametrize("kind", ["polar", "cartesian", "real"])
def test_error_falls_with_bits(kind):
    z = _z()
    groups = flat_groups(z.numel(), 64)
    errs = []
    for b in (1, 2, 3, 4, 6, 8):
        if kind == "polar":
            q = polar_quantize(z, groups, b, b)
            zh = polar_dequantize(q.mag, q.phase, q.scale, q.levels, groups, b)
        elif kind == "cartesian":
            re, im, step = cartesian_quantize(z, groups, b)
            zh = cartesian_dequantize(re, im, step, groups, b)
        else:
            codes, step = sym_quantize(z.real, groups, b)
            assert 0 <= codes.min() and codes.max() < (1 << b)
            errs.append(_rel(sym_dequantize(codes, step, groups, b), z.real))
            continue
        errs.append(_rel(zh, z))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.02, errs


def test_lloyd_levels_beat_uniform_on_rayleigh_magnitudes():
    z = _z(8192)
    groups = flat_groups(z.numel(), 64)
    err = {}
    for levels in ("uniform", "lloyd"):
        q = polar_quantize(z, groups, 2, 4, levels)
        err[levels] = _rel(polar_dequantize(q.mag, q.phase, q.scale, q.levels, groups, 4), z)
    assert err["lloyd"] < err["uniform"]
    u = torch.rand(1000)
    lv = lloyd_levels(u, 2)
    assert lv.shape == (4,) and torch.all(lv[1:] > lv[:-1]) and lv.min() >= 0 and lv.max() <= 1
    assert torch.equal(uniform_levels(2), torch.tensor([0.125, 0.375, 0.625, 0.875]))


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_scale_search_is_never_worse_than_absmax(bits):
    z = _z(2048, seed=bits)
    groups = flat_groups(z.numel(), 64)
    for search in (False, True):
        q = polar_quantize(z, groups, bits, 2, search=search)
        zp = polar_dequantize(q.mag, q.phase, q.scale, q.levels, groups, 2)
        re, im, step = cartesian_quantize(z, groups, bits, search=search)
        zc = cartesian_dequantize(re, im, step, groups, bits)
        codes, rstep = sym_quantize(z.real, groups, bits, search=search)
        zr = sym_dequantize(codes, rstep, groups, bits)
        per_group = [torch.zeros(groups.count).index_add(0, groups.gid, (a - b).abs().pow(2))
                     for a, b in ((zp, z), (zc, z), (zr, z.real))]
        if not search:
            plain = per_group
    for a, b in zip(per_group, plain):
        assert torch.all(a <= b * (1 + 1e-6))
    # 1-bit absmax codes of Gaussian data err by more than the data; the search fixes that
    assert _rel(zr, z.real) < 0.7


def test_sums_by_group_and_lloyd_cells_match_a_float64_reference():
    """group_sum (segment sums) and lloyd_levels (sorted cells) replace index_add, whose CUDA sums
    follow the order of atomics; their values are the plain sums, to float32 rounding."""
    from llava_fa.quantizers.polar import group_sum, nearest_level, row_groups, uniform_levels

    torch.manual_seed(0)
    groups = row_groups(torch.tensor([100, 37, 0, 64, 129]), 64)
    values = torch.rand(groups.gid.numel())
    ref = torch.zeros(groups.count, dtype=torch.float64).index_add(0, groups.gid, values.double())
    assert torch.allclose(group_sum(values, groups).double(), ref, rtol=1e-6)
    u = torch.rand(50001) ** 2
    levels = uniform_levels(3)
    for _ in range(30):  # the textbook Lloyd iteration, in float64
        idx = nearest_level(u, levels)
        sums = torch.zeros(8, dtype=torch.float64).index_add(0, idx, u.double())
        cnt = torch.bincount(idx, minlength=8).double()
        levels = torch.where(cnt > 0, sums / cnt.clamp_min(1), levels.double()).float()
    got = lloyd_levels(u, 3)
    assert (got - levels).abs().max() < 1e-3  # float16-rounded levels
