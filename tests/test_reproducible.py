"""The same command on the same input gives the same checkpoint: compressing a model twice (in this
process, and in a fresh one through the command line) stores bit-identical tensors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import compress_fixtures as F
from llava_fa.io.files import tensor_digests
from llava_fa.pipeline import compress_checkpoint
from llava_fa.recipe import Calibration, Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

CALIBRATION = Calibration(source="auto", nsamples=4, seqlen=32)
METHODS = {  # the randomized and data-dependent steps: calibration sampling, ODC, act-order, salient columns
    "fa": {"odc": "calibrated", "rank": 4, "iters": 2},
    "gptq": {"bits": 3, "act_order": True},
    "sab": {},
}


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return F.save_llava_dir(tmp_path_factory.mktemp("dense") / "llava")


@pytest.mark.parametrize("method", METHODS)
def test_compressing_twice_stores_identical_tensors(tmp_path, dense, method):
    recipe = Recipe(method=method, options=METHODS[method], calibration=CALIBRATION)
    compress_checkpoint(dense, recipe, tmp_path / "a")
    compress_checkpoint(dense, recipe, tmp_path / "b")
    a, b = tensor_digests(tmp_path / "a"), tensor_digests(tmp_path / "b")
    assert a and a == b


def test_a_fresh_process_stores_the_same_tensors(tmp_path, dense):
    recipe = Recipe(method="fa", options=METHODS["fa"], calibration=CALIBRATION)
    compress_checkpoint(dense, recipe, tmp_path / "here")
    cmd = [sys.executable, "-m", "llava_fa", "compress", str(dense), "--method", "fa", "-O", "odc=calibrated",
           "-O", "rank=4", "-O", "iters=2", "--nsamples", "4", "--seqlen", "32", "--device", "cpu",
           "--out", str(tmp_path / "there")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert tensor_digests(tmp_path / "here") == tensor_digests(tmp_path / "there")


def test_tensor_digests_see_one_changed_value(tmp_path):
    import torch
    from safetensors.torch import save_file

    tensors = {"a": torch.arange(6, dtype=torch.bfloat16), "b": torch.ones(2, 3)}
    for name in ("x", "y", "z"):
        (tmp_path / name).mkdir()
    save_file(tensors, tmp_path / "x" / "model.safetensors")
    save_file(tensors, tmp_path / "y" / "model.safetensors", metadata={"format": "pt"})  # another header
    save_file(dict(tensors, b=torch.ones(2, 3).index_fill_(1, torch.tensor([2]), 1.5)), tmp_path / "z" / "model.safetensors")
    x, y, z = (tensor_digests(tmp_path / n) for n in "xyz")
    assert set(x) == {"a", "b"} and x == y
    assert x["a"] == z["a"] and x["b"] != z["b"]
