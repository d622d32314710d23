"""rfft (1-D DFT along the input axis) against rfft2 (half 2-D spectrum) for `fa`, at equal bits, on
real testbed layers.

    python scripts/fa_transform_study.py [--layers 0 10 20 29] [--out docs/results/fa_transform_study.json]
    python scripts/fa_transform_study.py --summarize docs/results/fa_transform_study.json

For every linear (q, k, v, o, gate, up, down) of the chosen decoder layers of the testbed
(SmolLM2-135M decoder) and each point below, `fa` compresses the weight with transform rfft2, rfft
and (spatial control) none, and the script records:
  weight error   ||W - W'||_F / ||W||_F
  output error   sqrt(tr(E H E^T) / tr(W H W^T)), E = W - W', H = X^T X of the layer's inputs on
                 the calibration set `llava-fa compress` uses by default (auto = mixed: 16 easy-VQA
                 image+text samples + 16 x 256 WikiText-2 tokens, seed 0), collected on the
                 uncompressed model (scripts/layer_studies.act_error). The JSON also keeps the
                 squared ratio tr(E H E^T) / tr(W H W^T) itself (`act_ratio`).
and the exact counted bits per weight of each layer (`bits_per_weight`, every stored bit).

Points (fa defaults otherwise: PolarQuant, Lloyd levels, clipping search, group 64, 8-bit factors,
5 alternations, randomized SVD, ODC data-free):
  joint  2.5 / 3 / 4    --bpw 2.5 / 3 / 4 with the default code bits 2+4: the budget rule lowers the
                        code bits where 2+4 does not fit, then spends the rest on the largest rank
  quant  2.5 / 3 / 4    codes only, PolarQuant 2+3 / 2+4 / 3+5 (the demo's bits): ~2.6 / 3.1 / 4.1 bpw
  quant-cal 2.5 / 3 / 4 as quant with ODC calibrated (mean x^2 of the same calibration set): the
                        demo's form, the layer-level twin of the model-level run
The spatial control `none` stores real codes with groups of 128 reals (the scale overhead of 64
complex entries) so its bits match: joint takes the same --bpw (real bits 3, lowered where needed);
quant takes 3 / 4 real bits at the 3 / 4 points and is skipped at 2.5 (no integer equivalent).
The script checks that rfft and rfft2 land on equal bits per weight (within 1%) at every point.

No randomness beyond the seeded calibration draw (the randomized SVD uses a fixed probe seed).
--cache keeps the loaded weights and statistics in a file (e.g. under /tmp) for repeated runs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_studies import act_error, collect_layers, write_json  # noqa: E402  (scripts/ is not a package)

from llava_fa.calibration.stats import LayerStats  # noqa: E402
from llava_fa.methods import build_config, get_method  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "fa_transform_study.json"
WEIGHTS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
TRANSFORMS = ["rfft2", "rfft", "none"]
POINTS = ["2.5", "3", "4"]
QUANT_BITS = {"2.5": (2, 3), "3": (2, 4), "4": (3, 5)}
NONE_GROUP = 128  # reals per scale for the spatial control: the overhead of 64 complex entries
BPW_TOL = 0.01


def options(structure: str, point: str, transform: str) -> dict | None:
    """fa options of one run, or None where the point has no equal-bits form."""
    base = {"transform": transform}
    if transform == "none":
        base["group_size"] = NONE_GROUP
    if structure == "joint":
        return {**base, "bpw": float(point)}
    mb, pb = QUANT_BITS[point]
    opts = {**base, "structure": "quant"}
    if structure == "quant-cal":
        opts["odc"] = "calibrated"
    if transform == "none":
        if point == "2.5":
            return None
        return {**opts, "real_bits": math.ceil((mb + pb) / 2)}
    return {**opts, "mag_bits": mb, "phase_bits": pb}


# --- loading ---------------------------------------------------------------------------------------

def load(layers: list[int], nsamples: int, seqlen: int, seed: int, cache: Path | None) -> tuple[dict, dict, str]:
    """Weights and input statistics (X^T X, split by modality) of every studied linear."""
    if cache is not None and cache.is_file():
        blob = torch.load(cache, weights_only=False)  # our own file: it holds LayerStats objects
        if blob["key"] == [layers, nsamples, seqlen, seed]:
            return blob["weights"], blob["stats"], blob["what"]
    weights, stats, what = collect_layers(layers, WEIGHTS, nsamples, seqlen, seed)
    if cache is not None:
        torch.save({"key": [layers, nsamples, seqlen, seed], "weights": weights, "stats": stats, "what": what},
                   cache)
    return weights, stats, what


# --- one run ---------------------------------------------------------------------------------------

def measure(W: torch.Tensor, stats: LayerStats, opts: dict) -> dict:
    t = time.perf_counter()
    layer = get_method("fa")(build_config("fa", opts)).compress(W, stats)
    sec = time.perf_counter() - t
    Wq = layer.dequantize()
    H = stats.xtx_sum("all")
    p = layer.params()
    act = act_error(W, Wq, H)
    return {"bpw": layer.bits_per_weight(), "rank": p["rank"], "mag_bits": p["mag_bits"],
            "phase_bits": p["phase_bits"], "real_bits": p["real_bits"],
            "weight_rel_error": float((W - Wq).norm() / W.norm()), "act_rel_error": act, "act_ratio": act * act,
            "seconds": round(sec, 2)}


# --- summary ---------------------------------------------------------------------------------------

def _agg(vals: list[float]) -> tuple[float, float]:
    return statistics.fmean(vals), statistics.median(vals)


def _boot_ratio(a: list[float], b: list[float], n: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(a)/mean(b), resampling the (paired) layers."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(a), (n, len(a)), generator=g)
    at, bt = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    r = at[idx].mean(1) / bt[idx].mean(1)
    lo, hi = torch.quantile(r, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return lo, hi


def summarize(result: dict) -> str:
    """Markdown tables: per structure/point, mean and median of each error per transform and the
    rfft/rfft2 ratios (of the means, and the median of the per-layer ratios)."""
    runs = result["runs"]
    lines = []
    structures = [s for s in result["meta"]["structures"]]
    lines.append("| structure | point | transform | n | bpw (mean) | weight err mean | weight err median | "
                 "output err mean | output err median |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    ratio_lines = ["| structure | point | bpw rfft / rfft2 (max dev) | weight: ratio of means | weight: median "
                   "per-layer ratio | output: ratio of means | output: median per-layer ratio | output: 95% CI of the "
                   "ratio of means (bootstrap over layers) | rfft better (output) | none / rfft2 (output, ratio of "
                   "means) |",
                   "|---|---|---|---|---|---|---|---|---|---|"]
    for s in structures:
        for pt in result["meta"]["points"]:
            rows = {t: [r for r in runs if r["structure"] == s and r["point"] == pt and r["transform"] == t]
                    for t in result["meta"]["transforms"]}
            for t, rs in rows.items():
                if not rs:
                    continue
                wm, wd = _agg([r["weight_rel_error"] for r in rs])
                am, ad = _agg([r["act_rel_error"] for r in rs])
                bpw = statistics.fmean(r["bpw"] for r in rs)
                lines.append(f"| {s} | {pt} | {t} | {len(rs)} | {bpw:.3f} | {wm:.4f} | {wd:.4f} | {am:.4f} | {ad:.4f} |")
            a = {r["layer"]: r for r in rows.get("rfft", [])}
            b = {r["layer"]: r for r in rows.get("rfft2", [])}
            keys = [k for k in b if k in a]
            if not keys:
                continue
            dev = max(abs(a[k]["bpw"] / b[k]["bpw"] - 1) for k in keys)
            bpw_ratio = statistics.fmean(a[k]["bpw"] for k in keys) / statistics.fmean(b[k]["bpw"] for k in keys)

            def ratios(key):
                mean_ratio = statistics.fmean(a[k][key] for k in keys) / statistics.fmean(b[k][key] for k in keys)
                return mean_ratio, statistics.median(a[k][key] / b[k][key] for k in keys)

            wr, wpr = ratios("weight_rel_error")
            ar, apr = ratios("act_rel_error")
            lo, hi = _boot_ratio([a[k]["act_rel_error"] for k in keys], [b[k]["act_rel_error"] for k in keys])
            wins = sum(a[k]["act_rel_error"] < b[k]["act_rel_error"] for k in keys)
            n_ = {r["layer"]: r for r in rows.get("none", [])}
            nk = [k for k in keys if k in n_]
            nr = (f"{statistics.fmean(n_[k]['act_rel_error'] for k in nk) / statistics.fmean(b[k]['act_rel_error'] for k in nk):.3f}"
                  if nk else "-")
            ratio_lines.append(f"| {s} | {pt} | {bpw_ratio:.4f} ({dev:.2%}) | {wr:.3f} | {wpr:.3f} | {ar:.3f} | "
                               f"{apr:.3f} | [{lo:.3f}, {hi:.3f}] | {wins}/{len(keys)} | {nr} |")
    # rfft/rfft2 output-error ratio of means by weight type, per structure and point
    kinds = [w.split(".")[1] for w in WEIGHTS]
    kind_lines = ["| structure | point | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for s in structures:
        for pt in result["meta"]["points"]:
            cells = []
            for w in WEIGHTS:
                a = [r for r in runs if r["structure"] == s and r["point"] == pt and r["transform"] == "rfft"
                     and r["layer"].endswith(w)]
                b = {r["layer"]: r for r in runs if r["structure"] == s and r["point"] == pt
                     and r["transform"] == "rfft2" and r["layer"].endswith(w)}
                a = [r for r in a if r["layer"] in b]
                cells.append(f"{statistics.fmean(r['act_rel_error'] for r in a) / statistics.fmean(b[r['layer']]['act_rel_error'] for r in a):.3f}"
                             if a else "-")
            kind_lines.append(f"| {s} | {pt} | " + " | ".join(cells) + " |")
    return "\n".join(["### Errors per transform", "", *lines, "", "### rfft against rfft2 (ratios < 1: rfft better)",
                      "", *ratio_lines, "", "### Output-error ratio rfft / rfft2 (ratio of means) by weight type", "",
                      *kind_lines])


def check_bits(result: dict) -> list[str]:
    """Layers where rfft and rfft2 differ by more than BPW_TOL in bits per weight."""
    bad = []
    idx = {(r["structure"], r["point"], r["layer"], r["transform"]): r for r in result["runs"]}
    for (s, pt, layer, t), r in idx.items():
        if t != "rfft":
            continue
        o = idx.get((s, pt, layer, "rfft2"))
        if o and abs(r["bpw"] / o["bpw"] - 1) > BPW_TOL:
            bad.append(f"{s} {pt} {layer}: rfft {r['bpw']:.4f} vs rfft2 {o['bpw']:.4f}")
    return bad


# --- model level: paired KL of two compressed models against one reference -------------------------

@torch.no_grad()
def paired_kl(reference: Path, models: list[Path], n_prompts: int, batch_size: int, boot: int, seed: int) -> dict:
    """KL(ref || model) and top-1 agreement of each model, per easy-VQA prompt (the prompts and scored
    positions of `llava-fa eval`'s fidelity, reusing its helpers), and a paired bootstrap over prompts
    of the ratio of the token-mean KLs of models[0] and models[1]: the noise of the comparison."""
    import torch.nn.functional as F

    from llava_fa.evaluation._common import chunks, on_model
    from llava_fa.evaluation.fidelity import _inputs, _logits, _scored_positions
    from llava_fa.evaluation.runner import load_for_evaluation
    from llava_fa.evaluation.vqa import vqa_questions

    ref, processor, _ = load_for_evaluation(reference, "cpu", torch.float32)
    loaded = [load_for_evaluation(m, "cpu", torch.float32)[0] for m in models]
    examples = vqa_questions(n_prompts)
    image_id = getattr(processor, "image_token_id", None)
    per = {str(m): {"kl": [], "agree": []} for m in models}
    tokens: list[int] = []
    for group in chunks(examples, batch_size):
        batch = _inputs(ref, processor, group, False)
        ref_logp = F.log_softmax(_logits(ref, batch), -1)
        mask = _scored_positions(batch, image_id)
        tokens += mask.sum(1).tolist()
        for path, model in zip(models, loaded):
            logp = F.log_softmax(_logits(model, on_model(model, batch)), -1)
            kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
            agree = (logp.argmax(-1) == ref_logp.argmax(-1))
            per[str(path)]["kl"] += (kl * mask).double().sum(1).tolist()  # per-prompt sums
            per[str(path)]["agree"] += (agree & mask).sum(1).tolist()
    tok = torch.tensor(tokens, dtype=torch.float64)
    out = {"reference": str(reference), "n_prompts": len(examples), "n_tokens": int(tok.sum()), "models": {}}
    for path, d in per.items():
        out["models"][path] = {"kl": sum(d["kl"]) / tok.sum().item(), "top1_agreement": sum(d["agree"]) / tok.sum().item(),
                               "kl_per_prompt": d["kl"], "agree_per_prompt": d["agree"]}
    out["tokens_per_prompt"] = tokens
    if len(models) == 2:
        a = torch.tensor(per[str(models[0])]["kl"], dtype=torch.float64)
        b = torch.tensor(per[str(models[1])]["kl"], dtype=torch.float64)
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(tokens), (boot, len(tokens)), generator=g)
        ratio = a[idx].sum(1) / b[idx].sum(1)
        lo, hi = torch.quantile(ratio, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        out["ratio_kl"] = {"models": [str(models[0]), str(models[1])], "ratio": (a.sum() / b.sum()).item(),
                           "bootstrap_95": [lo, hi], "bootstrap": boot,
                           "prompts_first_lower": int((a < b).sum())}
    return out


# --- model level: the per-layer errors `llava-fa compress` reported for two models ---------------------

def compare_reports(a_dir: Path, b_dir: Path) -> str:
    """Markdown table: rel_error and act_error of every compressed layer (compress_report.json of two
    compressed models of the same base), ratios A/B overall and per weight type."""
    rep = [{l["name"]: l for l in json.loads((d / "compress_report.json").read_text())["layers"]} for d in (a_dir, b_dir)]
    names = [k for k in rep[1] if k in rep[0]]
    lines = [f"A = {a_dir}, B = {b_dir}; {len(names)} layers; largest per-layer bpw deviation "
             f"{max(abs(rep[0][k]['bpw'] / rep[1][k]['bpw'] - 1) for k in names):.3%}", "",
             "| error | weights | mean A | mean B | A/B ratio of means | median per-layer A/B | A lower |",
             "|---|---|---|---|---|---|---|"]
    for key in ("rel_error", "act_error"):
        for w in ["all"] + [x.split(".")[1] for x in WEIGHTS]:
            ks = [k for k in names if w == "all" or k.endswith(w)]
            ks = [k for k in ks if rep[0][k][key] is not None and rep[1][k][key] is not None]
            a, b = [rep[0][k][key] for k in ks], [rep[1][k][key] for k in ks]
            lines.append(f"| {key} | {w} | {statistics.fmean(a):.5f} | {statistics.fmean(b):.5f} | "
                         f"{statistics.fmean(a) / statistics.fmean(b):.4f} | "
                         f"{statistics.median(x / y for x, y in zip(a, b)):.4f} | "
                         f"{sum(x < y for x, y in zip(a, b))}/{len(ks)} |")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 10, 20, 29])
    ap.add_argument("--weights", nargs="+", default=WEIGHTS, choices=WEIGHTS)
    ap.add_argument("--structures", nargs="+", default=["joint", "quant", "quant-cal"],
                    choices=["joint", "quant", "quant-cal"])
    ap.add_argument("--points", nargs="+", default=POINTS, choices=POINTS)
    ap.add_argument("--transforms", nargs="+", default=TRANSFORMS, choices=TRANSFORMS)
    ap.add_argument("--none-structures", nargs="*", default=["quant", "quant-cal"],
                    help="structures that also run the spatial control none (joint's alternation is the slow part)")
    ap.add_argument("--nsamples", type=int, default=32, help="calibration samples (compress's default)")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="file to keep the loaded weights and statistics in")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--summarize", type=Path, default=None, help="only print the tables of an existing JSON")
    ap.add_argument("--paired-kl", type=Path, nargs="+", default=None, metavar="DIR",
                    help="model level instead: REFERENCE MODEL_A [MODEL_B]; per-prompt KL on the first "
                         "--prompts easy-VQA test prompts and a paired bootstrap of KL_A / KL_B (written to --out)")
    ap.add_argument("--prompts", type=int, default=64, help="easy-VQA prompts of --paired-kl (eval's default: 64)")
    ap.add_argument("--compare-reports", type=Path, nargs=2, default=None, metavar=("A", "B"),
                    help="only compare the per-layer errors in the compress_report.json of two compressed models")
    args = ap.parse_args()
    if args.compare_reports is not None:
        print(compare_reports(*args.compare_reports))
        return
    if args.paired_kl is not None:
        torch.set_num_threads(1)
        if len(args.paired_kl) not in (2, 3):
            ap.error("--paired-kl takes REFERENCE MODEL_A [MODEL_B]")
        r = paired_kl(args.paired_kl[0], args.paired_kl[1:], args.prompts, 8, 10000, args.seed)
        r["command"] = "python " + " ".join(sys.argv)
        write_json(args.out, r)
        for path, d in r["models"].items():
            print(f"{path}: KL {d['kl']:.4f} top-1 {d['top1_agreement']:.2%} ({r['n_tokens']} tokens, "
                  f"{r['n_prompts']} prompts)")
        if "ratio_kl" in r:
            q = r["ratio_kl"]
            print(f"KL ratio A/B {q['ratio']:.4f}, paired bootstrap 95% [{q['bootstrap_95'][0]:.4f}, "
                  f"{q['bootstrap_95'][1]:.4f}]; A lower on {q['prompts_first_lower']}/{r['n_prompts']} prompts")
        return
    if args.summarize is not None:
        result = json.loads(args.summarize.read_text())
        print(summarize(result))
        return
    torch.set_num_threads(1)  # shared CPUs: multithreaded LAPACK stalls on contended cores
    t0 = time.perf_counter()
    weights, stats, what = load(args.layers, args.nsamples, args.seqlen, args.seed, args.cache)
    weights = {k: v for k, v in weights.items() if any(k.endswith(w) for w in args.weights)}
    print(f"[{time.perf_counter() - t0:6.1f}s] loaded {len(weights)} weights; calibration: {what}", flush=True)
    result = {"meta": {"layers": args.layers, "weights": args.weights, "structures": args.structures,
                       "points": args.points, "transforms": args.transforms,
                       "none_structures": args.none_structures, "calibration": what,
                       "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed,
                       "quant_bits": QUANT_BITS, "none_group_size": NONE_GROUP,
                       "command": "python " + " ".join(sys.argv),
                       "torch": torch.__version__, "python": platform.python_version(),
                       "tokens": {k: dict(s.tokens) for k, s in stats.items() if k in weights}},
              "shapes": {k: list(W.shape) for k, W in weights.items()}, "runs": []}
    for name, W in weights.items():
        for s in args.structures:
            for pt in args.points:
                for t in args.transforms:
                    opts = options(s, pt, t)
                    if opts is None or (t == "none" and s not in args.none_structures):
                        continue
                    r = measure(W, stats[name], opts)
                    result["runs"].append({"layer": name, "structure": s, "point": pt, "transform": t,
                                           "options": opts, **r})
                    print(f"[{time.perf_counter() - t0:6.1f}s] {name:24s} {s:9s} {pt:>3s} {t:5s} bpw {r['bpw']:.3f} "
                          f"rank {r['rank']:3d} bits {r['mag_bits']}+{r['phase_bits']}/{r['real_bits']} "
                          f"weight {r['weight_rel_error']:.4f} output {r['act_rel_error']:.4f} ({r['seconds']:.1f}s)",
                          flush=True)
        result["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(args.out, result)  # after every weight: a partial run keeps what it measured
    bad = check_bits(result)
    result["meta"]["bpw_mismatches"] = bad
    write_json(args.out, result)
    print()
    print(summarize(result))
    if bad:
        print("\nbits per weight differ by more than 1% between rfft and rfft2:\n  " + "\n  ".join(bad))
    else:
        print(f"\nrfft and rfft2 bits per weight agree within {BPW_TOL:.0%} at every point and layer")


if __name__ == "__main__":
    main()
