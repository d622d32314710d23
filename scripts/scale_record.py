"""One JSON record of a scale run (scripts/device/scale.sh): wall time, peak memory per GPU from
an nvidia-smi sample log, the compressed folder's report summary; or, with --compare A B, whether
two compressed folders store identical tensors (sha256 of every tensor)."""

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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--name")
    p.add_argument("--procs", type=int)
    p.add_argument("--rc", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--smi")
    p.add_argument("--out-dir")
    p.add_argument("--compare", nargs=2)
    args = p.parse_args()
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
