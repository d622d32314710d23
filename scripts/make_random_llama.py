"""A random Llama-shaped decoder folder for scale benchmarks (issue: compress models of any size).

Default: Llama-2-7B's shape (32 layers, hidden 4096, MLP 11008, 32 heads: 224 linears), vocabulary
32000, random weights (std 0.02) in bfloat16. `--hidden/--intermediate/--layers/--heads/--dtype` pick
another shape (e.g. `--hidden 2048 --intermediate 5504 --layers 16 --heads 16 --dtype float32`: about
1B parameters, 4 GB on disk). A byte-level tokenizer goes with it (its ids are < 260, so calibration
text works). Built on a GPU when there is one (seconds), else on CPU (minutes):

    python scripts/make_random_llama.py --out /tmp/llama7b [--layers 32] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", bos_token="<s>")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32, help="attention heads (= key/value heads)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.heads, vocab_size=32000,
                      max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype=args.dtype)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(DTYPES[args.dtype]).eval()
    model.save_pretrained(args.out)
    byte_tokenizer().save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {n / 1e9:.2f}B parameters, {time.perf_counter() - t0:.0f} s on {device}")


if __name__ == "__main__":
    main()
