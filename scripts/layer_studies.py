"""Layer-level studies of LLaVA-FA on real testbed weights, written to docs/results/layer_studies.json.

    python scripts/layer_studies.py [--layer 10] [--nsamples 16] [--out docs/results/layer_studies.json]

Three studies on three weights of one decoder layer (q_proj 576x576, up_proj 1536x576,
down_proj 576x1536), CPU only, no randomness (the calibration samples are drawn with seed 0):

1. spectra: singular values of W, of its full unitary spectrum fft2(W) (a check: they must equal
   those of W), of the half spectrum S = rfft2(W) (m x n//2+1, a different matrix), and of S with
   its columns scaled by sqrt(Parseval weight): the matrix FourierSVD truncates.
2. truncation + joint budget:
   a. relative Frobenius error ||W - W_r|| / ||W|| of the rank-r truncation in the spatial domain
      (Eckart-Young) and in the half-spectrum domain (FourierSVD, measured after the inverse
      transform), with the reals each rank stores;
   b. the `fa` method at a fixed budget (--bpw 3.2, the budget rule picks the largest rank that
      fits) for decreasing code bits per complex entry, so the rank grows as the codes shrink;
      rank 0 is quant-only (PolarQuant 2+4). Weight error and activation-weighted error
      ||X (W - W')^T||_F / ||X W^T||_F, X the layer's inputs on the calibration samples.
      Controls: the same with ODC calibrated, and the spatial form (transform none).
3. convergence: `fit_history` of the alternation (joint, rank 8 and 32, 10 iterations, PolarQuant
   2+4, 8-bit factors, ODC data-free), relative to ||W_s||_F (W_s the ODC-scaled weight); rank 0
   (quant-only, a single iterate) as the reference.

The JSON is written atomically (temporary file, then os.replace). Plots: scripts/plots.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from llava_fa.methods import LayerStats, build_config, get_method
from llava_fa.methods.fa import fourier_svd
from llava_fa.transforms import fourier as ft

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "layer_studies.json"
WEIGHTS = ["self_attn.q_proj", "mlp.up_proj", "mlp.down_proj"]
RANKS = [0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512, 576]
TARGET_BPW = 3.2
CONV_RANKS = [0, 8, 32]  # rank 0: the quant-only reference (one iterate)
CONV_ITERS = 10


def log(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)


# --- loading ---------------------------------------------------------------------------------------

def load_layers(layer: int, nsamples: int, seed: int) -> tuple[dict, dict, str]:
    """Weights and input statistics (X^T X, split by modality) of the studied linear layers."""
    return collect_layers([layer], WEIGHTS, nsamples, 256, seed)


def collect_layers(layers: list[int], names: list[str], nsamples: int, seqlen: int, seed: int
                   ) -> tuple[dict, dict, str]:
    """Weights and X^T X of the linears `names` of decoder `layers` ("layers.I.NAME"), calibrated as
    `llava-fa compress` does by default (--calib auto: mixed easy-VQA and WikiText-2 samples)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llava_fa.calibration.data import build_samples
    from llava_fa.calibration.stats import StatsCollector
    from llava_fa.commands.testbed import ensure_testbed

    d = ensure_testbed()
    model = LlavaForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(d)
    samples, what = build_samples(proc, "mixed", nsamples, seqlen, seed=seed, multimodal=True)
    mods = {f"layers.{i}.{w}": model.get_submodule(f"model.language_model.layers.{i}.{w}")
            for i in layers for w in names}
    image_id = model.config.image_token_id
    with StatsCollector(mods, {"xtx"}) as col, torch.no_grad():
        for s in samples:
            col.new_sample(s["input_ids"] == image_id)
            model(**s)
    weights = {k: m.weight.detach().float().clone() for k, m in mods.items()}
    return weights, col.stats, what


# --- study 1: spectra ------------------------------------------------------------------------------

def spectra(W: torch.Tensor) -> dict:
    m, n = W.shape
    S = ft.forward(W, "rfft2")
    colw = ft.column_weights(m, n, "rfft2")
    sv = {
        "spatial": torch.linalg.svdvals(W.double()),
        "fft2": torch.linalg.svdvals(torch.fft.fft2(W.double(), norm="ortho")),
        "rfft2": torch.linalg.svdvals(S.to(torch.complex128)),
        "rfft2_weighted": torch.linalg.svdvals((S * colw.sqrt()).to(torch.complex128)),
    }
    out = {k: [float(x) for x in v] for k, v in sv.items()}
    out["max_abs_diff_fft2_spatial"] = float((sv["fft2"] - sv["spatial"]).abs().max())
    return out


# --- study 2a: truncation error against rank -------------------------------------------------------

def truncation(W: torch.Tensor) -> dict:
    m, n = W.shape
    h = n // 2 + 1
    s = torch.linalg.svdvals(W.double())
    tail = torch.flip(torch.cumsum(torch.flip(s.pow(2), [0]), 0), [0])  # tail[r] = sum_{i >= r} s_i^2
    tail = torch.cat([tail, tail.new_zeros(1)])
    spatial = [r for r in RANKS if r <= min(m, n)]
    half = [r for r in RANKS if r <= min(m, h)] + ([min(m, h)] if min(m, h) not in RANKS else [])
    S, colw = ft.forward(W, "rfft2"), ft.column_weights(m, n, "rfft2")
    wn = W.norm().item()

    def half_error(r: int) -> float:
        if r == 0:
            return 1.0
        A, B = fourier_svd(S, r, colw)
        return (W - ft.inverse(A.T @ B, n, "rfft2")).norm().item() / wn

    return {
        "spatial": {"ranks": spatial, "rel_error": [float((tail[r] / tail[0]).sqrt()) for r in spatial],
                    "stored_reals": [r * (m + n) for r in spatial]},
        "rfft2": {"ranks": half, "rel_error": [half_error(r) for r in half],
                  "stored_reals": [2 * r * (m + h) for r in half]},
    }


# --- study 2b: joint form at a fixed bpw -----------------------------------------------------------

def split(total: int) -> tuple[int, int]:
    """PolarQuant (mag, phase) bits for `total` bits per complex entry (phase gets more), as in
    scripts/fa_layer_study.py."""
    mag = max(1, (total - 2) // 2)
    return mag, total - mag


def budget_points() -> list[tuple[str, dict]]:
    """(series, fa options): rank 0 (quant-only) and the budget's rank for shrinking codes."""
    pts = []
    for series, extra in (("rfft2 joint, ODC data-free", {}), ("rfft2 joint, ODC calibrated", {"odc": "calibrated"})):
        pts.append((series, {**extra, "structure": "quant", "mag_bits": 2, "phase_bits": 4}))
        for total in (6, 5, 4, 3, 2):
            mb, pb = split(total)
            pts.append((series, {**extra, "bpw": TARGET_BPW, "mag_bits": mb, "phase_bits": pb}))
    pts.append(("spatial joint (transform none), ODC data-free", {"transform": "none", "structure": "quant"}))
    for rb in (2, 1):
        pts.append(("spatial joint (transform none), ODC data-free",
                    {"transform": "none", "bpw": TARGET_BPW, "real_bits": rb}))
    return pts


def act_error(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> float:
    """||X E^T||_F / ||X W^T||_F with H = X^T X."""
    E = (W - Wq).double()
    Hd, Wd = H.double(), W.double()
    return float(torch.sqrt(torch.trace(E @ Hd @ E.T) / torch.trace(Wd @ Hd @ Wd.T)))


def joint_budget(W: torch.Tensor, stats: LayerStats) -> list[dict]:
    H = stats.xtx_sum("all")
    rows = []
    for series, opts in budget_points():
        t = time.perf_counter()
        layer = get_method("fa")(build_config("fa", {"transform": "rfft2", **opts}))  # as recorded.compress(W, stats)
        Wq = layer.dequantize()
        p = layer.params()
        key = (series, p["rank"], p["mag_bits"], p["phase_bits"], p["real_bits"])
        if any((r["series"], r["rank"], r["mag_bits"], r["phase_bits"], r["real_bits"]) == key for r in rows):
            continue  # the budget left no room for rank 1: the same layer as quant-only
        rows.append({"series": series, "options": opts, "rank": p["rank"], "bpw": layer.bits_per_weight(),
                     "mag_bits": p["mag_bits"], "phase_bits": p["phase_bits"], "real_bits": p["real_bits"],
                     "weight_rel_error": float((W - Wq).norm() / W.norm()), "act_rel_error": act_error(W, Wq, H),
                     "seconds": round(time.perf_counter() - t, 2)})
    return rows


# --- study 3: convergence of the alternation -------------------------------------------------------

def convergence(W: torch.Tensor) -> list[dict]:
    out = []
    for rank in CONV_RANKS:
        opts = {"rank": rank, "iters": CONV_ITERS, "odc": "data-free"}
        layer = get_method("fa")(build_config("fa", {"transform": "rfft2", **opts}))  # as recorded.compress(W, None)
        hist = list(layer.fit_history)
        ws = layer.scale_weight(W).norm().item()  # fit_history is the ODC-weighted error ||W_s - W_s'||
        out.append({"rank": rank, "options": opts, "bpw": layer.bits_per_weight(), "history": hist,
                    "rel_history": [e / ws for e in hist], "best": hist.index(min(hist)),
                    "weight_rel_error": float((W - layer.dequantize()).norm() / W.norm())})
    return out


# --- main ------------------------------------------------------------------------------------------

def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--nsamples", type=int, default=16, help="mixed calibration samples for X^T X")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # shared CPUs: multithreaded LAPACK stalls on contended cores
    t0 = time.perf_counter()

    weights, stats, what = load_layers(args.layer, args.nsamples, seed=0)
    log(f"loaded {list(weights)}; calibration: {what}", t0)
    result = {"meta": {"layer": args.layer, "calibration": what, "target_bpw": TARGET_BPW, "seed": 0,
                       "torch": torch.__version__, "python": platform.python_version(),
                       "tokens": {k: dict(s.tokens) for k, s in stats.items()}},
              "layers": {k: {"shape": list(W.shape)} for k, W in weights.items()},
              "spectra": {}, "truncation": {}, "joint_budget": {}, "convergence": {}}
    for name, W in weights.items():
        result["spectra"][name] = spectra(W)
        result["truncation"][name] = truncation(W)
        log(f"{name}: spectra and truncation done", t0)
        result["joint_budget"][name] = joint_budget(W, stats[name])
        log(f"{name}: joint at {TARGET_BPW} bpw done", t0)
        result["convergence"][name] = convergence(W)
        log(f"{name}: convergence done", t0)
    result["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(args.out, result)
    log(f"wrote {args.out}", t0)
    summarize(result)


def summarize(r: dict) -> None:
    for name, rows in r["joint_budget"].items():
        print(f"\n{name} {r['layers'][name]['shape']}")
        for x in rows:
            codes = (f"{x['real_bits']}b real" if x["options"].get("transform") == "none"
                     else f"{x['mag_bits']}+{x['phase_bits']} polar")
            print(f"  {x['series'][:34]:34s} rank {x['rank']:4d} bpw {x['bpw']:.3f} codes {codes:10s} "
                  f"weight {x['weight_rel_error']:.4f}  act {x['act_rel_error']:.4f}")
        for c in r["convergence"][name]:
            h = c["rel_history"]
            print(f"  convergence rank {c['rank']}: {h[0]:.4f} -> {min(h):.4f} (best {c['best'] + 1}/{len(h)})")


if __name__ == "__main__":
    main()
