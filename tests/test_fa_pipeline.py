"""`fa` and `fa-gptq` end to end: the pipeline with calibrated ODC, then save and load a checkpoint of `fourier` layers."""

import pytest
import torch

import compress_fixtures as F
from llava_fa.io.checkpoint import load_model, quantization_config, save_compressed
from llava_fa.formats.fourier import FourierLinear
from llava_fa.methods import build_config, get_method
from llava_fa.pipeline import compress_model
from llava_fa.selection import default_patterns, find_parts, select


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method,opts", [
    ("fa", {"odc": "calibrated", "rank": 4, "mag_bits": 6, "phase_bits": 6, "group_size": 32, "iters": 2}),
    ("fa-gptq", {"mag_bits": 6, "phase_bits": 6, "group_size": 32}),
])
def test_compress_save_load(tmp_path, method, opts):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    F.save_llava_dir(tmp_path / "dense")
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "dense").eval()
    names = select(model, *default_patterns(find_parts(model)))
    meth = get_method(method)(build_config(method, opts))
    samples = [F.llava_inputs(seed=0), F.text_inputs(seed=1)]
    inputs = F.llava_inputs(seed=3)
    with torch.no_grad():
        dense = model(**inputs).logits
    rows = compress_model(model, meth, names, samples)
    assert len(rows) == len(names) and all(r.format == "fourier" and r.act_error < 0.05 for r in rows)
    with torch.no_grad():
        ref = model(**inputs).logits
    assert ((ref - dense).norm() / dense.norm()) < 0.05
    qc = quantization_config(model, method, meth.config.to_dict(), ["Linear"], [])
    out = save_compressed(model, tmp_path / "q", qc, AutoProcessor.from_pretrained(tmp_path / "dense"))
    loaded = load_model(out)
    for n in names:
        a, b = loaded.get_submodule(n), model.get_submodule(n)
        assert isinstance(a, FourierLinear) and a.params() == b.params()
        assert torch.equal(a.dequantize(), b.dequantize()) and a.storage_bits() == b.storage_bits()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, ref)
        for n in names:
            loaded.get_submodule(n).forward_mode = "spectral"
        torch.testing.assert_close(loaded(**inputs).logits, ref, rtol=1e-4, atol=1e-4)
