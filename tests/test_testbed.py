"""The built testbed is a plain transformers LLaVA that answers easy-VQA questions."""

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from llava_fa.testbed import easyvqa
from llava_fa.testbed.prompt import image_prompt
from llava_fa.testbed.train import encode


@pytest.fixture(scope="module")
def loaded(testbed_dir):
    model = AutoModelForImageTextToText.from_pretrained(testbed_dir, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(testbed_dir)


def test_layout_and_processor(testbed_dir, loaded):
    model, processor = loaded
    cfg = json.loads((testbed_dir / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["vision_config"]["model_type"] == "dinov2"
    assert cfg["text_config"]["model_type"] == "llama" and "quantization_config" not in cfg["text_config"]
    assert list(testbed_dir.glob("*.safetensors")) and not list(testbed_dir.glob("*.bin"))
    assert processor.image_token == "<image>" and processor.chat_template
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], add_generation_prompt=True)
    assert chat == image_prompt("hi")


def test_training_encoding_matches_processor(loaded):
    """The projector was trained on token ids built by hand; they must equal the processor's."""
    model, processor = loaded
    ex = easyvqa.load_split("test")[0]
    ids = processor(text=image_prompt(easyvqa.user_text(ex.question)), images=easyvqa.load_image(ex.image_path))["input_ids"][0]
    (hand, _), = encode(processor, [ex], n_image_tokens=64, with_answer=False)
    assert list(ids) == hand


def test_generate_answers_easy_vqa(loaded):
    model, processor = loaded
    questions = easyvqa.load_split("test")[:12]
    correct = 0
    for ex in questions:
        inputs = processor(text=image_prompt(easyvqa.user_text(ex.question)), images=easyvqa.load_image(ex.image_path),
                           return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += easyvqa.normalize_answer(answer) == ex.answer
    assert correct >= 8, f"only {correct}/12 easy-VQA answers right"


def test_small_eval_cli(testbed_dir, tmp_path):
    from typer.testing import CliRunner

    from llava_fa.commands.app import app

    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["eval", str(testbed_dir), "--limit", "24", "--ppl-windows", "2", "--seqlen", "256",
                                   "--json", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["vqa"]["fast"]["n"] == 24 and result["vqa"]["fast"]["accuracy"] > 0.6
    assert 5 < result["perplexity"]["ppl"] < 100 and result["perplexity"]["windows"] == 2
    assert result["size"]["decoder_linear"]["bpw"] == 32.0
