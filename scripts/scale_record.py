"""One JSON record of a scale run (scripts/device/scale.sh): wall time, peak memory per GPU from
an nvidia-smi sample log, the compressed folder's report summary; with --compare A B, whether
two compressed folders store identical tensors (sha256 of every tensor); with --table JSONL, the
runs of a scale.jsonl as a markdown table (the every-method table of the scale issue):

    python scripts/scale_record.py --table docs/results/scale_h200x2/run4_1gpu/scale.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llava_fa.io.files import tensor_digests


def peak_mib(smi_log: Path) -> dict[str, int]:
    peaks: dict[str, int] = {}
    for line in Path(smi_log).read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[1].isdigit():
            peaks[parts[0]] = max(peaks.get(parts[0], 0), int(parts[1]))
    return peaks


STAGES = ("compress", "forward", "statistics", "load layers", "share")


def table(jsonl: Path) -> str:
    """One row per run (the --compare lines left out): seconds end to end and in the pipeline's main
    stages, peak GPU memory per GPU, bits per weight, and the exit status (a failed run says so)."""
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    lines = ["| run | GPUs | exit | wall (s) | pipeline (s) | " + " | ".join(f"{s} (s)" for s in STAGES)
             + " | peak GPU (MiB) | bpw |", "|---|---:|---:|---:|---:|" + "---:|" * len(STAGES) + "---|---:|"]
    for r in rows:
        if "name" not in r:
            continue
        stages = r.get("stage_seconds") or {}
        peaks = " / ".join(f"{v:,}" for v in (r.get("peak_gpu_mib") or {}).values() if v) or "-"
        bpw = (r.get("summary") or {}).get("bpw")
        cells = [r["name"], str(r.get("processes")), str(r.get("rc")), _num(r.get("wall_seconds")),
                 _num(r.get("pipeline_seconds")), *(_num(stages.get(s)) for s in STAGES), peaks,
                 "-" if bpw is None else f"{bpw:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--name")
    p.add_argument("--procs", type=int)
    p.add_argument("--rc", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--smi")
    p.add_argument("--out-dir")
    p.add_argument("--compare", nargs=2)
    p.add_argument("--table", help="a scale.jsonl: print its runs as a markdown table")
    args = p.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return
    if args.compare:
        a, b = (tensor_digests(Path(x)) for x in args.compare)
        print(json.dumps({"compare": args.compare, "tensors": len(a), "identical": bool(a) and a == b,
                          "differing": sorted(k for k in a if a[k] != b.get(k))[:10]}))
        return
    report_path = Path(args.out_dir) / "compress_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    print(json.dumps({"name": args.name, "processes": args.procs, "rc": args.rc, "wall_seconds": args.seconds,
                      "peak_gpu_mib": peak_mib(Path(args.smi)), "pipeline_seconds": report.get("wall_seconds"),
                      "stage_seconds": report.get("stage_seconds"), "rank_stage_seconds": report.get("rank_stage_seconds"),
                      "summary": {k: report.get("summary", {}).get(k) for k in ("layers", "bpw", "rel_error")}}))


if __name__ == "__main__":
    main()
