"""scripts/scale_record.py --table: the runs of a scale.jsonl as the markdown table the scale issue asks for."""

import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location("scale_record", Path(__file__).resolve().parents[1] / "scripts" / "scale_record.py")
scale_record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scale_record)


def test_table_has_a_row_per_run_and_says_which_failed(tmp_path):
    runs = [{"name": "gptq-1gpu", "processes": 1, "rc": 0, "wall_seconds": 68.04, "pipeline_seconds": 42.5,
             "stage_seconds": {"compress": 16.7, "forward": 5.0}, "peak_gpu_mib": {"0": 5185, "1": 0},
             "summary": {"bpw": 4.3125}},
            {"compare": ["a", "b"], "identical": True},
            {"name": "sab-1gpu", "processes": 1, "rc": 1, "wall_seconds": 3.2, "pipeline_seconds": None,
             "stage_seconds": None, "peak_gpu_mib": {}, "summary": {"bpw": None}}]
    path = tmp_path / "scale.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    lines = scale_record.table(path).splitlines()
    assert len(lines) == 4  # header, separator, two runs (the compare line is not a run)
    assert lines[2].startswith("| gptq-1gpu | 1 | 0 | 68.0 | 42.5 | 16.7 | 5.0 | - |") and "| 5,185 | 4.312 |" in lines[2]
    assert lines[3].startswith("| sab-1gpu | 1 | 1 | 3.2 | - |") and lines[3].endswith("| - | - |")
