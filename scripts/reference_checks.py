"""Reference checks (issue 14 item 3): our GPTQ and HQQ against llm-compressor's GPTQ and the hqq library.

Same decoder (a float32 HF folder of a testbed GGUF), same calibration windows, same bits and groups.
Stages (each reads what the earlier ones wrote under --work, and skips what is done):
  prepare            calibration windows from our own sampler (build_samples(tokenizer, "wikitext", N, L, seed),
                     the exact call of `llava-fa compress --calib wikitext`) -> calib.pt; WikiText-2 test -> eval.pt
  run-ours           `llava-fa compress MODEL --method gptq|hqq ...` (our CLI, our venv)
  run-llmcompressor  llm-compressor oneshot + GPTQModifier on calib.pt, in the tool venv (reference_checks_tools.py)
  run-hqq            the hqq library's HQQLinear in the tool venv; saved as a dequantized float32 HF folder
  ablation           hqq weight-error ablation on single matrices (format constraint vs algorithm)
  evaluate           KL to the uncompressed model, WikiText-2 perplexity, per-layer weight and output error
  table              docs/results/reference_checks.json and .md (one section per --works folder)
See docs/results/reference_checks.md for the venv setup and the commands.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(__file__).with_name("reference_checks_tools.py")
RESULTS = ROOT / "docs" / "results"
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHARED_INPUT = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}  # same X^T X


def candidates(args) -> dict[str, dict]:
    """name -> how it is made; one per (tool, method, bits)."""
    out = {}
    for b in args.bits:
        tag = f"w{b}g{args.group_size}"
        out[f"ours-gptq-{tag}"] = {"kind": "ours", "method": "gptq", "bits": b}
        out[f"llmc-gptq-{tag}"] = {"kind": "llmc", "method": "gptq", "bits": b}
        out[f"ours-hqq-{tag}"] = {"kind": "ours", "method": "hqq", "bits": b}
        out[f"hqqlib-hqq-{tag}"] = {"kind": "hqqlib", "method": "hqq", "bits": b}
    return out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def record_time(work: Path, name: str, seconds: float, command: list[str]) -> None:
    path = work / "times.json"
    times = json.loads(path.read_text()) if path.exists() else {}
    times[name] = {"seconds": round(seconds, 1), "command": " ".join(command)}
    path.write_text(json.dumps(times, indent=1))


def prepare(args) -> None:
    from llava_fa.calibration.data import build_samples
    from llava_fa.io.checkpoint import load_processor

    args.work.mkdir(parents=True, exist_ok=True)
    tok = load_processor(args.model)
    samples, what = build_samples(tok, "wikitext", args.nsamples, args.seqlen, args.seed)
    calib = torch.cat([s["input_ids"] for s in samples])
    test = Path(args.data) / "wikitext-2-raw" / "wiki.test.raw"
    ids = tok(test.read_text(encoding="utf-8"), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    n = args.eval_windows * args.eval_seqlen
    evals = ids[:n].reshape(args.eval_windows, args.eval_seqlen)  # the first consecutive windows
    torch.save({"input_ids": calib, "what": what, "seed": args.seed, "model": str(args.model)}, args.work / "calib.pt")
    torch.save({"input_ids": evals, "what": f"first {args.eval_windows} x {args.eval_seqlen} tokens of {test}"},
               args.work / "eval.pt")
    log(f"calib {tuple(calib.shape)} ({what}); eval {tuple(evals.shape)}; calib sum {int(calib.sum())}")


def todo(args, kind: str):
    """(name, how, output folder) of the candidates of `kind` still to make (--only narrows them)."""
    for name, c in candidates(args).items():
        if c["kind"] == kind and not (args.only and name not in args.only):
            if (args.work / name / "config.json").exists():
                log(f"{name}: exists, skipped")
            else:
                yield name, c, args.work / name


def run_ours(args) -> None:
    for name, c, out in todo(args, "ours"):
        nsamples = args.nsamples if c["method"] == "gptq" else 0  # hqq is calibration-free
        cmd = [str(ROOT / ".venv" / "bin" / "llava-fa"), "compress", str(args.model), "--out", str(out),
               "--method", c["method"], "--bits", str(c["bits"]), "--group-size", str(args.group_size),
               "--calib", "wikitext", "--nsamples", str(nsamples), "--seqlen", str(args.seqlen),
               "--seed", str(args.seed), "--device", "cpu", "--quiet", "--report", str(args.work / f"{name}.report.json")]
        if c["method"] == "gptq":
            cmd += ["--asym", "--damp", "0.01", "--block-size", "128", "--no-act-order"]
        timed(args, name, cmd)


def run_tool(args, kind: str) -> None:
    for name, c, out in todo(args, kind):
        sub = "llmcompressor" if kind == "llmc" else "hqq"
        cmd = [str(args.tool_python), str(TOOLS), sub, "--model", str(args.model), "--out", str(out),
               "--bits", str(c["bits"]), "--group-size", str(args.group_size), "--calib", str(args.work / "calib.pt"),
               "--versions", str(args.work / "tool_versions.json")]
        timed(args, name, cmd)


def ablation(args) -> None:
    """hqq weight-error ablation (the tool venv imports our hqq_quantize too): see reference_checks_tools.py."""
    for b in args.bits:
        timed(args, f"hqq-ablation-w{b}", [str(args.tool_python), str(TOOLS), "hqq-ablation", "--model", str(args.model),
                                          "--out", str(args.work / f"hqq_ablation_w{b}.json"), "--bits", str(b),
                                          "--group-size", str(args.group_size)])


def ablation_lines(work: Path) -> tuple[dict, list[str]]:
    data = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("hqq_ablation_w*.json"))}
    lines = []
    for stem, rows in data.items():
        lines += ["", f"{stem}: relative Frobenius weight error of single matrices (layer 1, and random ones)", "",
                  "| matrix | RTN | ours hqq | hqq library | hqq library projected (int zero, fp16 scale) | distinct values / 32 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {m} | {r['rtn']:.4f} | {r['ours']:.4f} | {r['hqq_lib']:.4f} | {r['hqq_lib_int_zero_f16_scale']:.4f} | "
                  f"{r['distinct_values_per_32']:.1f} |" for m, r in rows.items()]
    return data, lines


def timed(args, name: str, cmd: list[str]) -> None:
    log(f"{name}: {' '.join(cmd)}")
    t = time.time()
    subprocess.run(cmd, check=True, env={**__import__("os").environ, "LLAVA_FA_DATA": str(args.data)})
    record_time(args.work, name, time.time() - t, cmd)
    log(f"{name}: done in {time.time() - t:.0f} s")


def decoder_linear_names(model) -> list[str]:
    """Module paths of every decoder linear (model.layers.I.self_attn.q_proj, model.layers.I.mlp.down_proj, ...)."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")
            and n.rsplit(".", 1)[1] in LINEARS]


def candidate_weights(args, name: str, kind: str, names: list[str]) -> dict[str, torch.Tensor]:
    """Dequantized float32 weights of every decoder linear of candidate `name`."""
    path = args.work / name
    if kind == "ours":
        from llava_fa.io.checkpoint import load_model
        model = load_model(path, "cpu", torch.float32)
        mods = dict(model.named_modules())
        return {n: (mods[n].dequantize(torch.float32) if hasattr(mods[n], "dequantize")
                    else mods[n].weight.detach().float()) for n in names}
    from transformers import AutoModelForCausalLM
    kw = {}
    if kind == "llmc":  # compressed-tensors checkpoint: decompressed on load by compressed-tensors (our venv)
        from transformers.utils.quantization_config import CompressedTensorsConfig
        kw["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
    mods = dict(model.named_modules())
    return {n: mods[n].weight.detach().float().clone() for n in names}


@torch.no_grad()
def input_hessians(model, calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """X^T X (float32) of the uncompressed model's inputs to q, o, gate, down of each layer."""
    H, hooks = {}, []
    for i, layer in enumerate(model.model.layers):
        for mod, key in ((layer.self_attn.q_proj, f"model.layers.{i}.q_proj"), (layer.self_attn.o_proj, f"model.layers.{i}.o_proj"),
                         (layer.mlp.gate_proj, f"model.layers.{i}.gate_proj"), (layer.mlp.down_proj, f"model.layers.{i}.down_proj")):
            def hook(m, inp, out, key=key):
                x = inp[0].reshape(-1, inp[0].shape[-1]).float()  # float32 sums: 8k tokens, ample precision
                H[key] = H.get(key, 0) + x.T @ x
            hooks.append(mod.register_forward_hook(hook))
    for row in calib:
        model(input_ids=row[None])
    for h in hooks:
        h.remove()
    return {k: v.float() for k, v in H.items()}


@torch.no_grad()
def logprobs(model, evals: torch.Tensor) -> list[torch.Tensor]:
    return [torch.log_softmax(model(input_ids=row[None]).logits[0].float(), -1) for row in evals]


def ref_cache(args, model):
    """(reference log-probs per eval window, X^T X per layer input), cached on disk under --work."""
    path = args.work / "reference_cache.pt"
    if path.exists():
        return torch.load(path)
    t = time.time()
    ref = {"logp": logprobs(model, torch.load(args.work / "eval.pt")["input_ids"]),
           "H": input_hessians(model, torch.load(args.work / "calib.pt")["input_ids"])}
    torch.save(ref, path)
    log(f"reference log-probs and X^T X in {time.time() - t:.0f} s")
    return ref


def hessian_key(name: str) -> str:
    layer, proj = name.rsplit(".", 1)
    return f"{layer.replace('.mlp', '').replace('.self_attn', '')}.{SHARED_INPUT.get(proj, proj)}"


def layer_errors(orig: dict, cand: dict, H: dict) -> dict[str, dict]:
    rows = {}
    for n, W in orig.items():
        D = W - cand[n]
        h = H[hessian_key(n)]
        num, den = ((D @ h) * D).sum(), ((W @ h) * W).sum()
        rows[n] = {"weight_rel_fro": float(D.norm() / W.norm()), "output_rel": float((num / den).clamp_min(0).sqrt())}
    return rows


@torch.no_grad()
def quality(model, ref_logp: list[torch.Tensor], evals: torch.Tensor) -> dict:
    kls, nlls = [], []  # per window: summed KL over its tokens, summed NLL over its predicted tokens
    for row, lp_ref in zip(evals, ref_logp):
        lp = torch.log_softmax(model(input_ids=row[None]).logits[0].float(), -1)
        kls.append(float((lp_ref.exp() * (lp_ref - lp)).sum()))
        nlls.append(float(-lp[:-1].gather(1, row[1:, None]).sum()))
    return {"kl": sum(kls) / evals.numel(), "ppl": math.exp(sum(nlls) / (evals.numel() - len(evals))),
            "window_kl": kls, "window_nll": nlls}


def evaluate(args) -> None:
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(args.threads)
    path = args.work / "evaluation.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    names = decoder_linear_names(model)
    mods = dict(model.named_modules())
    orig = {n: mods[n].weight.detach().clone() for n in names}
    ref = ref_cache(args, model)
    evals = torch.load(args.work / "eval.pt")["input_ids"]
    if "uncompressed" not in res:
        res["uncompressed"] = {**quality(model, ref["logp"], evals), "layers": {}}
        path.write_text(json.dumps(res, indent=1))
    for name, c in candidates(args).items():
        if name in res or not (args.work / name / "config.json").exists() or (args.only and name not in args.only):
            continue
        t = time.time()
        cand = candidate_weights(args, name, c["kind"], names)
        for n in names:
            mods[n].weight.data.copy_(cand[n])
        res[name] = {**quality(model, ref["logp"], evals), "layers": layer_errors(orig, cand, ref["H"])}
        for n in names:
            mods[n].weight.data.copy_(orig[n])
        path.write_text(json.dumps(res, indent=1))
        log(f"{name}: kl {res[name]['kl']:.5f} ppl {res[name]['ppl']:.3f} ({time.time() - t:.0f} s)")


GPTQ_DIFFS = [
    "Group scale/zero: ours fits each group's min/max grid when the column loop reaches the group's first column, "
    "on the columns as GPTQ's error feedback has left them (original GPTQ / AutoGPTQ); llm-compressor 0.14 fits "
    "all groups once with its min-max observer on the ORIGINAL weight before the loop (not configurable).",
    "Scale precision: ours rounds each scale up to a float16 value (what is stored) before choosing codes; "
    "llm-compressor keeps the scale in the weight dtype (float32 here).",
    "Hessian normalisation: llm-compressor averages 2 x x^T over tokens, ours sums X^T X; damping is a fraction of "
    "mean diag(H) in both, so the damped H differs only by a scalar (same result up to rounding).",
    "Failure handling: llm-compressor falls back to RTN when H is not positive definite after damping; ours "
    "raises an error (did not happen here).",
    "Pipelines: both calibrate layer by layer with the compressed layers' outputs fed to the next layer "
    "(llm-compressor: pipeline='sequential', propagate_error=True, torch.fx-traced subgraphs; ours: sequential).",
    "Matched: int asymmetric, group size, no act-order (llm-compressor's default would be actorder='static'), "
    "dampening 0.01, block 128, all decoder linears (168 in Qwen2.5-0.5B, 210 in SmolLM2-135M) (lm_head and embeddings untouched), same token windows "
    "(input_ids + all-ones attention_mask, batch 1, not shuffled).",
    "Storage: ours `affine` codes (unsigned, zero in [0, 2^b-1]); llm-compressor compressed-tensors "
    "pack-quantized (signed codes, zero in [-2^(b-1), 2^(b-1)-1]); the same grid up to a shift.",
]
HQQ_DIFFS = [
    "Zero and scale: the hqq library keeps a float zero and a float scale per group (compute_dtype float32 on CPU; "
    "float16 on GPU); ours projects the zero to an integer in [0, 2^b-1] and the scale to float16 (the `affine` "
    "format, exportable to compressed-tensors), then refits the scale by least squares on the rounded codes.",
    "Iterations: hqq 0.2.8's default optimizer (optimize_weights_proximal_legacy) keeps beta fixed (no kappa growth) "
    "and stops the whole matrix at the first iteration whose mean |error| does not improve, returning that last "
    "iterate; ours grows beta by kappa, runs the 20 iterations and keeps the best iterate per group.",
    "Start: hqq's min/max is the group's own range (4-bit: zero rounded, round_zero=True); ours widens the range to "
    "include 0 (RTN's fit) and keeps RTN's fit for a group where HQQ's does not lower the mean |error|.",
    "Matched: bits, group size 64 along the input axis (hqq axis=1), lp_norm 0.7, beta 10, 20 iterations, "
    "zero-only optimisation (no scale update), every decoder linear, no calibration data.",
]


NOTES = "<!-- hand-written notes below: kept by `table` -->"


def summarize(res: dict, times: dict) -> list[dict]:
    rows = []
    for name in sorted(res, key=lambda n: (n != "uncompressed", "-hqq-" in n, not n.startswith("ours"), n)):
        r, layers = res[name], res[name].get("layers", {})
        row = {"name": name, "kl": r["kl"], "ppl": r["ppl"], "seconds": times.get(name, {}).get("seconds"),
               **{k: r[k] for k in ("window_kl", "window_nll") if k in r}}
        for key in ("weight_rel_fro", "output_rel"):
            vals = [v[key] for v in layers.values()]
            row[f"mean_{key}"] = sum(vals) / len(vals) if vals else None
            for p in LINEARS:
                pv = [v[key] for n, v in layers.items() if n.endswith(p)]
                row[f"{p}_{key}"] = sum(pv) / len(pv) if pv else None
        rows.append(row)
    return rows


def head_to_head(res: dict, ours: str, ref: str) -> dict | None:
    if ours not in res or ref not in res:
        return None
    a, b = res[ours]["layers"], res[ref]["layers"]
    return {"ours": ours, "reference": ref, "ours_kl_le": res[ours]["kl"] <= res[ref]["kl"],
            "ours_ppl_le": res[ours]["ppl"] <= res[ref]["ppl"],
            **{f"layers_ours_lower_{k}": sum(a[n][k] < b[n][k] for n in a) for k in ("weight_rel_fro", "output_rel")},
            "layers": len(a)}


def fmt(x, spec=".4f"):
    return "-" if x is None else format(x, spec)


def md_table(rows: list[dict]) -> list[str]:
    out = ["| model | KL (nats/token) | WikiText-2 ppl | mean rel. weight err | mean rel. output err | "
           "down_proj output err | wall s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | {fmt(r['kl'], '.5f')} | {fmt(r['ppl'], '.3f')} | {fmt(r['mean_weight_rel_fro'])} | "
                   f"{fmt(r['mean_output_rel'])} | {fmt(r['down_proj_output_rel'])} | {fmt(r['seconds'], '.0f')} |")
    return out


def section(args, work: Path) -> tuple[dict, list[str]]:
    """One model's results (work folder): the JSON part and the markdown lines."""
    res = json.loads((work / "evaluation.json").read_text())
    times = json.loads((work / "times.json").read_text()) if (work / "times.json").exists() else {}
    rows, g = summarize(res, times), args.group_size
    pairs = [h for b in args.bits for h in (head_to_head(res, f"ours-gptq-w{b}g{g}", f"llmc-gptq-w{b}g{g}"),
                                            head_to_head(res, f"ours-hqq-w{b}g{g}", f"hqqlib-hqq-w{b}g{g}")) if h]
    calib, evals = torch.load(work / "calib.pt"), torch.load(work / "eval.pt")
    model, nlin = calib.get("model", str(args.model)), max(len(r.get("layers", {})) for r in res.values())
    data = {"model": model, "calibration": calib["what"], "seed": calib["seed"], "evaluation": evals["what"], "rows": rows,
            "head_to_head": pairs, "times": times, "hqq_ablation": ablation_lines(work)[0],
            "per_layer": {n: r.get("layers", {}) for n, r in res.items()}}
    lines = [f"## {Path(model).name}", "", f"Model {model} (float32 HF folder of the testbed GGUF). Calibration: "
             f"{calib['what']}, seed {calib['seed']}. Evaluation: {evals['what']}. Means over the {nlin} decoder linears.",
             "", *md_table(rows), "", "Head to head (per layer: in how many layers ours is lower):", ""]
    lines += [f"- {h['ours']} vs {h['reference']}: KL ours <= ref: {h['ours_kl_le']}, ppl ours <= ref: {h['ours_ppl_le']}, "
              f"weight err lower in {h['layers_ours_lower_weight_rel_fro']}/{h['layers']} layers, output err lower in "
              f"{h['layers_ours_lower_output_rel']}/{h['layers']}" for h in pairs]
    lines += ablation_lines(work)[1] + ["", "Commands and wall times:", ""]
    return data, lines + [f"- {n} ({t['seconds']} s): `{t['command']}`" for n, t in times.items()] + [""]


def table(args) -> None:
    import compressed_tensors, transformers
    tool = args.works[0] / "tool_versions.json"
    vers = {"tool venv": json.loads(tool.read_text()) if tool.exists() else {},
            "our venv": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "compressed-tensors": compressed_tensors.__version__}}
    parts = [section(args, w) for w in args.works if (w / "evaluation.json").exists()]
    data = {"models": [p[0] for p in parts], "versions": vers, "gptq_differences": GPTQ_DIFFS, "hqq_differences": HQQ_DIFFS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reference_checks.json").write_text(json.dumps(data, indent=1))
    md = RESULTS / "reference_checks.md"  # the hand-written part after NOTES (conclusion, setup) survives reruns
    notes = md.read_text().split(NOTES, 1)[1] if md.exists() and NOTES in md.read_text() else "\n"
    lines = ["# Reference checks: our GPTQ / HQQ against llm-compressor / hqq", "",
             "KL = mean over tokens of KL(P_uncompressed || P_model), next-token distributions; output err = "
             "sqrt(tr(D H D^T) / tr(W H W^T)), D = W - W', H = X^T X of the uncompressed model's inputs on the "
             "calibration windows; weight err = ||D||_F / ||W||_F. One evaluation code path for all (dequantized float32 "
             "weights in the original architecture).", ""] + [x for p in parts for x in p[1]]
    lines += ["## Setting differences: GPTQ (ours vs llm-compressor)", ""] + [f"- {d}" for d in GPTQ_DIFFS]
    lines += ["", "## Setting differences: HQQ (ours vs hqq library)", ""] + [f"- {d}" for d in HQQ_DIFFS]
    lines += ["", "## Versions", "", "```", json.dumps(vers, indent=1), "```"]
    md.write_text("\n".join(lines + ["", NOTES]) + notes)
    print("\n".join(x for p in parts for x in md_table(p[0]["rows"])))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["prepare", "run-ours", "run-llmcompressor", "run-hqq", "ablation", "evaluate", "table",
                                      "all"])
    ap.add_argument("--model", type=Path, default=Path("/tmp/refcheck/smollm2-135m"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/refcheck/work-smol"))
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--tool-python", type=Path, default=Path("/tmp/refvenv/bin/python"))
    ap.add_argument("--bits", type=int, nargs="+", default=[4])
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="candidate names to run/evaluate (default: all)")
    ap.add_argument("--works", type=Path, nargs="+", default=[Path("/tmp/refcheck/work-qwen"), Path("/tmp/refcheck/work-smol")],
                    help="table: the work folders to report, one section each")
    args = ap.parse_args(argv)
    stages = {"prepare": prepare, "run-ours": run_ours, "run-llmcompressor": lambda a: run_tool(a, "llmc"),
              "run-hqq": lambda a: run_tool(a, "hqqlib"), "ablation": ablation, "evaluate": evaluate, "table": table}
    for s in (list(stages) if args.stage == "all" else [args.stage]):
        stages[s](args)


if __name__ == "__main__":
    main()
