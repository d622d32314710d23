"""Every model family compresses correctly: each decoder layer calibrated with its own arguments
(Gemma 3's sliding and full attention, Mllama's cross-attention), evaluation through the model's own
processor (Qwen2-VL, Idefics3), and a missing processor is an error, never a silent text-only run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image

import compress_fixtures as F
import vlm_fixtures as V
from test_family_matrix import FAMILIES as MATRIX
from llava_fa.calibration.data import build_samples
from llava_fa.errors import DataError
from llava_fa.formats import CompressedLinear, unfuse_experts
from llava_fa.methods import build_config, get_method
from llava_fa.pipeline import compress_model
from llava_fa.selection import default_patterns, find_parts, select

pytestmark = pytest.mark.usefixtures("one_thread")


class ExactLinear(CompressedLinear):
    """The dense weight itself: compressing with it changes nothing, so every later layer's inputs
    are those of the original model."""

    format = "test-exact"

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight.shape[1], weight.shape[0])
        self.register_buffer("weight_copy", weight.detach().clone())

    def params(self) -> dict:
        return {}

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.weight_copy.to(dtype)


class Identity:
    """A method that keeps every weight and records the statistics each layer was calibrated with."""

    name, needs = "identity", frozenset({"xtx"})

    def __init__(self):
        self.stats = []

    def check_layer(self, name, linear):
        pass

    def compress(self, weight, stats, bias=None):
        self.stats.append(stats)
        return ExactLinear(weight).set_bias(bias)


def decoder_names(model):
    return select(model, *default_patterns(find_parts(model)))


@torch.no_grad()
def plain_inputs(model, names, samples) -> dict[str, list[torch.Tensor]]:
    """The input rows of each linear in a plain forward of `model` (a layer it skips adds nothing).
    Fused MoE experts are linearized first: their loop is the fused module's own (formats/experts.py)."""
    unfuse_experts(model, names)
    seen = {n: [] for n in names}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: seen[n].append(a[0].reshape(-1, a[0].shape[-1]).float())) for n in names]
    for s in samples:
        model(**s)
    for h in hooks:
        h.remove()
    return seen


def xtx(rows: list[torch.Tensor]) -> torch.Tensor:
    x = torch.cat(rows)
    return x.T @ x


FAMILIES = {
    "gemma3": (F.gemma3, lambda seed: F.text_inputs(seed=seed)),
    "llama": (F.llama, lambda seed: F.text_inputs(seed=seed)),
    "mllama": (F.mllama, lambda seed: F.mllama_inputs(seed=seed) if seed == 0 else F.text_inputs(seed=seed)),
    # Qwen3-VL adds deepstack image features after its first layer (capture.py), Gemma 3's VLM
    # attends bidirectionally within an image; the rest put image features in the sequence.
    **{name: V.FAMILIES[name] for name in ("qwen3_vl", "gemma3_vlm", "llava_next", "llava_onevision", "paligemma",
                                           "internvl", "smolvlm")},
}
FAMILIES.update({name: family for name, family in MATRIX.items() if name not in FAMILIES})  # the other families


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_is_calibrated_with_the_arguments_of_a_plain_forward(family):
    build, inputs = FAMILIES[family]
    model = build()
    samples = [inputs(0), inputs(1)]
    names = decoder_names(model)
    expected = plain_inputs(copy.deepcopy(model), names, samples)
    method = Identity()
    compress_model(model, method, names, samples)
    assert len(method.stats) == len(names)  # compress is called in module order
    for name, stats in zip(names, method.stats):
        rows = expected[name]
        assert stats.count() == sum(r.shape[0] for r in rows), name
        torch.testing.assert_close(stats.xtx_sum(), xtx(rows), rtol=1e-5, atol=1e-4, msg=name)


def test_gemma3_full_attention_layers_see_another_mask_than_sliding_ones():
    """The check above can tell: layer 1 (full attention) computes other inputs for its o_proj when
    given the sliding-window arguments, as the pipeline gave it before."""
    mixed = F.gemma3()
    sliding = F.gemma3(layer_types=("sliding_attention",) * 3)
    sliding.load_state_dict(mixed.state_dict())
    samples = [F.text_inputs(seed=0)]
    name = "model.layers.1.self_attn.o_proj"
    full, local = xtx(plain_inputs(mixed, [name], samples)[name]), xtx(plain_inputs(sliding, [name], samples)[name])
    assert (full - local).norm() > 0.05 * full.norm()


def test_mllama_cross_attention_keys_and_values_are_calibrated_on_vision_tokens():
    model = F.mllama()
    samples = [F.mllama_inputs(seed=0), F.text_inputs(seed=1), F.mllama_inputs(seed=2)]
    names = decoder_names(model)
    method = Identity()
    compress_model(model, method, names, samples)
    stats = dict(zip(names, method.stats))
    vision_tokens = 2 * 5  # two image samples, each one tile of 2x2 patches + CLS
    for proj in ("k_proj", "v_proj"):
        assert stats[f"model.language_model.layers.1.cross_attn.{proj}"].tokens == {"image": vision_tokens, "text": 0}
    # The queries are the text (the cross-attention layer is skipped for the text-only sample); the
    # <|image|> placeholder is a plain token of the text, never image features.
    assert stats["model.language_model.layers.1.cross_attn.q_proj"].tokens == {"image": 0, "text": 2 * 12}
    assert stats["model.language_model.layers.0.self_attn.q_proj"].tokens == {"image": 0, "text": 2 * 12 + 16}


def test_a_model_that_changes_hidden_states_between_layers_is_refused_unless_declared_additive(monkeypatch):
    """Qwen3-VL adds image features to the hidden states after its first layers (deepstack). Declared
    additive in the architecture table, the added terms are recorded and added back (the test above
    checks the result); a model that changes them without such a declaration is refused, since the
    layer-by-layer pass would silently miss the change."""
    from llava_fa.calibration import architectures
    from llava_fa.errors import ConfigError

    model = V.qwen3_vl()
    monkeypatch.setitem(architectures.ARCHITECTURES, "qwen3_vl", architectures.DEFAULT)
    with pytest.raises(ConfigError, match="changes the hidden states between decoder layers 0 and 1"):
        compress_model(model, Identity(), decoder_names(model), [F.qwen2vl_inputs()])
    compress_model(model, Identity(), decoder_names(model), [F.text_inputs()])  # text only: no deepstack


@pytest.mark.parametrize("method_name", ["rtn", "gptq"])
def test_mllama_compress_reload_and_generate(tmp_path, method_name):
    from llava_fa.io.checkpoint import load_model, quantization_config, save_compressed

    model = F.mllama()
    names = decoder_names(model)
    probe = F.mllama_inputs(seed=5)
    with torch.no_grad():
        dense = model(**probe).logits
    method = get_method(method_name)(build_config(method_name, {"bits": 8, "group_size": 32}))
    samples = [F.mllama_inputs(seed=0), F.text_inputs(seed=1)]
    rows = compress_model(model, method, names, samples if method.needs else [])
    assert len(rows) == len(names) and any("cross_attn.k_proj" in r.name for r in rows)
    with torch.no_grad():
        compressed = model(**probe).logits
    assert (compressed - dense).norm() / dense.norm() < 0.02
    qc = quantization_config(model, method_name, method.config.to_dict(), ["Linear"], [])
    loaded = load_model(save_compressed(model, tmp_path / "q", qc))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**probe).logits, compressed)
        gen = dict(max_new_tokens=3, do_sample=False, pad_token_id=257)
        torch.testing.assert_close(loaded.generate(**probe, **gen), model.generate(**probe, **gen))


# --- evaluation through the model's own processor --------------------------------------------------------

ANSWERS = ["circle", "rectangle", "triangle", "yes", "no", "blue", "green"]  # distinct first bytes (fast mode)
QUESTIONS = [("what shape is in the image?", "circle", 0), ("is there a blue shape?", "no", 0),
             ("what color is the shape?", "green", 1), ("does the image contain a triangle?", "yes", 1),
             ("what shape is present?", "rectangle", 2)]
TEXT = " ".join(f"The river rises in the hills number {i} and runs to the sea." for i in range(8))


def write_easyvqa(root):
    """Five-question easy-VQA train and test splits with the asset's layout (answers.txt,
    SPLIT/questions.json, SPLIT/images/ID.png); the asset's answers share first bytes, which the
    byte tokenizer cannot rank."""
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True)
        for i, color in enumerate(("red", "blue", "green")):
            Image.new("RGB", (64, 64), color).save(root / split / "images" / f"{i}.png")
        (root / split / "questions.json").write_text(json.dumps([list(q) for q in QUESTIONS]))
    (root / "answers.txt").write_text("\n".join(ANSWERS) + "\n")
    return root


VLMS = {"qwen2-vl": F.save_qwen2vl_dir, "idefics3": F.save_idefics3_dir}


@pytest.fixture(params=VLMS)
def vlm_dir(request, tmp_path):
    with F.without_video_processor():
        yield VLMS[request.param](tmp_path / request.param)


@torch.no_grad()
def test_batched_vqa_inputs_match_each_question_alone(vlm_dir, tmp_path):
    """Left-padded batches carry every processor input and generate()'s positions: each row's
    next-token logits are those of its question processed alone."""
    from llava_fa.evaluation._common import image_batch, padded_positions
    from llava_fa.evaluation.runner import load_for_evaluation
    from llava_fa.evaluation.vqa import vqa_prompt, vqa_questions

    model, processor, multimodal = load_for_evaluation(vlm_dir, torch.device("cpu"), torch.float32)
    examples = vqa_questions(root=write_easyvqa(tmp_path / "vqa"))
    texts = [vqa_prompt(processor, ex) for ex in examples]
    batch = image_batch(model, processor, [ex.image_path for ex in examples], texts)
    assert multimodal and {"image_grid_thw", "pixel_attention_mask"} & set(batch)
    logits = model(**batch, position_ids=padded_positions(model, batch), use_cache=False).logits[:, -1]
    for i, ex in enumerate(examples):
        alone = image_batch(model, processor, [ex.image_path], [texts[i]])
        torch.testing.assert_close(logits[i], model(**alone, use_cache=False).logits[0, -1], rtol=1e-4, atol=1e-4)


def test_calibration_and_chat_pass_every_processor_input(vlm_dir, tmp_path, monkeypatch):
    from llava_fa.commands.chat import answer
    from llava_fa.evaluation.runner import load_for_evaluation

    root = write_easyvqa(tmp_path / "vqa")
    monkeypatch.setattr("llava_fa.testbed.easyvqa.easy_vqa_root", lambda: root)
    with F.without_video_processor():
        model, processor, _ = load_for_evaluation(vlm_dir, torch.device("cpu"), torch.float32)
        samples, _ = build_samples(processor, "easyvqa", 2, 8, multimodal=True)
        reply = answer(vlm_dir, "What shape is in the image?", root / "train" / "images" / "0.png", max_new_tokens=2)
    assert isinstance(reply, str)
    assert all({"image_grid_thw", "pixel_attention_mask"} & set(s) for s in samples)
    names = decoder_names(model)
    method = Identity()
    compress_model(model, method, names, samples)
    image_tokens = sum(int((s["input_ids"] == model.config.image_token_id).sum()) for s in samples)
    assert image_tokens > 0 and method.stats[0].count("image") == image_tokens


def test_cli_eval_with_reference_runs_every_measure(vlm_dir, tmp_path):
    from typer.testing import CliRunner

    from llava_fa.commands.app import app

    root = write_easyvqa(tmp_path / "vqa")
    text = tmp_path / "text.raw"
    text.write_text(TEXT)
    out = tmp_path / "result.json"
    args = ["eval", str(vlm_dir), "--reference", str(vlm_dir), "--text", str(text), "--seqlen", "16",
            "--ppl-windows", "2", "--vqa-root", str(root), "--device", "cpu", "--json", str(out)]
    with F.without_video_processor():
        res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["multimodal"] and result["size"]["decoder_linear"]["count"] == 14
    assert result["perplexity"]["windows"] == 2 and result["perplexity"]["ppl"] > 1
    assert result["vqa"]["fast"]["n"] == len(QUESTIONS) and result["vqa"]["fast"]["accuracy"] is not None
    assert result["fidelity"]["prompts"] == "easy-VQA" and result["fidelity"]["kl"] == pytest.approx(0, abs=1e-6)


# --- a model that takes images needs its processor -------------------------------------------------------

def test_a_vlm_without_its_processor_is_an_error_naming_cause_and_fix(tmp_path):
    from llava_fa.evaluation.runner import load_for_evaluation
    from llava_fa.pipeline import compress_checkpoint
    from llava_fa.recipe import Calibration, Recipe

    dense = tmp_path / "tokenizer-only"
    F.llava().save_pretrained(dense)
    F.tokenizer().save_pretrained(dense)  # the image processor is missing
    for nsamples in (0, 4):  # rtn without calibration would still save a folder that cannot take images
        recipe = Recipe(method="rtn", options={"bits": 8}, calibration=Calibration(nsamples=nsamples, seqlen=8))
        with pytest.raises(DataError, match="takes images.*Can't load image processor.*Fix: copy the processor files"):
            compress_checkpoint(dense, recipe, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="takes images"):
        load_for_evaluation(dense, torch.device("cpu"), torch.float32)
    with pytest.raises(DataError, match="takes images.*without an image processor.*Fix: pass the model's processor"):
        build_samples(F.tokenizer(), "easyvqa", 2, 8, multimodal=True)


def test_a_processor_that_needs_torchvision_names_it(tmp_path):
    import importlib.util

    from llava_fa.calibration.data import require_image_processor
    from llava_fa.io.checkpoint import load_processor

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: Qwen2-VL's processor loads")
    with F.without_video_processor():
        path = F.save_qwen2vl_dir(tmp_path / "qwen2-vl")
    with pytest.raises(DataError, match="(?i)takes images.*requires the torchvision library.*pip install torchvision"):
        require_image_processor(load_processor(path), path)
