"""fa-gptq's input-axis segment kernel (kernels/fa_gptq_segment.py) against the torch loop of input_axis.py.

The kernel repeats the loop's float32 operations in the loop's order, so magnitude and phase codes
(and so scales and every later segment) must come out equal, Q and the segment errors equal to the
last bits. Under Triton's interpreter (CPU tensors, a subprocess: the interpreter is chosen when the
kernel module is imported) on shapes whose rows are no multiple of BLOCK_ROWS and whose last group
is shorter; where there is a GPU, on CUDA too. Without Triton only the dispatch and the loop's
PolarQuant rounding are checked.
"""

import importlib.util
import math

import pytest
import torch
from triton_interpreter import run_in_triton_interpreter

from llava_fa.kernels import fa_gptq_segment
from llava_fa.methods import build_config
from llava_fa.methods.fa_gptq import input_axis as ia
from llava_fa.quantizers.hessian import prepare_hessian
from llava_fa.quantizers.polar import polar_round, uniform_levels

HAS_TRITON = importlib.util.find_spec("triton") is not None

# (out, in, group_size, identity Hessian, [(mag_bits, phase_bits, levels)]): rows are no multiple of
# the programs' 32 (the interpreter runs programs one by one: small shapes); n = 90 has DC and
# Nyquist and 44 pairs (groups of 16, the last of 12), n = 61 only DC and 30 pairs (groups of 12, the
# last of 6). With H = I nothing is fed back, so the zero row stays 0: every direction ties.
SHAPES = [(40, 90, 16, False, [(2, 4, "lloyd"), (3, 3, "uniform")]),
          (37, 61, 12, False, [(2, 4, "uniform"), (1, 5, "lloyd")]), (9, 40, 8, True, [(2, 4, "uniform")])]


def problem(out_f: int, in_f: int, device: str = "cpu", identity: bool = False):
    """A weight with an outlier input and an all-zero row (z = 0 before feedback), and a correlated
    Hessian (or the identity)."""
    g = torch.Generator().manual_seed(out_f * in_f)
    W = torch.randn(out_f, in_f, generator=g) * 0.02
    W[:, 3] *= 10
    W[5] = 0
    X = torch.randn(3 * in_f, in_f, generator=g) @ (torch.eye(in_f) + 0.3 * torch.randn(in_f, in_f, generator=g))
    H = torch.eye(in_f) if identity else X.T @ X
    prepared = prepare_hessian(W.to(device), H.to(device), 0.01)
    return prepared.weight, prepared.hessian


def run(W, H, params, kernel: bool):
    """input_axis_codes with the kernel where it runs (or the loop everywhere); also each complex
    segment's errors and how many segments the kernel ran."""
    errors, launches = [], []
    loop, launch, can_run = ia.pair_steps, fa_gptq_segment.pair_segment, fa_gptq_segment.can_run

    def loop_kept(*args):
        errors.append(loop(*args))
        return errors[-1]

    def launch_kept(*args):
        launches.append(1)
        errors.append(launch(*args))
        return errors[-1]

    ia.pair_steps, fa_gptq_segment.pair_segment = loop_kept, launch_kept
    if not kernel:
        fa_gptq_segment.can_run = lambda *a: False
    try:
        codes, Q = ia.input_axis_codes(W, H, params, 0.01)
    finally:
        ia.pair_steps, fa_gptq_segment.pair_segment, fa_gptq_segment.can_run = loop, launch, can_run
    return codes, Q, errors, len(launches)


def check_kernel_matches_loop(device: str = "cpu") -> None:
    if device == "cpu":
        fa_gptq_segment.BLOCK_ROWS = 32  # 2 programs per segment, not 3: the interpreter runs them one by one
    for out_f, in_f, group, identity, variants in SHAPES:
        W, H = problem(out_f, in_f, device, identity)
        for mag_bits, phase_bits, levels in variants:
            case = (out_f, in_f, group, mag_bits, phase_bits, levels)
            params = build_config("fa-gptq", {"group_size": group, "mag_bits": mag_bits, "phase_bits": phase_bits,
                                              "levels": levels}).layer_params()
            ref, Q_ref, e_ref, none = run(W, H, params, kernel=False)
            got, Q, e, launches = run(W, H, params, kernel=True)
            assert none == 0 and launches == len(e) == len(e_ref) == math.ceil((in_f - 1) // 2 / group), case
            for key in ("mag_codes", "phase_codes", "mag_scales", "real_codes", "real_scales"):
                a, b = getattr(got, key), getattr(ref, key)
                assert torch.equal(a, b), (case, key, (a != b).float().mean().item())
            torch.testing.assert_close(Q, Q_ref, rtol=0, atol=1e-6, msg=lambda m: f"{case} Q: {m}")
            for a, b in zip(e, e_ref, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=lambda m: f"{case} errors: {m}")


def test_the_loops_pair_rounding_is_polarquants():
    """pair_round (a search over a table of directions, no atan2) picks polar_round's codes and
    values on random pairs, on the axes (directions themselves) and at 0 (phase 0). Exact ties may
    differ, both choices equally near: -1j at 1 phase bit (atan2's -pi/2 rounds to the even code 0,
    the search keeps phase 0, tried first), 2 + 2j at 2 bits (the table's float32 pi/2 is a hair
    below pi/2, so the search takes it, atan2 the even code of phase 0)."""
    g = torch.Generator().manual_seed(0)
    z = torch.complex(torch.randn(4000, generator=g), torch.randn(4000, generator=g))
    axes = torch.tensor([0, 1, -1, 1j, -1j, 0], dtype=torch.complex64)
    z = torch.cat([z, axes])
    scale = torch.rand(z.numel(), generator=g) * 2 + 0.5
    for mag_bits, phase_bits in ((2, 4), (3, 3), (1, 2), (2, 5)):
        levels = uniform_levels(mag_bits)
        mag, phase, re, im = ia.pair_round(z.real, z.imag, scale, levels, ia.direction_table(phase_bits))
        mag_ref, phase_ref, values = polar_round(z, scale, levels, phase_bits)
        assert torch.equal(phase, phase_ref) and torch.equal(mag, mag_ref), (mag_bits, phase_bits)
        torch.testing.assert_close(torch.complex(re, im), values, rtol=0, atol=1e-6)
    assert phase[-1] == 1 << (phase_bits - 1)  # z = 0: phase 0, as torch.angle(0) gives


def test_cpu_without_the_interpreter_runs_the_loop(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    calls = []
    monkeypatch.setattr(fa_gptq_segment, "pair_segment", lambda *a, **k: calls.append(1))
    W, H = problem(24, 64)
    params = build_config("fa-gptq", {"group_size": 8}).layer_params()
    codes, Q = ia.input_axis_codes(W, H, params, 0.01)
    assert not calls and codes.mag_codes.numel() == 24 * 31 and Q.shape == (24, 64)
    assert not fa_gptq_segment.can_run(W, H, 16)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (CPU build of torch)")
def test_kernel_in_the_triton_interpreter():
    run_in_triton_interpreter("import test_fa_gptq_segment_kernel as t; t.check_kernel_matches_loop('cpu')")


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and Triton")
def test_kernel_on_cuda():
    check_kernel_matches_loop("cuda")
