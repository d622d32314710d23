"""Figures of the report, drawn from JSON records into docs/results/figures/ (matplotlib, Agg).

    python scripts/plots.py            # or: from plots import render_plots; render_plots(ROOT)

Inputs, relative to the repository root:
- docs/results/layer_studies.json (scripts/layer_studies.py) -> spectra.png, error_vs_rank.png,
  convergence.png;
- docs/results/testbed_h100/NAME.json, the sweep's eval records, with NAME.report.json beside them
  (its `method` names the series; without one, NAME's method in the run list examples/bench_testbed.yaml,
  or the method of the runs there whose names start with the same letters) -> pareto.png.

Missing inputs are skipped, not errors: without layer_studies.json the three layer figures are not
drawn, without sweep records pareto.png is not; `render_plots` returns only the figures it drew (a
message on stderr names what was skipped). A record that exists but cannot be read, or lacks a
section a figure needs, raises llava_fa.errors.DataError naming the file.

Output is deterministic: no timestamps or software tag in the PNG metadata, fixed colours, and
every PNG is written to a temporary file first and then moved into place (os.replace).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llava_fa.errors import DataError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_runs beside this script
from results_runs import method_from_name  # noqa: E402

PPL_CLIP = 1e4  # PPL above this is drawn at the clip (log axis), the real value in the note
METRICS = [  # (record key, axis label, lower is better, log y)
    ("perplexity.ppl", "WikiText-2 PPL (log)", True, True),
    ("vqa.fast.accuracy", "easy-VQA accuracy", False, False),
    ("fidelity.kl", "KL to uncompressed", True, False),
]


# --- records ---------------------------------------------------------------------------------------

def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a {type(data).__name__}, expected a JSON object")
    return data


def get(d: Any, dotted: str) -> Any:
    """d['a']['b'] for 'a.b', None where a key is missing."""
    for key in dotted.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def section(data: dict, key: str, path: Path) -> dict:
    if not isinstance(data.get(key), dict):
        raise DataError(f"{path} has no '{key}' section; rerun scripts/layer_studies.py")
    return data[key]


def method_of(name: str, report: dict | None) -> str:
    """The series of a run: its report's method, else the run list's (results_runs.method_from_name)."""
    if report and isinstance(report.get("method"), str):
        return report["method"]
    return method_from_name(name)


def sweep_runs(folder: Path) -> dict[str, dict]:
    """NAME -> {method, bpw, metrics...} for every eval record in `folder` (reports excluded)."""
    runs = {}
    for path in sorted(folder.glob("*.json")):
        if path.name.endswith(".report.json"):
            continue
        name = path.stem
        rec = read_json(path)
        rp = path.with_name(f"{name}.report.json")
        report = read_json(rp) if rp.exists() else None
        method = "uncompressed" if name == "base" else method_of(name, report)
        runs[name] = {"method": method, "bpw": get(rec, "size.decoder_linear.bpw"),
                      **{k: get(rec, k) for k, *_ in METRICS}}
    return runs


# --- drawing helpers -------------------------------------------------------------------------------

def new_figure(rows: int, cols: int, width: float, height: float) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", metadata={"Software": None})
    os.replace(tmp, path)
    return path


def colors(keys: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if len(keys) > 10 else "tab10"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(keys)}


def layer_title(name: str, studies: dict) -> str:
    shape = studies.get("layers", {}).get(name, {}).get("shape")  # layer names hold dots: no get()
    return f"{name} {shape[0]}x{shape[1]}" if shape else name


# --- figure 1: spectra -----------------------------------------------------------------------------

SPECTRA = [("spatial", "W (spatial)", "-", None), ("fft2", "fft2 full, unitary (= W)", "none", "x"),
           ("rfft2", "rfft2 half spectrum", "-", None), ("rfft2_weighted", "rfft2 half, Parseval-weighted", ":", None)]


def plot_spectra(studies: dict, path: Path, out: Path) -> Path:
    data = section(studies, "spectra", path)
    fig, axes = new_figure(1, len(data), 4.6 * len(data), 3.8)
    for ax, (name, sv) in zip(axes, data.items()):
        for key, label, style, marker in SPECTRA:
            s = sv.get(key)
            if not s:
                continue
            norm = math.sqrt(sum(x * x for x in s))
            ax.plot(range(1, len(s) + 1), [x / norm for x in s], linestyle=style, marker=marker,
                    markevery=max(1, len(s) // 24), markersize=4, label=label)
        ax.set_yscale("log")
        ax.set_title(layer_title(name, studies), fontsize=9)
        ax.set_xlabel("index i")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(r"$\sigma_i / \|\sigma\|_2$")
    axes[0].legend(fontsize=7)
    fig.suptitle("Singular values: spatial W vs its rfft2 half spectrum (a unitary fft2 keeps them)", fontsize=10)
    return save(fig, out)


# --- figure 2: error against rank ------------------------------------------------------------------

def plot_truncation(ax, trunc: dict, x_of) -> None:
    for key, label in (("spatial", "spatial SVD"), ("rfft2", "rfft2 half-spectrum SVD")):
        t = trunc.get(key)
        if t:
            ax.plot([x_of(r, s) for r, s in zip(t["ranks"], t["stored_reals"])], t["rel_error"], marker=".", label=label)
    ax.grid(alpha=0.3)


def code_label(row: dict) -> str:
    """Code bits of a joint-budget point: PolarQuant b_r+b_theta, or real bits for the spatial form."""
    if row.get("options", {}).get("transform") == "none":
        return f"{row['real_bits']}b"
    return f"{row['mag_bits']}+{row['phase_bits']}"


def plot_joint(ax, rows: list[dict]) -> None:
    series = list(dict.fromkeys(r["series"] for r in rows))
    col = colors(series)
    for s in series:
        pts = sorted((r for r in rows if r["series"] == s), key=lambda r: r["rank"])
        ranks = [r["rank"] for r in pts]
        ax.plot(ranks, [r["weight_rel_error"] for r in pts], "-o", color=col[s], markersize=4, label=f"{s}: weight")
        ax.plot(ranks, [r["act_rel_error"] for r in pts], "--s", color=col[s], markersize=3, label=f"{s}: activation")
        if s == series[0] or s.startswith("spatial"):
            for r in pts:
                ax.annotate(code_label(r), (r["rank"], r["weight_rel_error"]), fontsize=6,
                            textcoords="offset points", xytext=(3, 3))
    ax.grid(alpha=0.3)


def plot_error_vs_rank(studies: dict, path: Path, out: Path) -> Path:
    trunc, joint = section(studies, "truncation", path), section(studies, "joint_budget", path)
    names = list(trunc)
    fig, axes = new_figure(3, len(names), 4.6 * len(names), 10.5)
    k = len(names)
    for j, name in enumerate(names):
        m, n = studies["layers"][name]["shape"]
        plot_truncation(axes[j], trunc[name], lambda r, s: r)
        plot_truncation(axes[k + j], trunc[name], lambda r, s: s / (m * n))
        plot_joint(axes[2 * k + j], joint.get(name, []))
        axes[j].set_title(layer_title(name, studies), fontsize=9)
        axes[j].set_xlabel("rank r")
        axes[k + j].set_xlabel("stored reals of the factors / (m n)")
        axes[2 * k + j].set_xlabel("rank (0 = quant-only)")
    axes[0].set_ylabel("rank-r truncation:\nrelative Frobenius error")
    axes[k].set_ylabel("same, at equal storage")
    bpw = get(studies, "meta.target_bpw")
    axes[2 * k].set_ylabel(f"joint form at ~{bpw} bpw: relative error\n(labels: code bits b_r+b_theta / real bits)")
    axes[0].legend(fontsize=7)
    handles, labels = axes[2 * k].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7)
    fig.suptitle("Error against rank: truncation (rows 1-2) and the joint form at a fixed budget (row 3)", fontsize=10)
    return save(fig, out)


# --- figure 3: convergence -------------------------------------------------------------------------

def plot_convergence(studies: dict, path: Path, out: Path) -> Path:
    data = section(studies, "convergence", path)
    fig, axes = new_figure(1, len(data), 4.6 * len(data), 3.6)
    for ax, (name, runs) in zip(axes, data.items()):
        for run in runs:
            h = run["rel_history"]
            if len(h) == 1:  # rank 0: quant-only, nothing to alternate
                ax.axhline(h[0], color="0.4", linestyle="--", linewidth=1,
                           label=f"rank {run['rank']}, quant-only ({run['bpw']:.2f} bpw)")
                continue
            line, = ax.plot(range(1, len(h) + 1), h, "-o", markersize=3,
                            label=f"rank {run['rank']} ({run['bpw']:.2f} bpw)")
            ax.plot(run["best"] + 1, h[run["best"]], "*", color=line.get_color(), markersize=10)
        ax.set_title(layer_title(name, studies), fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(r"$\|W_s - \hat W_s\|_F / \|W_s\|_F$")
    fig.suptitle("Alternation of LLaVA-FA (joint, PolarQuant 2+4, ODC data-free; * = kept iterate)", fontsize=10)
    return save(fig, out)


# --- figure 4: Pareto curves of the sweep ----------------------------------------------------------

def front(points: list[tuple[float, float]], lower: bool) -> list[tuple[float, float]]:
    """The points (bpw, value) that beat every point of fewer bits: a method's Pareto front."""
    best, out = None, []
    for x, y in sorted(points):
        if best is None or (y < best if lower else y > best):
            best = y
            out.append((x, y))
    return out


def plot_metric(ax, runs: dict[str, dict], key: str, lower: bool, log: bool, col: dict) -> list[str]:
    """One panel; returns the names of clipped runs."""
    clipped = []
    for method in col:
        pts = [(r["bpw"], r[key], name) for name, r in runs.items()
               if r["method"] == method and r["bpw"] is not None and r[key] is not None]
        if not pts:
            continue
        shown = [(x, min(y, PPL_CLIP) if log else y, name) for x, y, name in pts]
        clipped += [f"{name} {y:.3g}" for x, y, name in pts if log and y > PPL_CLIP]
        ax.scatter([p[0] for p in shown], [p[1] for p in shown], color=col[method], s=18, label=method, zorder=3)
        fx, fy = zip(*front([(x, y) for x, y, _ in shown], lower))
        ax.plot(fx, fy, color=col[method], linewidth=1)
        for x, y, name in shown:
            if not (log and y >= PPL_CLIP):  # clipped runs are named in the panel's note instead
                ax.annotate(name, (x, y), fontsize=5, textcoords="offset points", xytext=(3, 2), color="0.3")
    if log:
        ax.set_yscale("log")
    return clipped


def plot_pareto(runs: dict[str, dict], out: Path) -> Path:
    base = runs.pop("base", None)
    methods = sorted({r["method"] for r in runs.values()})
    col = colors(methods)
    fig, axes = new_figure(1, len(METRICS), 5.2 * len(METRICS), 4.4)
    for ax, (key, label, lower, log) in zip(axes, METRICS):
        clipped = plot_metric(ax, runs, key, lower, log, col)
        ref = get(base, key) if base else None
        ref = 0.0 if ref is None and base and key == "fidelity.kl" else ref  # the reference to itself
        if ref is not None:
            ax.axhline(ref, color="k", linestyle="--", linewidth=1, label=f"uncompressed ({ref:.3g})")
        if clipped:
            ax.axhline(PPL_CLIP, color="0.6", linestyle=":", linewidth=1)
            ax.text(0.98, 0.9, f"drawn at {PPL_CLIP:.0e} (actual PPL):\n" + "\n".join(clipped),
                    transform=ax.transAxes, fontsize=6, ha="right", va="top")
        ax.set_xlabel("bits per weight (decoder linears, every stored bit)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 8), fontsize=7)
    fig.suptitle("Testbed sweep: quality against bits per weight (line: each method's Pareto front)", fontsize=10)
    return save(fig, out)


# --- entry point -----------------------------------------------------------------------------------

def render_plots(root: Path) -> list[tuple[str, Path]]:
    """Draw every figure whose inputs exist under `root`; (title, png path) of those drawn."""
    results = Path(root) / "docs" / "results"
    figures = results / "figures"
    drawn = []
    studies_path = results / "layer_studies.json"
    if studies_path.exists():
        studies = read_json(studies_path)
        drawn.append(("Singular-value spectra: spatial vs rfft2 half spectrum",
                      plot_spectra(studies, studies_path, figures / "spectra.png")))
        drawn.append(("Error against rank (truncation, joint form at fixed bpw)",
                      plot_error_vs_rank(studies, studies_path, figures / "error_vs_rank.png")))
        drawn.append(("Convergence of the alternation",
                      plot_convergence(studies, studies_path, figures / "convergence.png")))
    else:
        print(f"plots: skipped spectra, error_vs_rank, convergence: no {studies_path}", file=sys.stderr)
    runs = sweep_runs(results / "testbed_h100")
    if any(name != "base" for name in runs):
        drawn.append(("Quality against bits per weight (testbed sweep)", plot_pareto(runs, figures / "pareto.png")))
    else:
        print(f"plots: skipped pareto: no sweep records in {results / 'testbed_h100'}", file=sys.stderr)
    return drawn


if __name__ == "__main__":
    for title, png in render_plots(Path(__file__).resolve().parents[1]):
        print(f"{png}  {title}")
