"""Where does the Fourier domain help? LLaVA-FA variants against controls on real testbed weights.

For three weights of the testbed's language model and budgets of about 2, 3 and 4 bits per weight,
prints the relative error ||W - W'||_F / ||W||_F of each variant with its exact counted bpw (every
stored bit: codes, scales, low-rank factors, ODC scales). No calibration data is used, so the
error is the plain weight error (ODC data-free changes the fit's weighting, not this metric).

Variants at budget b (b-bit codes per real degree of freedom; fa defaults unless said: Lloyd
magnitude levels, per-group clipping search of the scales, group 64):
  rtn               per-group asymmetric min/max RTN, b bits, group 64 (the toolkit's baseline)
  none              spatial control: the fa pipeline on W itself, b-bit symmetric codes
  absmax            without the clipping search (scales = group absmax)
  none g128         groups of 128 reals: the scale overhead of 64 complex entries, so equal bpw
  rfft2 polar       half 2-D spectrum, PolarQuant (b-1)+(b+1) bits per complex entry (= b per real)
  rfft2 polar b+b   the equal split b+b
  rfft2 polar unif  uniform magnitude levels
  rfft2 cart        cartesian codes, b bits for the real and b for the imaginary part
  rfft polar        1-D spectrum along the input axis
  fft2 polar        full spectrum (twice the reals), b bits per complex entry to match the bpw
  pairs polar       no transform: adjacent columns of W paired as complex numbers, PolarQuant as
                    rfft2 polar (separates the 2-D quantizer's gain from the transform's)
  +odc              data-free ODC column scales
  joint             codes with 2(b-1) bits per complex entry + low rank (8-bit factors), the rank
                    filling the bpw of `rfft2 polar`
  lowrank           low-rank part only, same bpw

Run:  python scripts/fa_layer_study.py [--layers 10] [--iters 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from safetensors import safe_open

from llava_fa.methods import build_config, get_method
from llava_fa.paths import cache_dir
from llava_fa.quantizers.polar import polar_dequantize, polar_quantize, row_groups

WEIGHTS = ["self_attn.q_proj", "mlp.down_proj", "mlp.up_proj"]


def rel_error(W: torch.Tensor, layer) -> float:
    return ((W - layer.dequantize()).norm() / W.norm()).item()


def run(method: str, W: torch.Tensor, **opts):
    t0 = time.perf_counter()
    layer = get_method(method)(build_config(method, opts)).compress(W, None)
    return layer, time.perf_counter() - t0


def paired_polar(W: torch.Tensor, mag_bits: int, phase_bits: int, group_size: int = 64) -> tuple[float, float]:
    """Control without any transform: adjacent columns of W paired into complex numbers and
    PolarQuant-ed like the spectrum (Lloyd levels, clipping search, groups of 64 in a row).
    Returns (bpw, relative error); it separates the 2-D quantizer's gain from the DFT's."""
    m, n = W.shape
    z = torch.complex(W[:, 0::2], W[:, 1::2]).reshape(-1)
    groups = row_groups(torch.arange(m).repeat_interleave(n // 2), group_size)
    q = polar_quantize(z, groups, mag_bits, phase_bits, "lloyd", search=True)
    zh = polar_dequantize(q.mag, q.phase, q.scale, q.levels, groups, phase_bits)
    bits = z.numel() * (mag_bits + phase_bits) + 16 * (groups.count + (1 << mag_bits))
    return bits / (m * n), ((zh - z).abs().norm() / z.abs().norm()).item()


class _Paired:
    """Stand-in for a layer in the table."""

    def __init__(self, W, mb, pb):
        self.bpw, self.err = paired_polar(W, mb, pb)
        self.mb, self.pb = mb, pb

    def params(self):
        return {"transform": "pairs", "mag_bits": self.mb, "phase_bits": self.pb, "rank": 0}

    def bits_per_weight(self):
        return self.bpw


def split(total: int) -> tuple[int, int]:
    """PolarQuant (mag, phase) bits for `total` bits per complex entry: phase gets 2 more (>= 1 each)."""
    mag = max(1, (total - 2) // 2)
    return mag, total - mag


def variants(b: int) -> list[tuple[str, str, dict]]:
    q = {"transform": "rfft2", "structure": "quant", "odc": "off"}  # rfft2: the rows named so; as recorded
    mb, pb = split(2 * b)
    return [
        ("rtn", "rtn", {"bits": b, "group_size": 64}),
        ("none", "fa", {**q, "transform": "none", "real_bits": b}),
        ("none absmax", "fa", {**q, "transform": "none", "real_bits": b, "scale_search": False}),
        ("none g128", "fa", {**q, "transform": "none", "real_bits": b, "group_size": 128}),
        ("none +odc", "fa", {**q, "transform": "none", "real_bits": b, "odc": "data-free"}),
        ("rfft2 polar", "fa", {**q, "mag_bits": mb, "phase_bits": pb}),
        ("rfft2 polar b+b", "fa", {**q, "mag_bits": b, "phase_bits": b}),
        ("rfft2 polar unif", "fa", {**q, "mag_bits": mb, "phase_bits": pb, "levels": "uniform"}),
        ("rfft2 polar absmax", "fa", {**q, "mag_bits": mb, "phase_bits": pb, "scale_search": False}),
        ("rfft2 polar +odc", "fa", {**q, "mag_bits": mb, "phase_bits": pb, "odc": "data-free"}),
        ("rfft2 cart", "fa", {**q, "quantizer": "cartesian", "mag_bits": b, "phase_bits": b}),
        ("rfft polar", "fa", {**q, "transform": "rfft", "mag_bits": mb, "phase_bits": pb}),
        ("fft2 polar", "fa", {**q, "transform": "fft2", "mag_bits": split(b)[0], "phase_bits": split(b)[1]}),
    ]


def matched(b: int, bpw: float, iters: int) -> list[tuple[str, str, dict]]:
    """Variants with a low-rank part, given the bpw of `rfft2 polar` at b bits as their budget."""
    j = {"transform": "rfft2", "odc": "off", "bpw": bpw, "iters": iters, "lr_bits": 8}
    mb, pb = split(2 * (b - 1))
    return [
        ("rfft2 joint", "fa", {**j, "mag_bits": mb, "phase_bits": pb}),
        ("rfft joint", "fa", {**j, "transform": "rfft", "mag_bits": mb, "phase_bits": pb}),
        ("none joint", "fa", {**j, "transform": "none", "real_bits": b - 1}),
        ("rfft2 lowrank", "fa", {**j, "structure": "lowrank"}),
        ("none lowrank", "fa", {**j, "structure": "lowrank", "transform": "none"}),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[10])
    ap.add_argument("--budgets", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)  # shared CPUs: multithreaded LAPACK stalls on contended cores

    path = cache_dir() / "testbed" / "model.safetensors"
    if not path.is_file():
        raise SystemExit(f"no testbed weights at {path}; build them with `llava-fa testbed`")
    with safe_open(str(path), "pt") as f:
        weights = {f"layers.{i}.{w}": f.get_tensor(f"language_model.model.layers.{i}.{w}.weight").float()
                   for i in args.layers for w in WEIGHTS}

    print(f"{'layer':26s} {'b':>2s} {'variant':19s} {'bpw':>6s} {'rel err':>8s} {'rank':>5s} {'bits':>5s} "
          f"{'iters first->kept':>18s} {'sec':>5s}")
    for name, W in weights.items():
        label = f"{name} {W.shape[0]}x{W.shape[1]}"
        for b in args.budgets:
            rows = []
            for tag, method, opts in variants(b):
                layer, sec = run(method, W, **opts)
                rows.append((tag, layer, sec))
            t0 = time.perf_counter()
            rows.append(("pairs polar", _Paired(W, *split(2 * b)), time.perf_counter() - t0))
            ref_bpw = next(layer.bits_per_weight() for tag, layer, _ in rows if tag == "rfft2 polar")
            for tag, method, opts in matched(b, ref_bpw, args.iters):
                layer, sec = run(method, W, **opts)
                rows.append((tag, layer, sec))
            for tag, layer, sec in rows:
                p = layer.params()
                rank = p.get("rank", 0)
                bits = ("-" if not p.get("codes", True) else str(p["bits"]) if "bits" in p
                        else str(p["real_bits"]) if p["transform"] == "none" else f"{p['mag_bits']}+{p['phase_bits']}")
                hist = getattr(layer, "fit_history", None)
                wn = W.norm().item()  # odc is off in the joint rows: the fit's error is the plain one
                it = f"{hist[0] / wn:.3f}->{min(hist) / wn:.3f}" if hist and len(hist) > 1 else ""
                it = it if not it else f"{it} ({hist.index(min(hist)) + 1}/{len(hist)})"
                err = layer.err if isinstance(layer, _Paired) else rel_error(W, layer)
                print(f"{label:26s} {b:2d} {tag:19s} {layer.bits_per_weight():6.3f} {err:8.4f} "
                      f"{rank:5d} {bits:>5s} {it:>18s} {sec:5.1f}")
            print()


if __name__ == "__main__":
    main()
