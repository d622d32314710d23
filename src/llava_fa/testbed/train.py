"""Train the testbed's projector (and optionally a LoRA adapter) on easy-VQA train.

The vision tower and the language model stay frozen; image features are computed once. Meant for
a GPU (about a minute per epoch on an H100); runs on CPU too, slowly. Reproducible from `--seed`:

    python -m llava_fa.testbed.train --out runs/train --epochs 2 --lora-rank 0
    python -m llava_fa.testbed.train --language-model qwen2.5-0.5b --out runs/t2 --epochs 2

writes `projector.safetensors`, `lora.safetensors` (rank > 0) and `training.json` into --out; copy
them into `src/llava_fa/testbed/weights/<language model>/` to make `llava-fa testbed build` use them.

Without internet (no pip, no assets): `--sources DIR` loads the tower and the language model from a
plain LLaVA folder made by `llava-fa testbed build --untrained --language-model LM [--dtype bfloat16]`
(weights upcast to float32; the projector is re-initialized from --seed), and `--data DIR` reads
easy-VQA from DIR (the folder holding answers.txt, train/ and test/).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from llava_fa.testbed import easyvqa
from llava_fa.testbed.build import TestbedConfig, build_llava, load_sources
from llava_fa.testbed.language_models import DEFAULT_LANGUAGE_MODEL, LANGUAGE_MODELS, get_language_model
from llava_fa.testbed.prompt import IMAGE_TOKEN, image_prompt

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """y = base(x) + scale * B(A(x)); B starts at zero so training starts from the base model."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))


def add_lora(model, rank: int, alpha: float) -> dict[str, LoRALinear]:
    wrapped = {}
    for name, module in list(model.model.language_model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in LORA_TARGETS and isinstance(child, nn.Linear):
                lora = LoRALinear(child, rank, alpha).to(child.weight.device)
                setattr(module, child_name, lora)
                wrapped[f"model.language_model.{name}.{child_name}"] = lora
    return wrapped


def lora_state(wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in wrapped.items():
        out[f"{name}.lora_A"] = m.lora_A.detach().float().cpu().contiguous()
        out[f"{name}.lora_B"] = m.lora_B.detach().float().cpu().contiguous()
        out[f"{name}.lora_scale"] = torch.tensor(m.scale)
    return out


@torch.no_grad()
def image_features(model, processor, paths: list[Path], device, batch: int = 256) -> torch.Tensor:
    """Frozen tower outputs as the LLaVA model selects them (projector excluded), [N, tokens, d]."""
    projector = model.model.multi_modal_projector
    model.model.multi_modal_projector = nn.Identity()
    feats = []
    try:
        for i in range(0, len(paths), batch):
            images = [easyvqa.load_image(p) for p in paths[i : i + batch]]
            pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"].to(device)
            out = model.model.get_image_features(
                pixel_values=pixels,
                vision_feature_layer=model.config.vision_feature_layer,
                vision_feature_select_strategy=model.config.vision_feature_select_strategy,
            )
            feats.append(torch.stack(list(out.pooler_output)).to(torch.bfloat16))
    finally:
        model.model.multi_modal_projector = projector
    return torch.cat(feats)


def encode(processor, examples, n_image_tokens: int, with_answer: bool, eos: str = "<|im_end|>"):
    """Token ids as the processor makes them, plus the answer and the end of turn when training."""
    tok = processor.tokenizer
    rows = []
    for ex in examples:
        prompt = image_prompt(easyvqa.user_text(ex.question)).replace(IMAGE_TOKEN, IMAGE_TOKEN * n_image_tokens)
        ids = tok(prompt)["input_ids"]
        target = tok(f"{ex.answer}{eos}", add_special_tokens=False)["input_ids"] if with_answer else []
        rows.append((ids, target))
    return rows


def collate(rows, pad_id: int, device):
    length = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (p, t) in enumerate(rows):
        ids[i, : len(p) + len(t)] = torch.tensor(p + t)
        labels[i, len(p) : len(p) + len(t)] = torch.tensor(t)
        mask[i, : len(p) + len(t)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def hidden_states(model, ids, mask, feats):
    embeds = model.model.get_input_embeddings()(ids)
    image_mask = ids == model.config.image_token_id
    projected = model.model.multi_modal_projector(feats.to(embeds.dtype)).to(embeds.dtype)
    embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), projected.reshape(-1, embeds.shape[-1]))
    return model.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state


@torch.no_grad()
def fast_accuracy(model, processor, examples, feats, image_index, device, batch: int = 128, data=None) -> float:
    """First-token scoring over the 13 answers at the last prompt position (right-padded rows)."""
    answers = easyvqa.load_answers(data)
    first = torch.tensor([processor.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in answers], device=device)
    rows = encode(processor, examples, feats.shape[1], with_answer=False)
    correct = 0
    for i in range(0, len(rows), batch):
        ids, _, mask = collate(rows[i : i + batch], processor.tokenizer.pad_token_id, device)
        f = feats[[image_index[ex.image_id] for ex in examples[i : i + batch]]]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            h = hidden_states(model, ids, mask, f)
        last = h[torch.arange(len(ids)), mask.sum(1) - 1]
        pred = model.lm_head(last.float())[:, first].argmax(-1)
        correct += sum(answers[p] == ex.answer for p, ex in zip(pred.tolist(), examples[i : i + batch]))
    return correct / len(examples)


@dataclass
class CachedFeatures:
    """Frozen tower outputs of a split's images, [N, tokens, d], and image id -> row."""

    feats: torch.Tensor
    index: dict[str, int]


def split_features(model, processor, split: str, examples, device, data=None) -> CachedFeatures:
    ids = sorted({ex.image_id for ex in examples})
    feats = image_features(model, processor, [easyvqa.load_split_image_path(split, i, data) for i in ids], device)
    return CachedFeatures(feats, {img: k for k, img in enumerate(ids)})


def make_optimizer(model, args) -> tuple[torch.optim.Optimizer, dict[str, LoRALinear]]:
    """AdamW over the projector (and the LoRA factors, at their own learning rate, when rank > 0)."""
    params = list(model.model.multi_modal_projector.parameters())
    model.model.multi_modal_projector.requires_grad_(True)
    wrapped = add_lora(model, args.lora_rank, args.lora_alpha) if args.lora_rank > 0 else {}
    lora_params = [p for m in wrapped.values() for p in (m.lora_A, m.lora_B)]
    groups = [{"params": params, "lr": args.lr}] + ([{"params": lora_params, "lr": args.lora_lr}] if lora_params else [])
    return torch.optim.AdamW(groups, weight_decay=0.0), wrapped


def answer_loss(model, ids, labels, mask, feats, device) -> torch.Tensor:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        h = hidden_states(model, ids, mask, feats)
    # Next-token loss on the answer tokens only: position t predicts token t+1.
    pos = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    logits = model.lm_head(h[:, :-1][pos].float())
    return F.cross_entropy(logits, labels[:, 1:][pos])


def train_epochs(model, processor, optim, train_set, features: CachedFeatures, args, device, t0: float) -> list[dict]:
    """The training loop (50 warm-up steps, then cosine decay); returns the logged losses."""
    rows = encode(processor, train_set, features.feats.shape[1], with_answer=True,
                  eos=get_language_model(args.language_model).eos_token)
    steps = args.epochs * math.ceil(len(rows) / args.batch_size)
    base_lrs = [g["lr"] for g in optim.param_groups]
    step, history = 0, []
    model.train()
    for epoch in range(args.epochs):
        order = list(range(len(rows)))
        random.shuffle(order)
        for i in range(0, len(order), args.batch_size):
            batch = order[i : i + args.batch_size]
            ids, labels, mask = collate([rows[k] for k in batch], processor.tokenizer.pad_token_id, device)
            feats = features.feats[[features.index[train_set[k].image_id] for k in batch]]
            warm = min(1.0, (step + 1) / 50)
            for g, lr in zip(optim.param_groups, base_lrs):
                g["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = answer_loss(model, ids, labels, mask, feats, device)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            step += 1
            if step % 50 == 0 or step == steps:
                history.append({"step": step, "loss": round(loss.item(), 4)})
                print(f"epoch {epoch + 1}/{args.epochs} step {step}/{steps} loss {loss.item():.4f} "
                      f"({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    return history


def save_weights(out: Path, model, wrapped: dict[str, LoRALinear]) -> None:
    """projector.safetensors, and lora.safetensors when LoRA was trained."""
    out.mkdir(parents=True, exist_ok=True)
    projector = {k: v.detach().float().cpu().contiguous() for k, v in model.model.multi_modal_projector.state_dict().items()}
    save_file(projector, out / "projector.safetensors")
    if wrapped:
        save_file(lora_state(wrapped), out / "lora.safetensors")


def reset_projector(model, seed: int) -> None:
    """Weights ~ N(0, initializer_range), zero biases, as a freshly built LLaVA has (not the same draw)."""
    gen = torch.Generator().manual_seed(seed)
    std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
    for m in model.model.multi_modal_projector.modules():
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                m.bias.zero_()


def load_model(args):
    """The LLaVA model (float32) and its processor: built from the pinned assets, or read from --sources."""
    if not args.sources:
        lm, tokenizer, vision = load_sources(TestbedConfig(language_model=args.language_model))
        return build_llava(lm, tokenizer, vision, TestbedConfig(seed=args.seed, language_model=args.language_model))
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    src = Path(args.sources)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"--sources {src} holds no config.json. Fix: pass a folder made by "
                                f"`llava-fa testbed build --untrained --language-model {args.language_model}`.")
    model = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    expected = get_language_model(args.language_model).model_type
    if model.config.text_config.model_type != expected:
        raise ValueError(f"--sources {src} holds a {model.config.text_config.model_type} language model, not "
                         f"{args.language_model} ({expected}). Fix: pass the matching --language-model or folder.")
    reset_projector(model, args.seed)
    processor = AutoProcessor.from_pretrained(src)
    # The PIL image processor of the build, whatever transformers picks where torchvision is installed
    # (its bicubic resize differs from PIL's, and the testbed is evaluated with PIL's).
    from llava_fa.testbed.dinov2_onnx import dinov2_image_processor

    processor.image_processor = dinov2_image_processor(processor.image_processor.crop_size["height"])
    return model, processor


def train(args) -> dict:
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, processor = load_model(args)
    model.to(device).requires_grad_(False)

    data = Path(args.data) if args.data else None
    train_set, test_set = easyvqa.load_split("train", data), easyvqa.load_split("test", data)
    if args.limit:
        train_set, test_set = train_set[: args.limit], test_set[: args.limit]
    t0 = time.time()
    train_feats = split_features(model, processor, "train", train_set, device, data)
    test_feats = split_features(model, processor, "test", test_set, device, data)
    print(f"image features: {len(train_feats.index)} train + {len(test_feats.index)} test images in "
          f"{time.time() - t0:.1f}s", flush=True)

    optim, wrapped = make_optimizer(model, args)
    history = train_epochs(model, processor, optim, train_set, train_feats, args, device, t0)
    acc = fast_accuracy(model, processor, test_set, test_feats.feats, test_feats.index, device, data=data)
    print(f"easy-VQA test accuracy (fast mode, {len(test_set)} questions): {acc:.4f}", flush=True)

    out = Path(args.out)
    save_weights(out, model, wrapped)
    info = {"language_model": args.language_model, "sources": "folder" if args.sources else "assets",
            "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "lora_lr": args.lora_lr,
            "train_questions": len(train_set), "test_questions": len(test_set),
            "test_accuracy_fast": acc, "seconds": round(time.time() - t0, 1), "device": str(device),
            "torch": torch.__version__, "loss_history": history}
    (out / "training.json").write_text(json.dumps(info, indent=2))
    return info


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--language-model", default=DEFAULT_LANGUAGE_MODEL, choices=list(LANGUAGE_MODELS))
    p.add_argument("--sources", default="", help="a LLaVA folder (`llava-fa testbed build --untrained`) instead of the assets")
    p.add_argument("--data", default="", help="the easy-VQA data folder (answers.txt, train/, test/) instead of the asset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-lr", type=float, default=5e-4)
    p.add_argument("--limit", type=int, default=0, help="use only the first N train and test questions (smoke runs)")
    p.add_argument("--device", default="auto")
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
