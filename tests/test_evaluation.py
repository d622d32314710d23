"""Evaluation metrics on a tiny random LLaVA built in a temporary folder (no downloads)."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava_fa.testbed.easyvqa import load_image, load_split, normalize_answer, user_text
from llava_fa.testbed.prompt import CHAT_TEMPLATE, image_prompt

ANSWERS = ["circle", "green", "red", "gray", "yes", "teal", "black", "rectangle", "yellow", "triangle",
           "brown", "blue", "no"]
QUESTIONS = [  # (question, image id): varied lengths so that left padding matters
    ("what is the red shape?", 0), ("what color is the shape?", 0), ("does the image contain a circle?", 0),
    ("is there a blue shape in the image?", 1), ("what shape is present?", 1),
    ("is there not a black shape in the image?", 2), ("what is the color of the triangle?", 2),
    ("what shape does the image contain?", 2),
]
WORDS = ["What", "Is", "Does", "what", "is", "the", "shape", "color", "of", "does", "image", "contain", "a", "there", "not", "in",
         "present", "?", ".", "Answer", "with", "one", "word", "user", "assistant", "film", "actor", "he",
         "was", "born", "and", "played", "role", ",", "=", "@-@", "series", "television", "2000"]
SPECIAL = ["<pad>", "<unk>", "<image>", "<|im_start|>", "<|im_end|>"]
PPL_TEXT = (" = Robert = \r\n"
            + "".join(" " + " ".join(random.Random(i).choices(WORDS[20:], k=30)) + " . \r\n" for i in range(6)))


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {t: i for i, t in enumerate(SPECIAL + ANSWERS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<|im_end|>", extra_special_tokens=SPECIAL[2:4])


def make_llava(path: Path) -> Path:
    from transformers import (BitImageProcessor, Dinov2Config, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    torch.manual_seed(0)
    tok = make_tokenizer()
    vision = Dinov2Config(image_size=28, patch_size=14, hidden_size=16, num_hidden_layers=1,
                          num_attention_heads=2, mlp_ratio=2)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default", image_seq_length=4)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():  # the default init (std 0.02) answers the same word to every question
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    image_processor = BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> Path:
    return make_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def loaded(llava_dir):
    from llava_fa.evaluation.runner import load_for_evaluation
    return load_for_evaluation(llava_dir, torch.device("cpu"), torch.float32)


def write_vqa(root: Path, golds: list[str]) -> Path:
    """A fake easy-VQA folder with the real layout: answers.txt, test/questions.json, test/images/{id}.png."""
    images = root / "test" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        rng = random.Random(i)
        Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3))).save(images / f"{i}.png")
    rows = [[q, g, i] for (q, i), g in zip(QUESTIONS, golds)]
    (root / "test" / "questions.json").write_text(json.dumps(rows))
    (root / "answers.txt").write_text("\n".join(ANSWERS) + "\n")
    return root


# ---------------------------------------------------------------- perplexity


def test_load_text_rebuilds_rows_and_reports_missing_file(tmp_path, monkeypatch):
    from llava_fa.evaluation.perplexity import load_text
    raw = tmp_path / "wikitext-2-raw" / "wiki.test.raw"
    raw.parent.mkdir()
    raw.write_bytes(PPL_TEXT.encode())
    monkeypatch.setenv("LLAVA_FA_DATA", str(tmp_path))
    text = load_text(None)  # default: $LLAVA_FA_DATA/wikitext-2-raw/wiki.test.raw
    assert "\r" not in text
    rows = PPL_TEXT.replace("\r\n", "\n").splitlines(keepends=True)
    assert text == "\n\n".join(rows)  # GPTQ's join over the dataset rows, each ending in "\n"
    with pytest.raises(FileNotFoundError) as err:
        load_text(tmp_path / "nope.raw")
    assert "nope.raw" in str(err.value) and "LLAVA_FA_DATA" in str(err.value) and "--text" in str(err.value)


def test_perplexity_is_exp_of_mean_window_loss(loaded, tmp_path):
    from llava_fa.evaluation.perplexity import perplexity
    model, processor, _ = loaded
    text = PPL_TEXT
    ids = processor.tokenizer(text, return_tensors="pt")["input_ids"][0]
    seqlen = 16
    n = ids.numel() // seqlen
    with torch.no_grad():  # HF's own loss: mean over the seqlen-1 predicted tokens of a window
        losses = [model(input_ids=ids[None, i * seqlen:(i + 1) * seqlen],
                        labels=ids[None, i * seqlen:(i + 1) * seqlen]).loss for i in range(n)]
    got = perplexity(model, processor, text, seqlen=seqlen, progress=False)
    assert got["windows"] == n and got["tokens"] == ids.numel() and got["predicted_tokens"] == n * (seqlen - 1)
    assert got["ppl"] == pytest.approx(math.exp(torch.stack(losses).mean().item()), rel=1e-5)
    two = perplexity(model, processor, text, seqlen=seqlen, max_windows=2, progress=False)
    assert two["windows"] == 2
    assert two["ppl"] == pytest.approx(math.exp(torch.stack(losses[:2]).mean().item()), rel=1e-5)
    with pytest.raises(ValueError, match="fewer than seqlen"):
        perplexity(model, processor, "what is", seqlen=seqlen, progress=False)


# ---------------------------------------------------------------- easy-VQA


def _single(processor, q: str, image_id: int, root: Path) -> dict:
    """Unpadded inputs of one question, built by the processor itself (the independent path)."""
    image = load_image(root / "test" / "images" / f"{image_id}.png")
    return processor(text=image_prompt(user_text(q)), images=image, return_tensors="pt")


@torch.no_grad()
def test_fast_accuracy_matches_independent_forward(loaded, tmp_path):
    from llava_fa.evaluation.vqa import vqa_accuracy
    model, processor, _ = loaded
    root = write_vqa(tmp_path, ["yes"] * len(QUESTIONS))
    answer_ids = processor.tokenizer.convert_tokens_to_ids(ANSWERS)
    preds = [ANSWERS[int(model(**_single(processor, q, i, root)).logits[0, -1, answer_ids].argmax())]
             for q, i in QUESTIONS]
    assert len(set(preds)) > 2  # the tiny model's answers vary, so batching errors would show
    # Gold = the independent prediction on even questions, some other answer on odd ones.
    golds = [p if k % 2 == 0 else ANSWERS[(ANSWERS.index(p) + 1) % 13] for k, p in enumerate(preds)]
    write_vqa(tmp_path, golds)
    got = vqa_accuracy(model, processor, "fast", root=root, batch_size=3, progress=False)
    assert got["mode"] == "fast" and got["n"] == len(QUESTIONS)
    assert got["accuracy"] == pytest.approx(0.5)
    assert sum(r["n"] for r in got["per_answer"].values()) == len(QUESTIONS)
    assert [w["prediction"] for w in got["wrong"]] == [p for k, p in enumerate(preds) if k % 2][:5]
    assert vqa_accuracy(model, processor, "fast", limit=2, root=root, progress=False)["accuracy"] == 0.5


@torch.no_grad()
def test_generate_accuracy_matches_independent_generate(loaded, tmp_path):
    from llava_fa.evaluation.vqa import vqa_accuracy
    model, processor, _ = loaded
    root = write_vqa(tmp_path, ["yes"] * len(QUESTIONS))
    preds = []
    for q, i in QUESTIONS:
        enc = _single(processor, q, i, root)
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
        preds.append(normalize_answer(processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:],
                                                                 skip_special_tokens=True)))
    assert len(set(preds)) > 2
    golds = [p if k % 3 == 0 else "zzz" for k, p in enumerate(preds)]  # "zzz" is never generated
    write_vqa(tmp_path, golds)
    got = vqa_accuracy(model, processor, "generate", root=root, batch_size=4, progress=False)
    assert got["mode"] == "generate"
    assert got["accuracy"] == pytest.approx(3 / len(QUESTIONS))


def test_fast_mode_refuses_answers_sharing_a_first_token(loaded):
    from llava_fa.evaluation.vqa import answer_token_ids
    _, processor, _ = loaded
    assert len(set(answer_token_ids(processor, ANSWERS))) == 13
    with pytest.raises(ValueError, match="first token"):
        answer_token_ids(processor, ["red", "red shape"])


# ---------------------------------------------------------------- fidelity


def test_fidelity_self_is_exact_and_perturbation_shows(loaded, tmp_path):
    from llava_fa.evaluation.fidelity import fidelity, vqa_sequence
    model, processor, _ = loaded
    examples = load_split("test", write_vqa(tmp_path, ANSWERS[:len(QUESTIONS)]))
    same = fidelity(model, model, processor, examples, batch_size=3, progress=False)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["top1_agreement"] == 1.0
    # Every real token of prompt + answer + end of turn, except the 4 image placeholders.
    n_tokens = sum(len(processor.tokenizer(vqa_sequence(ex))["input_ids"]) - 1 for ex in examples)
    assert same["n_prompts"] == len(examples) and same["n_tokens"] == n_tokens
    noisy = copy.deepcopy(model)
    with torch.no_grad():
        for p in noisy.model.language_model.parameters():
            p.add_(0.5 * torch.randn_like(p) * p.std())
    diff = fidelity(noisy, model, processor, examples, batch_size=8, progress=False)
    assert diff["kl"] > 1e-3 and diff["n_tokens"] == n_tokens


# ---------------------------------------------------------------- size


class FakeCompressed(torch.nn.Module):
    """A stand-in for a compressed linear: 4-bit codes plus 64 bits of metadata."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.inner = linear  # children of a compressed module must not be counted again

    def storage_bits(self) -> int:
        return 4 * self.in_features * self.out_features + 64

    def forward(self, x):
        return self.inner(x)


def test_model_size_counts_disk_dtype_and_compressed_bits(llava_dir, loaded):
    from llava_fa.evaluation.size import model_size
    model, _, _ = loaded
    plain = model_size(llava_dir, model)
    assert plain["disk_bytes"] == (llava_dir / "model.safetensors").stat().st_size
    assert plain["params"] == sum(p.numel() for p in model.parameters())
    assert plain["compressed"]["count"] == 0 and plain["decoder_linear"]["bpw"] == 32.0
    assert plain["decoder_linear"]["count"] == 2 * 7  # q k v o gate up down, no lm_head
    model = copy.deepcopy(model)
    mlp = model.model.language_model.layers[0].mlp
    mlp.up_proj = FakeCompressed(mlp.up_proj)
    got = model_size(llava_dir, model)
    (name, mod), = got["compressed"]["modules"].items()
    assert name.endswith("layers.0.mlp.up_proj") and mod["bpw"] == 4 + 64 / (32 * 64)
    assert got["compressed"]["bpw"] == mod["bpw"]
    weights = plain["decoder_linear"]["weights"]
    assert got["decoder_linear"]["count"] == 14 and got["decoder_linear"]["weights"] == weights
    assert got["decoder_linear"]["bits"] == 32 * (weights - 32 * 64) + mod["bits"]


# ---------------------------------------------------------------- runner and CLI


def invoke_eval(*args: str):
    """Run `llava-fa eval ARGS`; a Typer app with a single command runs it without its name."""
    from typer.testing import CliRunner

    from llava_fa.commands.app import app
    single = len(app.registered_commands) + len(app.registered_groups) == 1 and app.registered_callback is None
    return CliRunner().invoke(app, list(args) if single else ["eval", *args])


def test_cli_eval_end_to_end(llava_dir, tmp_path):
    root = write_vqa(tmp_path / "vqa", ANSWERS[:len(QUESTIONS)])
    text = tmp_path / "text.raw"
    text.write_bytes(PPL_TEXT.encode())
    out = tmp_path / "out" / "result.json"
    args = [str(llava_dir), "--reference", str(llava_dir), "--limit", "5", "--json", str(out),
            "--vqa-mode", "both", "--text", str(text), "--seqlen", "16", "--ppl-windows", "3",
            "--device", "cpu", "--vqa-root", str(root)]
    res = invoke_eval(*args)
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert not list(out.parent.glob(".*.tmp"))
    assert result["multimodal"] and result["perplexity"]["windows"] == 3
    assert set(result["vqa"]) == {"fast", "generate"} and result["vqa"]["fast"]["n"] == 5
    assert result["fidelity"]["kl"] == pytest.approx(0.0, abs=1e-6) and result["fidelity"]["n_prompts"] == 5
    assert "perplexity" in res.output


def test_text_only_model_skips_vqa(llava_dir, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llava_fa.evaluation.runner import TEXT_ONLY_NOTE, evaluate, render_table
    llava = json.loads((llava_dir / "config.json").read_text())
    lm_dir = tmp_path / "lm"
    LlamaForCausalLM(LlamaConfig(**llava["text_config"])).save_pretrained(lm_dir)
    AutoTokenizer.from_pretrained(llava_dir).save_pretrained(lm_dir)
    text = tmp_path / "text.raw"
    text.write_bytes(PPL_TEXT.encode())
    result = evaluate(lm_dir, reference=lm_dir, text_source=text, seqlen=16, device="cpu", progress=False)
    assert TEXT_ONLY_NOTE in result["notes"] and result["vqa"] is None and not result["multimodal"]
    assert result["fidelity"]["prompts"] == "WikiText" and result["fidelity"]["n_prompts"] == 6
    assert result["fidelity"]["top1_agreement"] == 1.0
    assert result["size"]["decoder_linear"]["bpw"] == 32.0
    json.dumps(result)
    assert render_table(result).row_count >= 5


def test_cli_registers_eval_once_and_reports_a_missing_folder(tmp_path):
    from llava_fa.commands.app import app
    from llava_fa.errors import UserError
    assert [c.name for c in app.registered_commands].count("eval") == 1
    res = invoke_eval(str(tmp_path / "missing"))
    assert isinstance(res.exception, UserError) and "missing" in str(res.exception)
