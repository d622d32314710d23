"""`affine` checkpoints export to compressed-tensors' pack-quantized format, and transformers' own
compressed-tensors support reads back exactly our dequantized weights."""

from __future__ import annotations

import json

import pytest
import torch

import compress_fixtures as F

pytest.importorskip("compressed_tensors")


def _compressed_llama(tmp_path, method: str, options: dict):
    from llava_fa.pipeline import compress_checkpoint
    from llava_fa.recipe import Recipe

    src = F.save_llama_dir(tmp_path / "dense")
    out = tmp_path / method
    recipe = Recipe(method=method, options=options)
    recipe.calibration.source, recipe.calibration.nsamples, recipe.calibration.seqlen = "builtin", 4, 32
    compress_checkpoint(src, recipe, out)
    return out


@pytest.mark.parametrize("method,options", [("rtn", {"bits": 4, "group_size": 32}),
                                            ("gptq", {"bits": 3, "group_size": 64, "sym": True}),
                                            ("hqq", {"bits": 2, "group_size": 16})])
def test_export_reads_back_our_weights(tmp_path, method, options):
    import llava_fa  # noqa: F401  (registers our quantizer for the reference model)
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from llava_fa.formats import AffineLinear
    from llava_fa.io.compressed_tensors import export_compressed_tensors

    ours_dir = _compressed_llama(tmp_path, method, options)
    exported = tmp_path / "ct"
    qconfig = export_compressed_tensors(ours_dir, exported)
    assert json.loads((exported / "config.json").read_text())["quantization_config"] == qconfig
    ours = AutoModelForCausalLM.from_pretrained(ours_dir, dtype=torch.float32)
    dense = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(dequantize=True))
    layers = {n: m for n, m in ours.named_modules() if isinstance(m, AffineLinear)}
    assert len(layers) == 14
    for name, layer in layers.items():
        torch.testing.assert_close(dense.get_submodule(name).weight, layer.dequantize(), rtol=0, atol=0)
    ids = F.text_inputs()["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(dense(input_ids=ids).logits, ours(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    if options.get("sym"):
        # Kept packed until it runs. (Asymmetric checkpoints do not load this way with compressed-tensors
        # 0.20.1 + transformers 5.24: the skeleton's zero point is not packed; vLLM unpacks it itself.)
        packed = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
        with torch.no_grad():
            torch.testing.assert_close(packed(input_ids=ids).logits, ours(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_export_refuses_formats_without_a_counterpart(tmp_path):
    from llava_fa.errors import ConfigError
    from llava_fa.io.compressed_tensors import export_compressed_tensors

    ours_dir = _compressed_llama(tmp_path, "fa", {"structure": "quant"})
    with pytest.raises(ConfigError, match="fourier have no compressed-tensors counterpart"):
        export_compressed_tensors(ours_dir, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()


def test_export_command(tmp_path):
    from typer.testing import CliRunner

    from llava_fa.commands.app import app

    ours_dir = _compressed_llama(tmp_path, "rtn", {"bits": 4, "group_size": 32})
    result = CliRunner().invoke(app, ["export", str(ours_dir), "--out", str(tmp_path / "ct")])
    assert result.exit_code == 0, result.output
    assert "compressed-tensors pack-quantized (4-bit groups of 32)" in result.output
    again = CliRunner().invoke(app, ["export", str(ours_dir), "--out", str(tmp_path / "ct")])
    assert again.exit_code != 0 and "already exists" in str(again.exception or again.output)
