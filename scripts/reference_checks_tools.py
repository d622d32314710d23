"""The reference tools' side of scripts/reference_checks.py; runs inside the TOOL venv (llmcompressor, hqq).

    TOOLPY reference_checks_tools.py llmcompressor --model M --out DIR --bits 4 --group-size 64 --calib calib.pt
    TOOLPY reference_checks_tools.py hqq --model M --out DIR --bits 4 --group-size 64

llmcompressor: oneshot with a GPTQModifier matched to `llava-fa compress --method gptq` (asymmetric int
weights, groups along the input axis, no act-order, dampening 0.01 of mean diag(H), block 128), on the
exact calibration windows of calib.pt (input_ids), all decoder linears (lm_head ignored); saved as a
compressed-tensors checkpoint (pack-quantized).
hqq: HQQLinear(BaseQuantizeConfig(nbits, group_size), compute_dtype float32, CPU) on every decoder
linear; its dequantize() written back; saved as a float32 HF folder.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.metadata import version
from pathlib import Path

import torch

LINEAR_RE = r"re:model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"


def versions() -> dict:
    out = {}
    for pkg in ("llmcompressor", "hqq", "compressed-tensors", "torch", "transformers", "accelerate", "datasets"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # not installed here
            out[pkg] = None
    return out


def run_llmcompressor(args) -> dict:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calib = torch.load(args.calib)["input_ids"]
    ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(args.model)
    weights = QuantizationArgs(num_bits=args.bits, type="int", symmetric=False, strategy="group",
                               group_size=args.group_size, actorder=None)
    recipe = GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=[LINEAR_RE], weights=weights)},
                          ignore=["lm_head"], block_size=128, dampening_frac=0.01, actorder=None)
    oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=calib.shape[1],
            num_calibration_samples=calib.shape[0], shuffle_calibration_samples=False,
            pipeline=args.pipeline, propagate_error=True)
    model.save_pretrained(args.out, save_compressed=True)
    tok.save_pretrained(args.out)
    return {"recipe": str(recipe), "pipeline": args.pipeline}


def run_hqq(args) -> dict:
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    cfg = BaseQuantizeConfig(nbits=args.bits, group_size=args.group_size)
    n = 0
    for name, mod in model.named_modules():
        if not name.startswith("model.layers.") or not isinstance(mod, torch.nn.Linear):
            continue
        q = HQQLinear(mod, quant_config=cfg, compute_dtype=torch.float32, device="cpu", del_orig=False)
        with torch.no_grad():
            mod.weight.copy_(q.dequantize().reshape(mod.weight.shape).float())
        n += 1
    model.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(args.model).save_pretrained(args.out)
    return {"quant_config": json.loads(json.dumps(cfg, default=str)), "layers": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tool", choices=["llmcompressor", "hqq", "hqq-ablation"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--calib")
    ap.add_argument("--pipeline", default="sequential")
    ap.add_argument("--versions")
    args = ap.parse_args()
    t = time.time()
    info = {"llmcompressor": run_llmcompressor, "hqq": run_hqq, "hqq-ablation": hqq_ablation}[args.tool](args)
    info.update(seconds=round(time.time() - t, 1), versions=versions())
    if args.tool != "hqq-ablation":
        Path(args.out, "reference_tool.json").write_text(json.dumps(info, indent=1, default=str))
    if args.versions:
        Path(args.versions).write_text(json.dumps(versions(), indent=1))
    print(json.dumps(info, default=str)[:2000])



def hqq_ablation(args) -> dict:
    """Relative Frobenius error of one matrix per layer type (and Gaussian matrices): RTN, ours, the hqq
    library, and the library's result projected onto our format (integer zero, float16 scale)."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # our package, not installed in the tool venv
    from hqq.core.quantize import Quantizer
    from llava_fa.methods.hqq import hqq_quantize
    from llava_fa.quantizers import AffineSpec, dequantize_grouped, quantize_grouped
    from safetensors.torch import load_file

    sd = load_file(str(Path(args.model) / "model.safetensors"))
    mats = {k: v.float() for k, v in sd.items() if k.endswith("proj.weight") and ".layers.1." in k}
    g = torch.Generator().manual_seed(0)
    mats["gaussian 1024x1024"] = torch.randn(1024, 1024, generator=g) * 0.02
    mats["laplace 1024x1024"] = torch.distributions.Laplace(0, 0.02).sample((1024, 1024))
    b, gs, out = args.bits, args.group_size, {}
    for name, W in mats.items():
        rel = lambda Wr: float((W - Wr).norm() / W.norm())  # noqa: E731
        q, s, z = quantize_grouped(W, AffineSpec(b, gs))
        rtn = rel(dequantize_grouped(q, s, z, gs))
        q, s, z = hqq_quantize(W, b, gs)
        ours = rel(dequantize_grouped(q, s, z, gs))
        Wq, meta = Quantizer.quantize(W, nbits=b, group_size=gs, axis=1, optimize=True, round_zero=b == 4,
                                      bitpack=False, compute_dtype=torch.float32, device="cpu")
        meta["compute_dtype"] = torch.float32
        lib = rel(Quantizer.dequantize(Wq, meta))
        sc, zi = meta["scale"].half().float(), meta["zero"].round().clamp(0, 2 ** b - 1)
        Wg = W.reshape(-1, gs)
        proj = rel((sc * (torch.clamp(torch.round(Wg / sc + zi), 0, 2 ** b - 1) - zi)).reshape(W.shape))
        out[name] = {"rtn": rtn, "ours": ours, "hqq_lib": lib, "hqq_lib_int_zero_f16_scale": proj,
                     "distinct_values_per_32": float(torch.tensor([r.unique().numel() for r in W.reshape(-1, 32)[:2000]]).float().mean())}
        print(name, {k: round(v, 4) for k, v in out[name].items()}, flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return {"matrices": len(out)}


if __name__ == "__main__":
    main()
