"""ODC option (B) of METHODS.md, measured before it is built: the nearest circulant of X^T X.

A circulant matrix is diagonal in the Fourier basis, so its eigenvalues lambda_k would weight the
spectral columns of LLaVA-FA directly (option A instead scales input channels before the
transform). Per testbed layer, with real calibration inputs, this prints:

- `circ. share`: ||C||^2 / ||H||^2, the share of H = X^T X that its nearest circulant C keeps
  (C is the orthogonal projection of H onto circulants, so the rest is ||H - C||^2);
- `diag CV` / `lambda CV`: the spread (std / mean) of what option A weights by (diag H) and of
  what option B would weight by (the eigenvalues of C): flat weights cannot steer anything;
- the activation-weighted error ||(W - W')X^T|| / ||W X^T|| of `fa` quant-only (rfft2, PolarQuant,
  the library's fit) with ODC off, with option A (calibrated), and with option B emulated here:
  spectral columns scaled by lambda_k^(alpha/2) before PolarQuant and divided after (n/2+1 more
  float16 scales, not counted in the bpw column).

    python scripts/odc_circulant_study.py [--layers 2 10 20] [--nsamples 16] > docs/results/odc_circulant_study.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_properties import act_err, testbed_layer_stats  # noqa: E402


def nearest_circulant(H: torch.Tensor) -> torch.Tensor:
    """First row c of the circulant nearest to H in Frobenius norm: c_d = mean_i H[i, (i + d) mod n]."""
    n = H.shape[0]
    idx = torch.arange(n)
    return torch.stack([H[idx, (idx + d) % n].mean() for d in range(n)])


def cv(v: torch.Tensor) -> float:
    return float(v.std() / v.mean())


def option_b(W: torch.Tensor, reference_layer, lam: torch.Tensor, alpha: float) -> torch.Tensor:
    """W' from PolarQuant of the rfft2 spectrum with its columns scaled by lambda_k^(alpha/2)."""
    from llava_fa.formats.fourier import FourierLinear
    from llava_fa.transforms import fourier as ft

    p = reference_layer.params()
    mode, n = p["transform"], W.shape[1]
    s = lam[: n // 2 + 1].clamp_min(1e-12 * lam.max()).pow(alpha / 2)
    s = (s / torch.exp(torch.log(s).mean())).half().float()  # normalized and stored as float16, like option A
    layer = FourierLinear(n, W.shape[0], **p)
    layer.set_codes(ft.forward(W, mode) * s[None, :], search=True)
    return ft.inverse(layer.codes_grid() / s[None, :], n, mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 10, 20])
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=0.5, help="as fa's odc_alpha (its default 0.5)")
    args = ap.parse_args()
    torch.manual_seed(0)
    from llava_fa.methods import build_config, get_method

    names = [f"model.language_model.layers.{i}.{proj}" for i in args.layers
             for proj in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj")]
    model, stats, described = testbed_layer_stats(names, args.nsamples)
    print(f"calibration: {described}; alpha {args.alpha}")
    print(f"{'layer':26} {'circ. share':>11} {'diag CV':>8} {'lambda CV':>9} {'bpw':>6} "
          f"{'ODC off':>8} {'A (cal.)':>8} {'B (circ.)':>9}")
    for name in names:
        W, st = model.get_submodule(name).weight.detach().float().clone(), stats[name]
        H = st.xtx_sum().double()
        c = nearest_circulant(H)
        share = float(H.shape[0] * c.pow(2).sum() / H.pow(2).sum())
        lam = torch.fft.fft(c).real.float()  # H symmetric: c_d = c_(n-d), so the eigenvalues are real
        errs, bpw = [], 0.0
        for odc in ("off", "calibrated"):
            cfg = build_config("fa", {"transform": "rfft2", "structure": "quant", "odc": odc,
                                       "odc_alpha": args.alpha})  # rfft2: as recorded
            layer = get_method("fa")(cfg).compress(W, st)
            errs.append(act_err(W, layer.dequantize(torch.float32), H.float()))
            if odc == "off":
                bpw, reference = layer.bits_per_weight(), layer
        errs.append(act_err(W, option_b(W, reference, lam, args.alpha), H.float()))
        print(f"{name.split('language_model.')[-1]:26} {share:11.3f} {cv(torch.diagonal(H)):8.2f} {cv(lam):9.2f} "
              f"{bpw:6.3f} {errs[0]:8.4f} {errs[1]:8.4f} {errs[2]:9.4f}", flush=True)


if __name__ == "__main__":
    main()
