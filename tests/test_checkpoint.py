"""Save / load: safetensors + quantization_config, transformers' from_pretrained, broken files."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import compress_fixtures as F
import llava_fa  # noqa: F401  (registers the quantizer with transformers)
from llava_fa.errors import CheckpointError
from llava_fa.io.checkpoint import load_model, quantization_config, save_compressed
from llava_fa.io.files import read_header
from llava_fa.io.modules import MANIFEST
from llava_fa.formats import AffineLinear
from llava_fa.methods import build_config, get_method
from llava_fa.pipeline import compress_model, default_patterns, find_parts, select


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny LLaVA, its decoder compressed with 3-bit GPTQ, saved with its processor."""
    from transformers import AutoProcessor

    root = tmp_path_factory.mktemp("ckpt")
    F.save_llava_dir(root / "dense")
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(root / "dense").eval()
    names = select(model, *default_patterns(find_parts(model)))
    meth = get_method("gptq")(build_config("gptq", {"bits": 3, "group_size": 32}))
    samples = [F.llava_inputs(seed=0), F.text_inputs(seed=1)]
    compress_model(model, meth, names, samples)
    qc = quantization_config(model, "gptq", meth.config.to_dict(), ["Linear"], [])
    out = save_compressed(model, root / "q", qc, AutoProcessor.from_pretrained(root / "dense"), report={"ok": 1})
    return model, out, names


def test_from_pretrained_returns_the_compressed_model(saved):
    from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

    model, out, names = saved
    assert not list(out.parent.glob(".q.tmp-*"))
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "llava_fa" and cfg["method"] == "gptq" and cfg["method_config"]["bits"] == 3
    assert set(cfg["modules"]) == set(names)
    assert cfg["modules"][names[0]] == {"format": "affine", "in_features": 64, "out_features": 64, "bias": False,
                                        "params": {"bits": 3, "group_size": 32, "sym": False}}
    assert not [p for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
    inputs = F.llava_inputs(seed=3)
    with torch.no_grad():
        ref = model(**inputs).logits
    for cls in (LlavaForConditionalGeneration, AutoModelForImageTextToText):
        loaded = cls.from_pretrained(out)
        assert isinstance(loaded.get_submodule(names[0]), AffineLinear)
        for n in names:
            assert torch.equal(loaded.get_submodule(n).qweight, model.get_submodule(n).qweight)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).logits, ref)
    generated = loaded.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 4)
    # loading in bf16 keeps the stored tensors as they are
    bf = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.bfloat16)
    q = bf.get_submodule(names[0])
    assert q.scales.dtype == torch.int16 and q.storage_bits() == model.get_submodule(names[0]).storage_bits()


def test_storage_bits_are_the_stored_bytes(saved):
    _, out, names = saved
    header = read_header(out / "model.safetensors")
    loaded = load_model(out)
    nbytes = {"U8": 1, "I16": 2}
    for n in names:
        mod = loaded.get_submodule(n)
        stored = {k: v for k, v in header.items() if k.startswith(n + ".")}
        assert set(stored) == {f"{n}.{t}" for t in ("qweight", "scales", "qzeros")}
        on_disk = sum((v["data_offsets"][1] - v["data_offsets"][0]) for v in stored.values())
        assert on_disk == sum(nbytes[v["dtype"]] * torch.Size(v["shape"]).numel() for v in stored.values())
        assert mod.storage_bits() == 8 * on_disk


def test_processor_and_report_are_saved(saved):
    from transformers import AutoProcessor

    _, out, _ = saved
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "LlavaProcessor"
    assert json.loads((out / "compress_report.json").read_text()) == {"ok": 1}
    assert set(json.loads((out / MANIFEST).read_text())["files"]) == {"model.safetensors"}


def test_registration_is_lazy_and_happens_on_import(saved):
    _, out, names = saved
    code = textwrap.dedent(f"""
        import sys
        import llava_fa
        assert "transformers" not in sys.modules, "import llava_fa must stay cheap"
        from transformers import AutoModelForImageTextToText
        m = AutoModelForImageTextToText.from_pretrained({str(out)!r})
        print(type(m.get_submodule({names[0]!r})).__name__)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("AffineLinear")


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_corrupted_and_missing_files(saved, tmp_path):
    from transformers import LlavaForConditionalGeneration

    _, out, _ = saved
    truncated = _copy(out, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    for load in (load_model, LlavaForConditionalGeneration.from_pretrained):
        with pytest.raises(CheckpointError, match="truncated or corrupted"):
            load(truncated)

    flipped = _copy(out, tmp_path / "flipped")
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (flipped / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        LlavaForConditionalGeneration.from_pretrained(flipped)

    no_manifest = _copy(out, tmp_path / "no_manifest")
    (no_manifest / MANIFEST).unlink()
    (no_manifest / "model.safetensors").write_bytes((truncated / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="truncated or corrupted"):  # still checked without checksums
        load_model(no_manifest)

    no_weights = _copy(out, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing file .*model.safetensors"):
        load_model(no_weights)

    no_config = _copy(out, tmp_path / "no_config")
    (no_config / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing file .*config.json"):
        load_model(no_config)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")

    bad_format = _copy(out, tmp_path / "bad_format")
    cfg = json.loads((bad_format / "config.json").read_text())
    next(iter(cfg["quantization_config"]["modules"].values()))["format"] = "nosuch"
    (bad_format / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown storage format 'nosuch'"):
        load_model(bad_format)

    wrong_shape = _copy(out, tmp_path / "wrong_shape")
    cfg = json.loads((wrong_shape / "config.json").read_text())
    next(iter(cfg["quantization_config"]["modules"].values()))["params"]["bits"] = 4
    (wrong_shape / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_model(wrong_shape)


def test_a_checkpoint_resaved_by_transformers_loads(saved, tmp_path):
    from transformers import LlavaForConditionalGeneration

    _, out, names = saved
    model = LlavaForConditionalGeneration.from_pretrained(out)
    model.save_pretrained(tmp_path / "resaved")
    assert not (tmp_path / "resaved" / MANIFEST).exists()
    again = load_model(tmp_path / "resaved")
    assert torch.equal(again.get_submodule(names[0]).dequantize(), model.get_submodule(names[0]).dequantize())


def test_writes_are_atomic(saved, tmp_path):
    model, out, _ = saved
    qc = model.config.quantization_config

    class Broken:
        def save_pretrained(self, path):
            (path / "half.json").write_text("{")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_compressed(model, tmp_path / "new", qc, Broken())
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary folder

    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="already exists.*--overwrite"):
        save_compressed(model, tmp_path / "existing", qc)
    save_compressed(model, tmp_path / "existing", qc, overwrite=True)
    assert not (tmp_path / "existing" / "keep.txt").exists() and (tmp_path / "existing" / MANIFEST).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
