"""The summary printed before work starts: every structural part, what the selection takes of it,
what it leaves and why, the method's bits, and the layers that keep a shorter last group."""

from __future__ import annotations

import compress_fixtures as F
from llava_fa.methods import build_config, get_method
from llava_fa.pipeline.summary import count_parts, summarize
from llava_fa.selection import default_patterns, find_parts, select


def _method(name: str = "rtn", **options):
    return get_method(name)(build_config(name, options))


def test_each_part_counts_its_linears_and_says_why_some_are_left():
    model = F.llava()
    parts = find_parts(model)
    targets, ignore = default_patterns(parts, vision=True)
    ignore = ignore + [f"{parts.layers}.1.mlp.down_proj"]
    names = select(model, targets, ignore)
    counts = {c.part: c for c in count_parts(model, names, parts, ignore)}
    assert set(counts) == {"decoder", "vision tower", "projector", "LM head"}
    decoder = counts["decoder"]
    assert (decoder.layers, decoder.selected_layers) == (14, 13)
    assert decoder.reasons == {f"ignored by {parts.layers}.1.mlp.down_proj": 1}
    down = model.get_submodule(f"{parts.layers}.1.mlp.down_proj")
    assert decoder.weights - decoder.selected_weights == down.weight.numel()
    assert counts["vision tower"].selected_layers == counts["vision tower"].layers == 12
    assert counts["projector"].reasons == {"not targeted (--projector)": 2}
    assert counts["LM head"].reasons == {"not targeted (--target lm_head)": 1}
    total = sum(m.weight.numel() for m in model.modules() if type(m).__name__ == "Linear")
    assert sum(c.weights for c in counts.values()) == total


def test_summary_names_the_bits_and_the_layers_with_a_shorter_last_group():
    model = F.llava()
    parts = find_parts(model)
    targets, ignore = default_patterns(parts)
    names = select(model, targets, ignore)
    lines = summarize(model, names, parts, ignore, _method(bits=3, group_size=48))
    assert lines[0] == "method rtn: bits=3, group_size=48, sym=False"
    # decoder widths 64 (q/k/v/o, gate/up: 12 layers) and 128 (down_proj: 2 layers); 48 divides neither
    assert "14 layer(s) (12 of width 64, 2 of width 128) keep a shorter last group" in lines[-1]
    assert not any("shorter" in line for line in summarize(model, names, parts, ignore, _method(group_size=32)))
    # fa groups entries of its spectrum, not input columns: no such note
    fa = summarize(model, names, parts, ignore, _method("fa", group_size=48))
    assert not any("shorter" in line for line in fa) and fa[0].startswith("method fa: transform=rfft,")


def test_compress_prints_the_summary_before_calibrating(tmp_path, run):
    dense = F.save_llava_dir(tmp_path / "dense")
    code, _, text = run("compress", dense, "--method", "rtn", "--bits", "4", "--group-size", "32",
                        "--nsamples", "0", "--device", "cpu", "--out", tmp_path / "q")
    assert code == 0, text
    assert "selection by part:" in text and "not targeted (--vision)" in text
    assert text.index("selection by part:") < text.index("calibration:")
