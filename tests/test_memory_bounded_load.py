"""Memory-bounded loading and evaluation of compressed folders (issue 16, item 1): `load_model` holds the
stored tensors and nothing dense of the compressed layers, reads weights straight onto an accelerator,
and `evaluate` with a reference holds one model at a time with the same fidelity numbers as before."""

from __future__ import annotations

import json
import random
import weakref
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torch.utils._python_dispatch import TorchDispatchMode

import compress_fixtures as F
from llava_fa.formats import CompressedLinear
from llava_fa.io import checkpoint
from llava_fa.io.checkpoint import device_map, load_model
from llava_fa.pipeline import compress_checkpoint
from llava_fa.recipe import Calibration, Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

RTN4 = Recipe(method="rtn", options={"bits": 4}, calibration=Calibration(source="builtin", nsamples=2, seqlen=16))
WORDS = "the shape of a red circle is not the same as the blue square in the image".split()


def _dense_and_rtn(root: Path, save) -> tuple[Path, Path]:
    """(dense tiny model folder written by `save`, its rtn 4-bit compression)."""
    dense = save(root / "dense")
    compress_checkpoint(dense, RTN4, root / "rtn")
    return dense, root / "rtn"


@pytest.fixture(scope="module")
def llava_pair(tmp_path_factory):
    return _dense_and_rtn(tmp_path_factory.mktemp("llava"), F.save_llava_dir)


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    return _dense_and_rtn(tmp_path_factory.mktemp("llama"), F.save_llama_dir)


def stored_bytes(folder: Path) -> int:
    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                total += f.get_tensor(key).nbytes
    return total


def compressed_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, CompressedLinear)]


# --- load_model on CPU --------------------------------------------------------------------------------

def test_compressed_load_holds_the_stored_tensors_only(llava_pair):
    _, rtn = llava_pair
    model = load_model(rtn, "cpu", torch.float32)
    layers = compressed_layers(model)
    assert len(layers) == 14  # q k v o gate up down of the 2 decoder layers
    for name, layer in layers:
        assert not hasattr(layer, "weight"), name
        assert all(not t.is_floating_point() for t in layer.buffers()), name  # codes and scales stay integers
        assert not layer.__dict__.get("_cache"), name  # no dense weight cached by loading
    held = {t.data_ptr(): t.nbytes for t in model.state_dict().values()}  # persistent tensors, once each
    assert sum(held.values()) == stored_bytes(rtn)  # the model in memory is what the folder stores


class FloatBytes(TorchDispatchMode):
    """Bytes of the floating-point tensors every torch op produces while active (whatever allocates them)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type != "meta":
                self.total += t.nbytes
        return out


def test_loading_never_forms_dense_weights_of_compressed_layers(llava_pair):
    """Whatever the loader does on its way (conversions, a quantizer dequantizing, a cached forward), the
    floating-point tensors it makes stay below what the compressed layers would take dense."""
    _, rtn = llava_pair
    with FloatBytes() as made:
        model = load_model(rtn, "cpu", torch.float32)
    dense = sum(m.in_features * m.out_features * 4 for _, m in compressed_layers(model))
    floats = sum(t.nbytes for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())
    assert made.total < floats + dense / 2, (made.total, floats, dense)


# --- placement ------------------------------------------------------------------------------------------

def test_device_map_streams_to_accelerators_only():
    assert device_map("cpu") is None and device_map(torch.device("cpu")) is None
    assert device_map("cuda:1") == {"": torch.device("cuda", 1)}
    assert device_map(torch.device("meta")) == {"": torch.device("meta")}


class FakeModel:
    moved_to = None

    def to(self, device):
        self.moved_to = device
        return self

    def eval(self):
        return self


def test_load_model_reads_the_weights_onto_the_device(llava_pair, monkeypatch):
    """Off the CPU, from_pretrained gets a device_map (the weights go to the device as they are read),
    not a CPU load followed by `.to(device)`."""
    _, rtn = llava_pair
    calls = []

    class FakeClass:
        @staticmethod
        def from_pretrained(path, **kwargs):
            calls.append(kwargs)
            return FakeModel(), {"missing_keys": []}

    monkeypatch.setattr(checkpoint, "model_class", lambda config: FakeClass)
    load_model(rtn, "cuda:0", "auto")
    load_model(rtn, "cpu", torch.float32)
    assert calls[0]["device_map"] == {"": torch.device("cuda", 0)} and calls[0]["dtype"] == "auto"
    assert calls[1]["device_map"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (placement on the device)")
def test_cuda_load_keeps_layers_compressed_on_the_gpu(llava_pair):
    _, rtn = llava_pair
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model = load_model(rtn, "cuda", "auto")
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "cuda" for t in tensors)
    for name, layer in compressed_layers(model):
        assert all(not t.is_floating_point() for t in layer.buffers()), name
    assert torch.cuda.memory_allocated() - before <= stored_bytes(rtn) + (1 << 20)
    inputs = {k: v.cuda() for k, v in F.llava_inputs(seed=0).items()}
    with torch.no_grad():
        model(**inputs)
    assert not any(layer.__dict__.get("_cache") for _, layer in compressed_layers(model))  # "auto" on CUDA


# --- fidelity, one model at a time ------------------------------------------------------------------------

def write_vqa(root: Path, n: int = 5) -> Path:
    """A fake easy-VQA folder (answers.txt, test/questions.json, test/images/{id}.png)."""
    images = root / "test" / "images"
    images.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (60 * i, 200 - 50 * i, 90)).save(images / f"{i}.png")
    answers = ["circle", "red", "yes", "no", "blue"]
    rows = [[f"what is the {WORDS[i]} shape number {i}?", answers[i % 5], i % 2] for i in range(n)]
    (root / "test" / "questions.json").write_text(json.dumps(rows))
    (root / "answers.txt").write_text("\n".join(answers) + "\n")
    return root


def text_file(path: Path, rows: int = 5) -> Path:
    lines = [" ".join(random.Random(i).choices(WORDS, k=24 + 3 * i)) for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind", ["text", "image"])
def test_fidelity_on_disk_equals_fidelity_in_memory(kind, llava_pair, llama_pair, tmp_path):
    from llava_fa.evaluation.fidelity import compare_with_reference, fidelity, record_model_side, text_prompts
    from llava_fa.evaluation.runner import load_for_evaluation
    from llava_fa.testbed.easyvqa import load_split

    dense, rtn = llava_pair if kind == "image" else llama_pair
    model, processor, _ = load_for_evaluation(rtn, torch.device("cpu"), torch.float32)
    ref = load_for_evaluation(dense, torch.device("cpu"), torch.float32)[0]
    if kind == "image":
        examples = load_split("test", write_vqa(tmp_path / "vqa"))
    else:
        examples = text_prompts(text_file(tmp_path / "t.txt").read_text(), 5)
    expected = fidelity(model, ref, processor, examples, batch_size=2, progress=False)
    record = record_model_side(model, processor, examples, tmp_path, batch_size=2, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["0.safetensors", "1.safetensors",
                                                                     "2.safetensors"]
    got = compare_with_reference(ref, tmp_path, record, progress=False)
    assert got == expected and got["kl"] > 0 and got["n_tokens"] > 0  # the same numbers, bit for bit


def test_evaluate_holds_one_model_at_a_time(llama_pair, tmp_path, monkeypatch):
    """The reference loads only once the evaluated model is gone, and fidelity is what `fidelity`
    gives with both models in memory (the numbers eval reported before)."""
    from llava_fa.evaluation import runner
    from llava_fa.evaluation.fidelity import fidelity, text_prompts

    dense, rtn = llama_pair
    text = text_file(tmp_path / "t.txt")
    loaded = []
    original = runner.load_for_evaluation

    def load(model_dir, device, dtype):
        if loaded:  # the reference: the evaluated model must be freed by now
            assert loaded[0]() is None, "the evaluated model is still in memory when the reference loads"
        out = original(model_dir, device, dtype)
        loaded.append(weakref.ref(out[0]))
        return out

    monkeypatch.setattr(runner, "load_for_evaluation", load)
    result = runner.evaluate(rtn, reference=dense, text_source=text, ppl_windows=0, device="cpu",
                             fidelity_prompts=5, batch_size=4, progress=False)
    assert len(loaded) == 2 and result["fidelity"]["prompts"] == "WikiText"
    model, processor, _ = original(rtn, torch.device("cpu"), torch.float32)
    ref = original(dense, torch.device("cpu"), torch.float32)[0]
    expected = fidelity(model, ref, processor, text_prompts(text.read_text(), 5), batch_size=2, progress=False)
    assert {k: result["fidelity"][k] for k in expected} == expected
    assert result["seconds"]["fidelity"] >= 0


def test_a_broken_reference_fails_before_the_metrics(llama_pair, tmp_path, monkeypatch):
    """The reference loads last, so what can be checked without its weights is checked first."""
    from llava_fa.errors import CheckpointError
    from llava_fa.evaluation import runner

    dense, rtn = llama_pair
    broken = tmp_path / "ref"
    broken.mkdir()
    (broken / "config.json").write_text((dense / "config.json").read_text())  # no weights, no tokenizer
    monkeypatch.setattr(runner, "_model_metrics", lambda *a, **k: pytest.fail("metrics ran before the check"))
    with pytest.raises(CheckpointError, match="no weight files"):
        runner.evaluate(rtn, reference=broken, text_source=text_file(tmp_path / "t.txt"), ppl_windows=0,
                        device="cpu", progress=False)
