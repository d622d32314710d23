"""scripts/plots.py: figures from tiny fake records (missing inputs are skipped, bad ones raise)."""

import importlib.util
import json
from pathlib import Path

import pytest

from llava_fa.errors import DataError

_spec = importlib.util.spec_from_file_location("plots", Path(__file__).resolve().parents[1] / "scripts" / "plots.py")
plots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plots)

LAYER = "layers.0.self_attn.q_proj"


def _studies() -> dict:
    joint = [{"series": s, "options": {"transform": "none"} if s == "spatial" else {}, "rank": r, "bpw": 3.2,
              "mag_bits": 2, "phase_bits": 4, "real_bits": 3, "weight_rel_error": e, "act_rel_error": e / 2}
             for s in ("rfft2", "spatial") for r, e in ((0, 0.2), (4, 0.3))]
    conv = [{"rank": 0, "bpw": 3.1, "history": [2.0], "rel_history": [0.2], "best": 0},
            {"rank": 8, "bpw": 3.5, "history": [1.8, 1.6, 1.7], "rel_history": [0.18, 0.16, 0.17], "best": 1}]
    return {
        "meta": {"target_bpw": 3.2},
        "layers": {LAYER: {"shape": [4, 6]}},
        "spectra": {LAYER: {"spatial": [3.0, 2.0, 1.0, 0.5], "fft2": [3.0, 2.0, 1.0, 0.5],
                            "rfft2": [2.5, 1.5, 1.0], "rfft2_weighted": [2.6, 1.6, 1.0]}},
        "truncation": {LAYER: {"spatial": {"ranks": [0, 2, 4], "rel_error": [1.0, 0.4, 0.0],
                                           "stored_reals": [0, 20, 40]},
                               "rfft2": {"ranks": [0, 2, 4], "rel_error": [1.0, 0.3, 0.0],
                                         "stored_reals": [0, 32, 64]}}},
        "joint_budget": {LAYER: joint},
        "convergence": {LAYER: conv},
    }


def _record(bpw, ppl, acc, kl) -> dict:
    return {"size": {"decoder_linear": {"bpw": bpw}}, "perplexity": {"ppl": ppl},
            "vqa": {"fast": {"accuracy": acc}}, "fidelity": None if kl is None else {"kl": kl}}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _sweep(root: Path) -> None:
    d = root / "docs" / "results" / "testbed_h100"
    _write(d / "base.json", _record(32.0, 21.3, 0.88, None))
    _write(d / "fa3q.json", _record(3.16, 70.9, 0.36, 3.4))
    _write(d / "fa3q.report.json", {"method": "fa"})
    _write(d / "fa2q.json", _record(2.16, 8.7e4, 0.02, 12.6))  # absurd PPL: drawn at the clip
    _write(d / "rtn3.json", _record(3.30, 76.1, 0.35, 3.0))  # no report: method from the name
    _write(d / "gptq3.json", {"size": {"decoder_linear": {"bpw": 3.3}}, "perplexity": {"ppl": 53.0}})  # partial


def test_renders_all_figures_deterministically(tmp_path):
    _write(tmp_path / "docs" / "results" / "layer_studies.json", _studies())
    _sweep(tmp_path)
    drawn = plots.render_plots(tmp_path)
    figures = tmp_path / "docs" / "results" / "figures"
    assert [p.name for _, p in drawn] == ["spectra.png", "error_vs_rank.png", "convergence.png", "pareto.png"]
    first = {}
    for title, png in drawn:
        assert title and png.parent == figures
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
        assert b"Software" not in data and b"Creation" not in data
        first[png.name] = data
    assert sorted(p.name for p in figures.iterdir()) == sorted(first)  # no temporary files left
    plots.render_plots(tmp_path)
    assert all(png.read_bytes() == first[png.name] for _, png in drawn)


def test_missing_inputs_are_skipped(tmp_path, capsys):
    assert plots.render_plots(tmp_path) == []
    _sweep(tmp_path)
    assert [p.name for _, p in plots.render_plots(tmp_path)] == ["pareto.png"]
    assert "layer_studies.json" in capsys.readouterr().err


def test_bad_records_raise(tmp_path):
    path = tmp_path / "docs" / "results" / "layer_studies.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(DataError, match="layer_studies.json"):
        plots.render_plots(tmp_path)
    _write(path, {"layers": {}})
    with pytest.raises(DataError, match="no 'spectra' section"):
        plots.render_plots(tmp_path)


def test_methods_and_fronts():
    assert plots.method_of("svdllm40", None) == "svd-llm"
    assert plots.method_of("arbrc1", None) == "arb-rc"
    assert plots.method_of("fa3j_none", None) == "fa"
    assert plots.method_of("x3", {"method": "hqq"}) == "hqq"
    assert plots.front([(3, 50.0), (2, 80.0), (3.1, 60.0), (4, 30.0)], lower=True) == [(2, 80.0), (3, 50.0), (4, 30.0)]
