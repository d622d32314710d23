"""Memory-bounded (streamed) compression, pipeline/streaming.py: the model is a meta skeleton whose
decoder layers are read from the safetensors files one at a time and written once compressed. It
must store exactly the tensors the in-memory path stores, with the same config files, and never hold
more than one decoder layer at a time."""

from __future__ import annotations

import json

import pytest
import torch

import compress_fixtures as F
from llava_fa.io.files import tensor_digests
from llava_fa.io.lazy import LazyWeights, open_lazy
from llava_fa.pipeline import compress_checkpoint
from llava_fa.pipeline import streaming
from llava_fa.recipe import Calibration, Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

CALIBRATION = Calibration(source="builtin", nsamples=4, seqlen=32)
CONFIG_FILES = ("config.json", "generation_config.json")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return F.save_llava_dir(tmp_path_factory.mktemp("dense") / "llava")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return F.save_llama_dir(tmp_path_factory.mktemp("dense") / "llama")


def both_ways(tmp_path, dense, recipe):
    said = []
    compress_checkpoint(dense, recipe, tmp_path / "whole", stream=False)
    compress_checkpoint(dense, recipe, tmp_path / "streamed", on_info=said.append)
    return said


def assert_same_checkpoint(a, b):
    digests = tensor_digests(a)
    assert digests and digests == tensor_digests(b)
    for name in CONFIG_FILES:
        if (a / name).exists():
            assert json.loads((a / name).read_text()) == json.loads((b / name).read_text()), name


@pytest.mark.parametrize("method,options", [("fa", {"odc": "calibrated", "rank": 4, "iters": 2}),
                                            ("gptq", {"bits": 3, "act_order": True}), ("rtn", {})])
def test_streamed_llama_stores_the_tensors_of_the_in_memory_path(tmp_path, llama_dir, method, options):
    said = both_ways(tmp_path, llama_dir, Recipe(method=method, options=options, calibration=CALIBRATION))
    assert any(line.startswith("loading layer by layer") for line in said)
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "streamed")
    assert sorted(p.name for p in (tmp_path / "streamed").glob("*.safetensors")) == ["model.safetensors"]
    assert not any(tmp_path.glob(".streamed.work"))  # the work dir and its shards are gone


def test_vlm_with_vision_projector_and_head_streams_too(tmp_path, llava_dir):
    recipe = Recipe(method="gptq", options={"bits": 4}, calibration=Calibration(source="mixed", nsamples=4, seqlen=32),
                    targets=None, vision=True, projector=True)
    said = both_ways(tmp_path, llava_dir, recipe)
    assert any(line.startswith("loading layer by layer") for line in said)
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "streamed")
    from llava_fa.io.checkpoint import load_model

    model = load_model(tmp_path / "streamed")  # from_pretrained reads the streamed shards as it read the others
    reference = load_model(tmp_path / "whole")
    inputs = F.llava_inputs(seed=0)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference(**inputs).logits)


def test_one_decoder_layer_in_memory_at_a_time(tmp_path, llava_dir, monkeypatch):
    """At each layer's turn (and so at the peak) only that layer is materialized, and nothing of the
    layers is left in memory at the end."""
    seen, models = [], []
    original = streaming.Streamed.take_layer

    def take_layer(self, run, index):
        original(self, run, index)
        models.append(run.model)
        seen.append((index, LazyWeights.count_materialized(run.layers)))

    monkeypatch.setattr(streaming.Streamed, "take_layer", take_layer)
    recipe = Recipe(method="fa", options={"odc": "calibrated", "rank": 4, "iters": 2}, calibration=CALIBRATION)
    compress_checkpoint(llava_dir, recipe, tmp_path / "out")
    assert [i for i, _ in seen] == [0, 1] and all(n == 1 for _, n in seen)
    model = models[0]
    assert all(t.device.type == "meta" for t in model.state_dict().values())


def test_what_cannot_stream_is_loaded_whole_and_said(tmp_path):
    model = F.llama()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tmp_path / "tied")
    F.tokenizer().save_pretrained(tmp_path / "tied")
    assert "tied" in open_lazy(tmp_path / "tied", torch.float32)
    said = []
    compress_checkpoint(tmp_path / "tied", Recipe(method="rtn", calibration=CALIBRATION), tmp_path / "out",
                        on_info=said.append)
    assert any(line.startswith("loading the whole model into memory (tied") for line in said)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_an_interrupted_streamed_run_resumes_to_the_same_checkpoint(tmp_path, llama_dir):
    recipe = Recipe(method="gptq", options={"bits": 3}, calibration=CALIBRATION)
    compress_checkpoint(llama_dir, recipe, tmp_path / "straight")

    class Interrupt(Exception):
        pass

    def stop_after_one(done, total, label):
        if done == 1:
            raise Interrupt

    work = tmp_path / "work"
    with pytest.raises(Interrupt):
        compress_checkpoint(llama_dir, recipe, tmp_path / "resumed", work_dir=work, on_block=stop_after_one)
    assert (work / "layer_000.json").is_file() and not (tmp_path / "resumed").exists()
    said = []
    compress_checkpoint(llama_dir, recipe, tmp_path / "resumed", work_dir=work, on_info=said.append)
    assert any(line.startswith("resuming from") for line in said)
    assert tensor_digests(tmp_path / "straight") == tensor_digests(tmp_path / "resumed")


def test_past_the_single_file_size_the_shards_stay_apart_with_an_index(tmp_path, llama_dir, monkeypatch):
    from llava_fa.io import shards
    from llava_fa.io.checkpoint import load_model

    recipe = Recipe(method="rtn", calibration=CALIBRATION)
    compress_checkpoint(llama_dir, recipe, tmp_path / "one")
    monkeypatch.setattr(shards, "SINGLE_FILE_BYTES", 0)
    compress_checkpoint(llama_dir, recipe, tmp_path / "many")
    assert len(list((tmp_path / "many").glob("model-*-of-*.safetensors"))) > 2
    assert (tmp_path / "many" / shards.INDEX).is_file()
    assert tensor_digests(tmp_path / "one") == tensor_digests(tmp_path / "many")
    inputs = F.text_inputs()
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "one")(**inputs).logits, load_model(tmp_path / "many")(**inputs).logits)


def test_the_manifest_digest_taken_while_merging_is_the_files(tmp_path, llama_dir):
    """io.shards.merge_safetensors hashes the bytes as it writes them; the manifest must hold the file's sha256."""
    import json

    from llava_fa.io.files import sha256_of
    from llava_fa.io.modules import MANIFEST

    compress_checkpoint(llama_dir, Recipe(method="rtn", calibration=CALIBRATION), tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())["files"]
    assert manifest and all(entry["sha256"] == sha256_of(tmp_path / "out" / name) for name, entry in manifest.items())
