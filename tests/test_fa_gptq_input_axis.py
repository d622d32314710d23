"""`fa-gptq -O axis=input`: error feedback on the input-axis spectrum (transform rfft) in the real DFT basis."""

import math
import sys
from pathlib import Path

import pytest
import torch

import compress_fixtures as F
from llava_fa.formats.fourier import FourierLinear
from llava_fa.methods import LayerStats, build_config, get_method
from llava_fa.methods.fa_gptq import input_axis as ia
from llava_fa.transforms import fourier as ft

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(m=64, n=256, tokens=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g) * 0.02
    # correlated inputs: the case where pushing errors onto later columns pays
    x = torch.randn(tokens, n // 4, generator=g) @ torch.randn(n // 4, n, generator=g)
    x = x + 0.1 * torch.randn(tokens, n, generator=g)
    return W, LayerStats(n, xtx={"text": x.T @ x}, sq={"text": (x * x).sum(0)}, tokens={"text": tokens, "image": 0})


def _out_err(W, Q, H):
    """tr(E H E^T) / tr(W H W^T), E = W - Q."""
    D, Hd, Wd = (W - Q).double(), H.double(), W.double()
    return float(((D @ Hd) * D).sum() / ((Wd @ Hd) * Wd).sum())


def _compress(W, stats, method="fa-gptq", bias=None, **opts):
    return get_method(method)(build_config(method, opts)).compress(W, stats, bias=bias)


# --- (a) the basis --------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [8, 9, 64])
def test_the_real_dft_basis_is_orthonormal_and_maps_the_rfft_grid(n):
    T = ia.real_dft_basis(n)
    torch.testing.assert_close(T @ T.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-13)
    j, s = torch.arange(n, dtype=torch.float64), ia.split(n)[0]
    # loop order [DC, Nyquist (even n), Re_1, Im_1, ...]: cos rows, minus sin rows, scaled by sqrt(2/n)
    torch.testing.assert_close(T[0], torch.full((n,), n ** -0.5, dtype=torch.float64))
    if n % 2 == 0:
        torch.testing.assert_close(T[1], (-1.0) ** j * n ** -0.5)
    for k in (1, (n - 1) // 2):
        torch.testing.assert_close(T[s + 2 * k - 2], math.sqrt(2 / n) * torch.cos(2 * math.pi * j * k / n))
        torch.testing.assert_close(T[s + 2 * k - 1], -math.sqrt(2 / n) * torch.sin(2 * math.pi * j * k / n))
    g = torch.Generator().manual_seed(n)
    W = torch.randn(6, n, generator=g, dtype=torch.float64)
    C = W @ T.T
    torch.testing.assert_close(C @ T, W)  # W = C T
    torch.testing.assert_close(C.norm(), W.norm())  # Parseval
    # C in stored units (C D^-1) is the rfft grid; the grid through the format's inverse is W again
    Cs = ia.stored_columns(W)
    torch.testing.assert_close(Cs * ia.parseval_weights(n).sqrt(), C)
    grid = ia.from_columns(Cs, n)
    torch.testing.assert_close(grid, torch.fft.rfft(W, dim=1, norm="ortho"))
    torch.testing.assert_close(ft.inverse(grid, n, "rfft").double(), W, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n", [8, 9, 64])
def test_the_layer_loss_is_the_same_in_the_spectral_basis(n):
    g = torch.Generator().manual_seed(n)
    X = torch.randn(3 * n, n, generator=g, dtype=torch.float64)
    H, E = X.T @ X, torch.randn(5, n, generator=g, dtype=torch.float64)
    T = ia.real_dft_basis(n)
    Hp = T @ H @ T.T  # H' = T H T^T, real symmetric
    torch.testing.assert_close(Hp, Hp.T)
    loss = torch.trace(E @ H @ E.T)
    EC = E @ T.T
    torch.testing.assert_close(torch.trace(EC @ Hp @ EC.T), loss)
    Es, Hs = ia.stored_columns(E), ia.spectral_hessian(H)  # what the loop uses: D H' D in stored units
    torch.testing.assert_close(torch.trace(Es @ Hs @ Es.T), loss)
    w = ia.parseval_weights(n).sqrt()
    torch.testing.assert_close(Hs, w[:, None] * Hp * w[None, :])


# --- (b) no feedback: plain PolarQuant --------------------------------------------------------------

def test_an_identity_hessian_gives_exactly_plain_polarquant():
    """H = I: H_s is diagonal, no error is pushed anywhere, and each group's scale is the one plain
    PolarQuant (fa's rounding without scale search) picks, so the stored buffers agree bit for bit."""
    W, _ = _problem(m=48, n=200)  # 99 complex frequencies: the last group of 64 is shorter
    n = W.shape[1]
    layer = _compress(W, LayerStats(n, xtx={"text": torch.eye(n)}, tokens={"text": 1, "image": 0}), axis="input")
    plain = FourierLinear(n, 48, False, **layer.params())
    plain.set_codes(ft.forward(W, "rfft"))
    assert layer.mode == "rfft" and layer.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(layer.state_dict()[key], value), key


# --- (c) feedback lowers the output error ----------------------------------------------------------

def test_input_axis_beats_fa_quant_only_on_correlated_inputs():
    """Synthetic W with correlated X (the test that runs without the testbed)."""
    W, stats = _problem()
    H = stats.xtx_sum()
    fed = _compress(W, stats, axis="input")
    fa = _compress(W, stats, "fa", structure="quant", transform="rfft", mag_bits=2, phase_bits=4)
    assert _out_err(W, fed.dequantize(), H) < 0.5 * _out_err(W, fa.dequantize(), H)
    assert fed.bits_per_weight() < fa.bits_per_weight()  # fa's ODC column scales cost extra bits


def test_input_axis_beats_fa_quant_only_on_a_real_layer():
    """A SmolLM2 layer of the testbed with its real calibration Hessian (8 mixed samples)."""
    from llava_fa.commands.testbed import default_testbed_dir

    if not (default_testbed_dir() / "config.json").exists():
        pytest.skip("the testbed is not built (`llava-fa testbed build`); the synthetic test above stands in")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from baseline_properties import testbed_layer_stats

    name = "model.language_model.layers.2.self_attn.q_proj"
    model, stats, _ = testbed_layer_stats([name], 8, seqlen=128)
    W, st = model.get_submodule(name).weight.detach().float().clone(), stats[name]
    H = st.xtx_sum()
    for bits in (2, 3):
        fed = _compress(W, st, axis="input", mag_bits=bits, phase_bits=3)
        fa = _compress(W, st, "fa", structure="quant", transform="rfft", mag_bits=bits, phase_bits=3)
        assert _out_err(W, fed.dequantize(), H) < 0.8 * _out_err(W, fa.dequantize(), H)


# --- (d) the stored codes, the checkpoint ------------------------------------------------------------

def test_the_stored_codes_are_the_loops_and_the_layer_round_trips():
    W, stats = _problem(m=32, n=128)
    method = get_method("fa-gptq")(build_config("fa-gptq", {"axis": "input"}))
    layer = method.compress(W, stats, bias=torch.randn(32))
    # the loop's own rounded columns, through the inverse transform, are the stored layer's weight
    from llava_fa.quantizers.hessian import prepare_hessian

    prepared = prepare_hessian(W, stats.hessian("all"), method.config.damp)
    _, Q = ia.input_axis_codes(prepared.weight, prepared.hessian, layer.params(), method.config.damp)
    torch.testing.assert_close(layer.dequantize(), ft.inverse(ia.from_columns(Q, 128), 128, "rfft"), rtol=0, atol=1e-6)
    x = torch.randn(3, 128)
    ref = x @ layer.dequantize().T + layer.bias
    again = FourierLinear(128, 32, True, **layer.params())
    again.load_state_dict(layer.state_dict())
    assert torch.equal(again.dequantize(), layer.dequantize())
    for mode in ("cached", "dequant", "spectral"):
        again.forward_mode = mode
        torch.testing.assert_close(again(x), ref, rtol=1e-4, atol=1e-5)


def test_a_checkpoint_of_input_axis_layers_saves_and_loads(tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llava_fa.io.checkpoint import load_model, quantization_config, save_compressed
    from llava_fa.pipeline import compress_model
    from llava_fa.selection import default_patterns, find_parts, select

    F.save_llava_dir(tmp_path / "dense")
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "dense").eval()
    names = select(model, *default_patterns(find_parts(model)))
    meth = get_method("fa-gptq")(build_config("fa-gptq", {"axis": "input", "mag_bits": 6, "phase_bits": 6,
                                                          "group_size": 32}))
    rows = compress_model(model, meth, names, [F.llava_inputs(seed=0), F.text_inputs(seed=1)])
    assert all(r.format == "fourier" and r.act_error < 0.05 for r in rows)
    qc = quantization_config(model, "fa-gptq", meth.config.to_dict(), ["Linear"], [])
    loaded = load_model(save_compressed(model, tmp_path / "q", qc, AutoProcessor.from_pretrained(tmp_path / "dense")))
    inputs = F.llava_inputs(seed=3)
    for n in names:
        a, b = loaded.get_submodule(n), model.get_submodule(n)
        assert a.params() == b.params() and a.mode == "rfft" and torch.equal(a.dequantize(), b.dequantize())
    with torch.no_grad():
        ref = model(**inputs).logits
        torch.testing.assert_close(loaded(**inputs).logits, ref)
        for n in names:
            loaded.get_submodule(n).forward_mode = "spectral"
        torch.testing.assert_close(loaded(**inputs).logits, ref, rtol=1e-4, atol=1e-4)


# --- (e) determinism, the default ---------------------------------------------------------------------

def test_two_runs_are_bit_identical_and_the_default_axis_is_input():
    W, stats = _problem(m=32, n=128)
    a, b = (_compress(W, stats, axis="input").state_dict() for _ in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    default, output = _compress(W, stats), _compress(W, stats, axis="output")
    assert default.mode == "rfft" and output.mode == "rfft_out"
    assert all(torch.equal(v, a[k]) for k, v in default.state_dict().items())
