"""Distributed compression (pipeline/distributed.py): `torchrun --nproc-per-node 2 -m llava_fa compress`
on CPU (gloo) stores exactly the tensors a single process stores, for a dense VLM and an MoE model
(whose expert linears stay together on one rank)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import compress_fixtures as F
import test_moe
from llava_fa.io.files import tensor_digests
from llava_fa.pipeline.distributed import SINGLE, World, assign_owners

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = {"gptq": ["--method", "gptq", "--bits", "3", "--act-order"],
        # the vision tower, projector and LM head too: the blocks around the decoder, where the samples
        # split across ranks (pipeline/passes.py) come back together (the head's pass takes every sample)
        "gptq-all": ["--method", "gptq", "--bits", "3", "-t", "Linear", "-t", "lm_head", "--vision", "--projector"],
        "fa": ["--method", "fa", "-O", "odc=calibrated", "-O", "rank=4", "-O", "iters=2"]}


def compress(dense, out, method: str, processes: int, expect: int | None = 0) -> subprocess.CompletedProcess:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-port",
               str(29500 + os.getpid() % 1000)] if processes > 1 else [sys.executable])
    cmd = [*launch, "-m", "llava_fa", "compress", str(dense), *ARGS[method], "--nsamples", "4", "--seqlen", "32",
           "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert expect is None or proc.returncode == expect, proc.stderr[-3000:]
    return proc


def moe_dir(path):
    model = test_moe.qwen3_moe()
    model.save_pretrained(path)
    F.tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("method,build", [("gptq", F.save_llava_dir), ("gptq-all", F.save_llava_dir), ("fa", moe_dir)])
def test_two_gloo_ranks_store_the_tensors_of_one_process(tmp_path, method, build):
    dense = build(tmp_path / "dense")
    one = compress(dense, tmp_path / "one", method, 1)
    two = compress(dense, tmp_path / "two", method, 2)
    digests = tensor_digests(tmp_path / "one")
    assert digests and digests == tensor_digests(tmp_path / "two")
    assert two.stderr.count("wrote ") == 1 and one.stderr.count("wrote ") == 1  # rank 0 alone reports
    report = json.loads((tmp_path / "two" / "compress_report.json").read_text())
    if method == "gptq-all":
        assert {"lm_head", "model.multi_modal_projector.linear_1"} <= {row["name"] for row in report["layers"]}
    ranks = report["rank_stage_seconds"]
    assert len(ranks) == 2 and all({"compress", "wait for ranks", "share"} <= set(r) for r in ranks)


def test_a_bad_weight_stops_every_rank_with_the_message_of_one_process(tmp_path):
    """The NaN/Inf check is shared between the ranks (each reads every other module); the bad weight
    sits in layer 1, read by rank 1, and both ranks stop with the single process's message and code."""
    from transformers import LlavaForConditionalGeneration

    path = F.save_llava_dir(tmp_path / "nan")
    model = LlavaForConditionalGeneration.from_pretrained(path)
    with torch.no_grad():
        model.model.language_model.layers[1].mlp.up_proj.weight[3, 3] = float("inf")
    model.save_pretrained(path)
    one = compress(path, tmp_path / "one", "gptq", 1, expect=2)
    two = compress(path, tmp_path / "two", "gptq", 2, expect=None)
    message = next(line for line in one.stderr.splitlines() if "NaN/Inf" in line)
    assert "layers.1.mlp.up_proj" in message and "Traceback" not in one.stderr
    assert two.returncode != 0 and two.stderr.count(message.strip()) == 2, two.stderr[-3000:]  # both ranks
    assert not (tmp_path / "two").exists()


def test_owners_balance_weights_and_keep_experts_together():
    from llava_fa.formats import unfuse_experts
    from llava_fa.selection import default_patterns, find_parts, select

    model = test_moe.qwen3_moe()
    names = select(model, *default_patterns(find_parts(model)))
    unfuse_experts(model, names)
    layer = tuple(n for n in names if ".layers.0." in n)
    owners = assign_owners(model, layer, World(rank=0, size=2))
    assert set(owners.values()) == {0, 1}
    experts = {owners[n] for n in layer if ".experts." in n}
    assert len(experts) == 1  # one experts module: one rank
    loads = [sum(model.get_submodule(n).weight.numel() for n in layer if owners[n] == r) for r in (0, 1)]
    assert min(loads) > 0
    assert assign_owners(model, layer, SINGLE) == {n: 0 for n in layer}


def test_samples_split_in_contiguous_shares_except_for_moe_or_too_few():
    from llava_fa.pipeline.passes import sample_split

    dense = F.llava()
    names = [n for n, m in dense.named_modules() if n.endswith("q_proj")]
    split = sample_split(World(1, 2), 5, dense, names)
    assert split.bounds == (0, 2, 5) and split.mine == range(2, 5) and split.of(0) == range(0, 2)
    assert sample_split(SINGLE, 5, dense, names) is None  # one process: every sample
    assert sample_split(World(0, 4), 3, dense, names) is None  # fewer samples than ranks
    from llava_fa.formats import unfuse_experts
    from llava_fa.selection import default_patterns, find_parts, select

    moe = test_moe.qwen3_moe()
    targets = select(moe, *default_patterns(find_parts(moe)))
    unfuse_experts(moe, targets)
    assert any(".experts." in n for n in targets)
    assert sample_split(World(0, 2), 8, moe, targets) is None  # routing is observed in the pass itself
