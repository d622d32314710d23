"""Where the low-rank part of `fa` (LLaVA-FA) pays: code bits x rank on real testbed layers, rfft.

    python scripts/fa_rank_study.py [--layers 0 10 20 29] [--cache /tmp/x.pt] [--out docs/results/fa_rank_study.json]
    python scripts/fa_rank_study.py --summarize docs/results/fa_rank_study.json

For every linear (q, k, v, o, gate, up, down) of the chosen decoder layers of the testbed and every
combination of PolarQuant code bits (mag+phase) 2+2, 2+3, 2+4, 3+5 and rank 0, 4, 16, 32, `fa`
compresses the weight with transform rfft, fa defaults otherwise (Lloyd levels, clipping search,
group 64, 8-bit factors, 5 alternations, randomized SVD, ODC data-free); rank 0 is structure quant,
rank > 0 structure joint with that explicit rank. Recorded: the exact stored bits per weight and the
output error sqrt(tr(E H E^T) / tr(W H W^T)), E = W - W', H = X^T X of the layer's inputs on
`llava-fa compress`'s default calibration (loading and measuring: scripts/fa_transform_study.py).

Summary (per weight type and over all weights, means weighted by parameter count for "all"):
  (a) the error-vs-bpw frontier: Pareto points (no other point has fewer bits and less error) and
      the lower convex hull (what a per-layer Lagrangian bit allocation can pick);
  (b) marginal gain per bit, -d(output err)/d(bpw), of adding rank against adding code bits;
  (c) joint at matched bpw: each joint point against the quant curve (rank 0 over the four code
      bits) interpolated at its bpw, per layer (log-error linear in bpw; plain linear, which mixing code
      bits across layers achieves, as a check); and the best point within a few budgets.
Deterministic: seeded calibration draw, fixed probe seed of the randomized SVD. --resume keeps the
runs already in --out; the JSON is rewritten after every weight.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "fa_rank_study.json"
KINDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BITS = [(2, 2), (2, 3), (2, 4), (3, 5)]
RANKS = [0, 4, 16, 32]


def label(bits: tuple[int, int], rank: int) -> str:
    return f"{bits[0]}+{bits[1]} r{rank}"


def options(bits: tuple[int, int], rank: int) -> dict:
    opts = {"transform": "rfft", "mag_bits": bits[0], "phase_bits": bits[1]}
    return {**opts, "structure": "quant"} if rank == 0 else {**opts, "structure": "joint", "rank": rank}


def kind_of(name: str) -> str:
    return name.rsplit(".", 1)[1]


# --- measuring -------------------------------------------------------------------------------------

def load_layers(layers: list[int], nsamples: int, seqlen: int, seed: int, cache: Path | None):
    """fa_transform_study.load, reusing a cache that holds a superset of `layers`."""
    import torch
    from fa_transform_study import load

    want = sorted(set(layers))
    if cache is not None and cache.is_file():
        key = torch.load(cache, weights_only=False)["key"]
        if set(want) <= set(key[0]) and key[1:] == [nsamples, seqlen, seed]:
            want = key[0]
    weights, stats, what = load(want, nsamples, seqlen, seed, cache)
    keep = {f"layers.{i}." for i in layers}
    weights = {k: v for k, v in weights.items() if any(k.startswith(p) for p in keep)}
    return weights, stats, what


def run(args: argparse.Namespace) -> dict:
    import torch
    from fa_transform_study import measure
    from layer_studies import write_json

    torch.set_num_threads(1)  # shared CPUs
    t0 = time.perf_counter()
    weights, stats, what = load_layers(args.layers, args.nsamples, args.seqlen, args.seed, args.cache)
    weights = {k: v for k, v in weights.items() if kind_of(k) in args.kinds}
    set_grid(args.bits, args.ranks)
    print(f"[{time.perf_counter() - t0:6.1f}s] loaded {len(weights)} weights; calibration: {what}", flush=True)
    old = json.loads(args.out.read_text())["runs"] if args.resume and args.out.is_file() else []
    done = {(r["layer"], r["label"]) for r in old}
    layers = sorted({int(r["layer"].split(".")[1]) for r in old} | set(args.layers))
    result = {"meta": {"layers": layers, "kinds": args.kinds, "bits": BITS, "ranks": RANKS,
                       "calibration": what, "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed,
                       "command": "python " + " ".join(sys.argv), "torch": torch.__version__,
                       "python": platform.python_version()},
              "runs": old}
    for name, W in weights.items():
        for bits in BITS:
            for rank in RANKS:
                if (name, label(bits, rank)) in done:
                    continue
                opts = options(bits, rank)
                r = measure(W, stats[name], opts)
                result["runs"].append({"layer": name, "kind": kind_of(name), "label": label(bits, rank),
                                       "bits": list(bits), "want_rank": rank, "numel": W.numel(),
                                       "shape": list(W.shape), "options": opts, **r})
                print(f"[{time.perf_counter() - t0:6.1f}s] {name:24s} {label(bits, rank):9s} bpw {r['bpw']:.3f} "
                      f"rank {r['rank']:3d} weight {r['weight_rel_error']:.4f} output {r['act_rel_error']:.4f} "
                      f"({r['seconds']:.1f}s)", flush=True)
        result["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(args.out, result)
    return result


# --- aggregation -----------------------------------------------------------------------------------

def by_layer(runs: list[dict], kind: str) -> dict[str, dict[str, dict]]:
    """{layer: {label: run}} of one weight type ("all": every type)."""
    out: dict[str, dict[str, dict]] = {}
    for r in runs:
        if kind == "all" or r["kind"] == kind:
            out.setdefault(r["layer"], {})[r["label"]] = r
    return out


def configs() -> list[tuple[tuple[int, int], int]]:
    return [(b, r) for b in BITS for r in RANKS]


def set_grid(bits: list, ranks: list[int]) -> None:
    """The grid of a run or of a saved JSON (code bits by their sum, rank 0 first), for the tables."""
    BITS[:] = sorted({tuple(b) for b in bits}, key=lambda b: (b[0] + b[1], b[0]))
    RANKS[:] = sorted(set(ranks) | {0})


def parse_bits(text: str) -> tuple[int, int]:
    mag, phase = text.split("+")
    return int(mag), int(phase)


def mean_points(layers: dict[str, dict[str, dict]]) -> dict[str, tuple[float, float]]:
    """{label: (bpw, output err)}, means weighted by parameter count, over layers that hold every point."""
    full = [d for d in layers.values() if all(label(b, r) in d for b, r in configs())]
    pts = {}
    for b, r in configs():
        rs = [d[label(b, r)] for d in full]
        if rs:
            n = sum(x["numel"] for x in rs)
            pts[label(b, r)] = (sum(x["bpw"] * x["numel"] for x in rs) / n,
                                sum(x["act_rel_error"] * x["numel"] for x in rs) / n)
    return pts


def pareto(pts: dict[str, tuple[float, float]]) -> set[str]:
    return {k for k, (b, e) in pts.items()
            if not any(k2 != k and b2 <= b and e2 < e for k2, (b2, e2) in pts.items())}


def hull(pts: dict[str, tuple[float, float]]) -> set[str]:
    """Lower convex hull of the Pareto points, walked from the fewest bits."""
    order = sorted(pareto(pts), key=lambda k: pts[k][0])
    chain: list[str] = []
    for k in order:
        while len(chain) >= 2:
            (x1, y1), (x2, y2), (x3, y3) = pts[chain[-2]], pts[chain[-1]], pts[k]
            if (x2 - x1) * (y3 - y1) - (y2 - y1) * (x3 - x1) <= 0:  # chain[-1] on or above the chord
                chain.pop()
            else:
                break
        chain.append(k)
    return set(chain)


def interp(x: float, xs: list[float], ys: list[float], log: bool) -> float | None:
    """Piecewise-linear (log: in log y) interpolation on increasing xs; None outside."""
    for i in range(len(xs) - 1):
        if xs[i] <= x <= xs[i + 1]:
            t = (x - xs[i]) / (xs[i + 1] - xs[i])
            if log:
                return math.exp((1 - t) * math.log(ys[i]) + t * math.log(ys[i + 1]))
            return (1 - t) * ys[i] + t * ys[i + 1]
    return None


# --- tables ----------------------------------------------------------------------------------------

def frontier_tables(runs: list[dict]) -> list[str]:
    cols = KINDS + ["all"]
    pts = {k: mean_points(by_layer(runs, k)) for k in cols}
    counts = {k: {} for k in cols}
    for k in cols:
        for d in by_layer(runs, k).values():
            if len(d) == len(configs()):
                for lab in pareto({l: (r["bpw"], r["act_rel_error"]) for l, r in d.items()}):
                    counts[k][lab] = counts[k].get(lab, 0) + 1
    nl = {k: sum(len(d) == len(configs()) for d in by_layer(runs, k).values()) for k in cols}
    lines = ["Cell: mean output error @ bpw; P = on the Pareto frontier of the means, H = also on its lower "
             "convex hull; [k] = on the Pareto frontier of k of the individual weights "
             f"(weights per column: {', '.join(f'{k} {nl[k]}' for k in cols)}).", "",
             "| code bits, rank | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    fr = {k: (pareto(pts[k]), hull(pts[k])) for k in cols}
    for b, r in configs():
        lab, cells = label(b, r), []
        for k in cols:
            if lab not in pts[k]:
                cells.append("-")
                continue
            bpw, err = pts[k][lab]
            mark = ("H" if lab in fr[k][1] else "P") if lab in fr[k][0] else ""
            cells.append(f"{err:.4f} @ {bpw:.2f} {mark} [{counts[k].get(lab, 0)}]")
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines += ["", "Pareto frontier of the means, fewest bits first (H: on the hull):", ""]
    for k in cols:
        seq = sorted(fr[k][0], key=lambda l: pts[k][l][0])
        lines.append(f"- {k}: " + " -> ".join(f"{l}{' (H)' if l in fr[k][1] else ''}" for l in seq))
    return lines


def marginal_tables(runs: list[dict]) -> list[str]:
    """-d(err)/d(bpw) of each step, from the (parameter-weighted) means of each type."""
    cols = KINDS + ["all"]
    pts = {k: mean_points(by_layer(runs, k)) for k in cols}
    steps = []
    for i, b in enumerate(BITS):
        if i + 1 < len(BITS):
            steps.append((label(b, 0), label(BITS[i + 1], 0)))
        steps += [(label(b, RANKS[j]), label(b, RANKS[j + 1])) for j in range(len(RANKS) - 1)]
        steps += [(label(b, 0), label(b, r)) for r in sorted({16, RANKS[-1]}) if r in RANKS[2:]]
    lines = ["Cell: output-error drop per added bit per weight, -(err_b - err_a) / (bpw_b - bpw_a), from the "
             "means; (+bpw) is the step's cost in bpw. Larger is better; a code-bit step and a rank step from "
             "the same start compare directly.", "",
             "| step | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for a, b in steps:
        cells = []
        for k in cols:
            if a not in pts[k] or b not in pts[k]:
                cells.append("-")
                continue
            (x1, y1), (x2, y2) = pts[k][a], pts[k][b]
            cells.append(f"{-(y2 - y1) / (x2 - x1):.3f} (+{x2 - x1:.2f})")
        lines.append(f"| {a} -> {b} | " + " | ".join(cells) + " |")
    return lines


def matched_rows(runs: list[dict], kind: str, b: tuple[int, int], r: int) -> tuple[list, list, list]:
    """Per weight: (joint err, quant err interpolated at the joint bpw in log / linear) where in range."""
    js, ql, qn = [], [], []
    for d in by_layer(runs, kind).values():
        q = sorted((d[label(qb, 0)]["bpw"], d[label(qb, 0)]["act_rel_error"]) for qb in BITS if label(qb, 0) in d)
        j = d.get(label(b, r))
        if j is None or len(q) < 2:
            continue
        xs, ys = [x for x, _ in q], [y for _, y in q]
        lg = interp(j["bpw"], xs, ys, True)
        if lg is None:
            continue
        js.append((j["act_rel_error"], j["numel"]))
        ql.append(lg)
        qn.append(interp(j["bpw"], xs, ys, False))
    return js, ql, qn


def matched_tables(runs: list[dict]) -> list[str]:
    cols = KINDS + ["all"]
    lines = ["Cell: joint err / quant err at the joint point's bpw (ratios of parameter-weighted means; < 1: "
             "joint better), quant interpolated per weight in log error (in brackets: linear, what mixing the two "
             "code-bit settings across layers of a type achieves), and the weights where joint is lower (log). "
             f"'-': the joint point lies outside quant's measured bpw range ({label(BITS[0], 0)} .. "
             f"{label(BITS[-1], 0)}).", "",
             "| joint point | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for b in BITS:
        for r in RANKS[1:]:
            cells = []
            for k in cols:
                js, ql, qn = matched_rows(runs, k, b, r)
                if not js:
                    cells.append("-")
                    continue
                w = [n for _, n in js]
                je = sum(e * n for (e, n) in js)
                ratio_l = je / sum(q * n for q, n in zip(ql, w))
                ratio_n = je / sum(q * n for q, n in zip(qn, w))
                wins = sum(e < q for (e, _), q in zip(js, ql))
                cells.append(f"{ratio_l:.3f} [{ratio_n:.3f}] {wins}/{len(js)}")
            lines.append(f"| {label(b, r)} | " + " | ".join(cells) + " |")
    return lines


def budget_table(runs: list[dict], budgets=(2.5, 2.75, 3.0, 3.25, 3.5, 4.0, 4.5, 5.0)) -> list[str]:
    """The best measured point within each budget, from the means, and per weight how often it has rank > 0."""
    cols = KINDS + ["all"]
    pts = {k: mean_points(by_layer(runs, k)) for k in cols}
    lines = ["Cell: the point with the lowest mean output error among those with bpw <= the budget (its error); "
             "{k/n}: weights whose own best point within the budget has rank > 0.", "",
             "| budget (bpw) | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for bud in budgets:
        cells = []
        for k in cols:
            ok = {l: p for l, p in pts[k].items() if p[0] <= bud}
            if not ok:
                cells.append("-")
                continue
            best = min(ok, key=lambda l: ok[l][1])
            per = [min((r for r in d.values() if r["bpw"] <= bud), key=lambda r: r["act_rel_error"], default=None)
                   for d in by_layer(runs, k).values()]
            per = [r for r in per if r is not None]
            cells.append(f"{best} ({ok[best][1]:.4f}) {{{sum(r['want_rank'] > 0 for r in per)}/{len(per)}}}")
        lines.append(f"| {bud:g} | " + " | ".join(cells) + " |")
    return lines


def interp_check(runs: list[dict]) -> list[str]:
    """How well the quant curve interpolates: each inner quant point against its two neighbours."""
    cols = KINDS + ["all"]
    lines = ["Cell: measured / interpolated output error of a quant point from the quant points on either side "
             "(log [linear]); < 1: the interpolation overstates quant's error there (favours joint in (c)).", "",
             "| quant point (from neighbours) | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for i in range(1, len(BITS) - 1):
        a, m, b = (label(BITS[j], 0) for j in (i - 1, i, i + 1))
        cells = []
        for k in cols:
            ds = [d for d in by_layer(runs, k).values() if a in d and m in d and b in d]
            if not ds:
                cells.append("-")
                continue
            xs = [[d[x]["bpw"] for x in (a, b)] for d in ds]
            ys = [[d[x]["act_rel_error"] for x in (a, b)] for d in ds]
            w = [d[m]["numel"] for d in ds]
            got = sum(d[m]["act_rel_error"] * n for d, n in zip(ds, w))
            est = [sum(interp(d[m]["bpw"], x, y, lg) * n for d, x, y, n in zip(ds, xs, ys, w)) for lg in (True, False)]
            cells.append(f"{got / est[0]:.3f} [{got / est[1]:.3f}]")
        lines.append(f"| {m} ({a}, {b}) | " + " | ".join(cells) + " |")
    return lines


def bpw_table(runs: list[dict]) -> list[str]:
    cols = KINDS + ["all"]
    pts = {k: mean_points(by_layer(runs, k)) for k in cols}
    ranks = {}
    for r in runs:
        ranks.setdefault((r["kind"], r["label"]), set()).add(r["rank"])
    lines = ["| code bits, rank | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for b, r in configs():
        lab = label(b, r)
        cells = [f"{pts[k][lab][0]:.3f}" if lab in pts[k] else "-" for k in cols]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    clamped = sorted({(k, l) for (k, l), rs in ranks.items() if any(x != int(l.split("r")[1]) for x in rs)})
    if clamped:
        lines += ["", "Rank differs from the one asked for: " + ", ".join(f"{k} {l}" for k, l in clamped)]
    return lines


def summarize(result: dict) -> str:
    runs = result["runs"]
    layers = sorted({r["layer"] for r in runs})
    secs = sum(r["seconds"] for r in runs)
    decoder = ", ".join(sorted({l.split(".")[1] for l in layers}, key=int))
    head = [f"{len(runs)} runs on {len(layers)} weights ({decoder} of the decoder); compress time {secs:.0f} s in all."]
    return "\n".join(head + ["", "### Stored bits per weight", "", *bpw_table(runs),
                             "", "### (a) Output error against bpw: the frontier", "", *frontier_tables(runs),
                             "", "### (b) Marginal gain per bit: rank against code bits", "", *marginal_tables(runs),
                             "", "### Best point within a budget", "", *budget_table(runs),
                             "", "### (c) Joint against quant at matched bpw", "", *matched_tables(runs),
                             "", "Check of the interpolation:", "", *interp_check(runs)])


# --- main ------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 10, 20, 29], help="decoder layers")
    ap.add_argument("--bits", type=parse_bits, nargs="+", default=BITS, metavar="MAG+PHASE",
                    help="PolarQuant code bits (default: 2+2 2+3 2+4 3+5)")
    ap.add_argument("--ranks", type=int, nargs="+", default=RANKS, help="ranks (0: structure quant)")
    ap.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS, help="weight types")
    ap.add_argument("--nsamples", type=int, default=32, help="calibration samples (compress's default)")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="file to keep the loaded weights and statistics in")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--resume", action="store_true", help="keep the runs already in --out, measure the rest")
    ap.add_argument("--summarize", type=Path, default=None, help="only print the tables of an existing JSON")
    args = ap.parse_args()
    if args.summarize is not None:
        result = json.loads(args.summarize.read_text())
        set_grid(result["meta"]["bits"], result["meta"]["ranks"])
        print(summarize(result))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ is not a package
    result = run(args)
    print()
    print(summarize(result))


if __name__ == "__main__":
    main()
