"""Decode-speed records (`llava-fa bench-decode --json-dir DIR`) to a markdown table and a bar plot.

    python scripts/decode_table.py DIR [--png docs/results/figures/decode_speed.png] [--md FILE]

The table (stdout, or --md FILE) has one row per record: format, bpw, weight memory, TTFT at batch 1,
tokens/s at each batch size and the speed-up over the uncompressed run of the same model (the
synthetic 7B's bf16 run for synthetic records, the first folder without compressed layers for
checkpoint folders). A figure `*` marks a decode that ran eagerly (its CUDA graph did not capture).
The PNG has one panel of tokens/s per batch size and one of weight memory (GiB), one bar per run, in
the style of scripts/plots.py (deterministic PNG, written atomically).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))  # plots beside this script
from plots import colors, read_json, save  # noqa: E402

from llava_fa.errors import DataError  # noqa: E402

GIB = 1 << 30


def load_records(folder: Path) -> list[dict]:
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        r = read_json(path)
        for key in ("name", "decode", "prefill", "memory"):
            if key not in r:
                raise DataError(f"{path} has no '{key}': not a bench-decode record")
        records.append(r)
    if not records:
        raise DataError(f"{folder} holds no bench-decode records (*.json)")
    return records


def group_of(r: dict) -> str:
    """Records compared with one another: the same synthetic shape, or the checkpoint folders."""
    shape = (r.get("model") or {}).get("synthetic")
    return "synthetic " + "x".join(str(v) for v in shape.values()) if shape else "checkpoints"


def baselines(records: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in records:
        if not r.get("compressed_layers") and group_of(r) not in out:
            out[group_of(r)] = r
    return out


def batch_sizes(records: list[dict]) -> list[str]:
    return sorted({b for r in records for b in r["decode"]}, key=int)


def _tps(r: dict, b: str) -> str:
    d = r["decode"].get(b)
    return "" if d is None else f"{d['tokens_per_s']:.1f}{'' if d.get('cuda_graph') else '*'}"


def _speedup(r: dict, base: dict | None, b: str) -> str:
    if base is None or b not in r["decode"] or b not in base["decode"]:
        return ""
    return f"{r['decode'][b]['tokens_per_s'] / base['decode'][b]['tokens_per_s']:.2f}x"


def ordered(records: list[dict]) -> list[dict]:
    """By model group, the uncompressed run first, then by name."""
    return sorted(records, key=lambda r: (group_of(r), bool(r.get("compressed_layers")), r["name"]))


def markdown(records: list[dict]) -> str:
    sizes, base = batch_sizes(records), baselines(records)
    head = (["run", "format", "bpw", "weight GiB", "TTFT ms"] + [f"tok/s b{b}" for b in sizes]
            + [f"speed-up b{b}" for b in sizes])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in ordered(records):
        bpw = r.get("bits_per_weight")
        row = [r.get("label") or r["name"], str(r.get("format", "")), "" if bpw is None else f"{bpw:.3f}",
               f"{r['memory']['weight_bytes'] / GIB:.2f}", f"{r['prefill']['ttft_ms']:.1f}"]
        row += [_tps(r, b) for b in sizes] + [_speedup(r, base.get(group_of(r)), b) for b in sizes]
        lines.append("| " + " | ".join(row) + " |")
    env = records[0].get("environment") or {}
    spec = records[0].get("spec") or {}
    lines.append("")
    lines.append(f"Prompt {spec.get('prompt_len')} tokens (TTFT at batch 1), {spec.get('new_tokens')} greedy tokens "
                 f"per batch size, forward mode {spec.get('forward_mode')}; {env.get('cuda') or 'CPU'}, torch "
                 f"{env.get('torch')}, transformers {env.get('transformers')}. `*`: eager decode (no CUDA graph). "
                 "Synthetic records: random weights and data-free codes, speed and memory only.")
    return "\n".join(lines) + "\n"


def figure(records: list[dict]) -> Figure:
    records, sizes = ordered(records), batch_sizes(records)
    labels = [r.get("label") or r["name"] for r in records]
    col = colors([str(r.get("format")) for r in records])
    fig = Figure(figsize=(4 * (len(sizes) + 1), 0.35 * len(records) + 1.5))
    FigureCanvasAgg(fig)
    panels = [(f"decode tokens/s, batch {b}", [r["decode"].get(b, {}).get("tokens_per_s", 0) for r in records])
              for b in sizes]
    panels.append(("weight memory (GiB)", [r["memory"]["weight_bytes"] / GIB for r in records]))
    axes = fig.subplots(1, len(panels), sharey=True)
    for ax, (title, values) in zip(axes, panels):
        ax.barh(range(len(records)), values, color=[col[str(r.get("format"))] for r in records])
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        for i, v in enumerate(values):
            ax.annotate(f"{v:.1f}", (v, i), fontsize=6, xytext=(2, -2), textcoords="offset points")
    axes[0].set_yticks(range(len(records)), labels)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="folder of bench-decode records")
    p.add_argument("--png", type=Path, default=None, help="write the bar plot here")
    p.add_argument("--md", type=Path, default=None, help="write the table here instead of stdout")
    args = p.parse_args()
    try:
        records = load_records(args.folder)
    except DataError as e:
        sys.exit(f"error: {e}")
    table = markdown(records)
    if args.md:
        args.md.write_text(table)
    else:
        sys.stdout.write(table)
    if args.png:
        print(f"wrote {save(figure(records), args.png)}", file=sys.stderr)


if __name__ == "__main__":
    main()
