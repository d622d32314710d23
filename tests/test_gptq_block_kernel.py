"""gptq's block kernel (kernels/gptq_block.py) against the column loop of quantizers/feedback.py.

The kernel repeats the loop's float32 operations in the loop's order, so codes, scales, zeros, the
rounded weight Q and the block errors must come out bit for bit equal. Under Triton's interpreter
(CPU tensors, a subprocess: the interpreter is chosen when the kernel module is imported) every
supported group layout runs, with both divisions of fit's scale (CPU torch divides by maxq, CUDA
torch multiplies by its reciprocal); where there is a GPU, on CUDA too. Without Triton only the
dispatch is checked: the column loop runs.
"""

import importlib.util

import pytest
import torch
from triton_interpreter import run_in_triton_interpreter

from llava_fa.kernels import gptq_block
from llava_fa.methods.gptq import method as gptq_method
from llava_fa.methods.gptq.method import AffineColumns, gptq_quantize
from llava_fa.quantizers import feedback, group_count, resolve_group_size
from llava_fa.quantizers.float16 import f16_up
from llava_fa.quantizers.hessian import prepare_hessian

HAS_TRITON = importlib.util.find_spec("triton") is not None

# (out, in, group_size, [(bits, sym)]): every bit width both ways for groups inside a block (32), one
# group per block (128) and one per row (-1); then a few for a short last block (200 = 128 + 72, the
# last group shorter), groups over two blocks (256 of 384) and a group starting inside a block and
# reaching past it (192 of 384: the loop runs that block, the kernel the others)
ALL = [(b, s) for b in (2, 3, 4) for s in (False, True)]
SHAPES = [(64, 256, 32, ALL), (64, 256, 128, ALL), (64, 256, -1, ALL), (40, 200, 32, [(3, False), (4, True)]),
          (48, 384, 256, [(4, False)]), (64, 384, 192, [(2, True)])]
# the scale's division as CUDA does it only changes the fits inside the kernel (groups of 32)
RECIPROCAL_SHAPES = [(64, 256, 32, [(2, False), (3, True), (4, False)]), (40, 200, 32, [(3, False)])]


def problem(out_f: int, in_f: int, device: str = "cpu"):
    """A weight with an outlier input channel, a dead input and a few rows on float16 boundaries, and
    a real Hessian X^T X."""
    g = torch.Generator().manual_seed(out_f * in_f)
    W = torch.randn(out_f, in_f, generator=g) * 0.02
    W[:, 3] *= 10
    # Rows whose first 32 columns span [0, maxq * h] for a float16 h: fit's (hi - lo) / maxq is h when
    # divided (CPU torch), a float32 step above when multiplied by 1/maxq (CUDA torch), and so a
    # float16 step above once rounded up: the scale differs unless the kernel divides as torch does.
    for r, (maxq, h) in enumerate([(7, 0.002605438232421875), (15, 0.003749847412109375)] * 3):
        W[r, :32] = torch.rand(32, generator=g) * (maxq * h)
        W[r, 7] = maxq * h
        W[r, 0] = 2.5 * h  # with scale h and zero 0 (asym): a tie, which torch.round rounds to even
    X = torch.randn(4 * in_f, in_f, generator=g) @ (torch.eye(in_f) + 0.1 * torch.randn(in_f, in_f, generator=g))
    X[:, 5] = 0  # a dead input: zeroed column, H_jj = 1
    return W.to(device), (X.T @ X).to(device)


def run_loop(W, H, bits, sym, group_size, fused: bool, block_size: int = 128):
    """gptq_quantize's steps, keeping Q and each block's errors (the kernel's outputs) as well."""
    prepared = prepare_hessian(W, H, 0.01)
    Wp, U = prepared.weight, prepared.hinv_chol
    n = Wp.shape[1]
    g = resolve_group_size(group_size, n)
    rounder = AffineColumns(Wp.shape[0], (torch.arange(n) // g).tolist(), group_count(n, g), bits, sym, Wp.device)
    if not fused:
        rounder.fused_block = lambda *args: None
    errors = []
    inner = feedback._round_columns

    def keep(*args):
        errors.append(inner(*args))
        return errors[-1]

    feedback._round_columns = keep
    try:
        Q = feedback.feedback_quantize(Wp, U, rounder, block_size=block_size, group_size=g)
    finally:
        feedback._round_columns = inner
    return rounder, Q, errors


def cuda_like_fit(w, bits, sym=False):
    """quantizers.affine.fit as it runs on CUDA, where torch divides by the Python int maxq as a
    multiplication by its float32 reciprocal."""
    maxq = (1 << bits) - 1
    w = w.float()
    lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
    if sym:
        hi = torch.maximum(-lo, hi)
        hi = torch.where(hi == 0, torch.ones_like(hi), hi)
        lo = -hi
    else:
        hi = torch.where(hi == lo, torch.ones_like(hi), hi)
    scale = f16_up((hi - lo) * (torch.tensor(1.0) / maxq).to(w.device))
    zero = torch.full_like(scale, (maxq + 1) // 2) if sym else torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def count_kernel_calls() -> list:
    """Count affine_block's launches (the list grows by one per block the kernel ran)."""
    calls, launch = [], gptq_block.affine_block

    def counted(*args, **kwargs):
        calls.append(kwargs["group"])
        return launch(*args, **kwargs)

    gptq_block.affine_block = counted
    return calls


def check_kernel_matches_loop(device: str = "cpu", reciprocal: bool = False) -> None:
    """Kernel and loop on SHAPES: equal codes, scales, zeros, Q and errors. `reciprocal`: force the
    scale's division of CUDA torch on the kernel and the loop (on CPU tensors, for the interpreter)."""
    if reciprocal:
        gptq_block.divides_by_reciprocal = lambda x: True
        gptq_method.fit = cuda_like_fit
    if device == "cpu":
        gptq_block.BLOCK_ROWS = 32  # 2 programs per block, not 4: the interpreter runs them one by one
    calls = count_kernel_calls()
    for out_f, in_f, group_size, variants in RECIPROCAL_SHAPES if reciprocal else SHAPES:
        W, H = problem(out_f, in_f, device)
        for bits, sym in variants:
            case = (out_f, in_f, group_size, bits, sym)
            before = len(calls)
            ref, Q_ref, e_ref = run_loop(W, H, bits, sym, group_size, fused=False)
            assert len(calls) == before, case
            got, Q, e = run_loop(W, H, bits, sym, group_size, fused=True)
            blocks = -(-in_f // 128)
            assert len(calls) - before == (blocks - 1 if group_size == 192 else blocks), case
            assert torch.equal(got.codes, ref.codes), (case, (got.codes != ref.codes).float().mean().item())
            assert torch.equal(got.scale, ref.scale) and torch.equal(got.zero, ref.zero), case
            assert torch.equal(Q, Q_ref), (case, (Q - Q_ref).abs().max().item())
            for a, b in zip(e, e_ref, strict=True):
                assert torch.equal(a, b), (case, (a - b).abs().max().item())
    assert 32 in calls and (reciprocal or 0 in calls)  # the group layouts ran


def test_groups_the_kernel_takes():
    k = gptq_block.kernel_groups
    assert k(0, 128, 256, 32) == 32 and k(128, 72, 200, 32) == 32  # groups inside (a short last group)
    assert k(0, 128, 256, 128) == 0 and k(128, 128, 384, 256) == 0 and k(0, 128, 4096, 4096) == 0
    assert k(0, 128, 384, 96) is None and k(128, 128, 384, 96) is None  # 96..192, 192..288 straddle
    assert k(0, 128, 384, 192) == 0 and k(128, 128, 384, 192) is None and k(256, 128, 384, 192) == 0
    assert k(0, 128, 3420, 3420) == 0 and k(3328, 92, 3420, 128) == 0  # a width the groups do not divide
    assert k(0, 128, 256, None) is None  # act-order: the loop fits nothing, the rounder's static groups


def test_cpu_without_the_interpreter_runs_the_loop(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    calls = []
    monkeypatch.setattr(gptq_block, "affine_block", lambda *a, **k: calls.append(1))
    W, H = problem(32, 256)
    codes, scale, zero = gptq_quantize(W, H, bits=4, group_size=32)
    assert not calls and codes.shape == (32, 256) and scale.shape == zero.shape == (32, 8)
    rounder = AffineColumns(32, [j // 32 for j in range(256)], 8, 4, False, W.device)
    assert rounder.fused_block(W, W[:, :128].clone(), torch.eye(256), torch.zeros_like(W), 0, 32) is None


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (CPU build of torch)")
@pytest.mark.parametrize("reciprocal", [False, True])
def test_kernel_in_the_triton_interpreter(reciprocal):
    run_in_triton_interpreter("import test_gptq_block_kernel as t; "
                              f"t.check_kernel_matches_loop('cpu', reciprocal={reciprocal})")


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and Triton")
def test_kernel_on_cuda(monkeypatch):
    monkeypatch.setattr(gptq_block, "affine_block", gptq_block.affine_block)  # restored after the counting
    check_kernel_matches_loop("cuda")
