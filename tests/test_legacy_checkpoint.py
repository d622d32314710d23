"""A checkpoint written before the formats/ restructuring still loads, gives the same logits, and
loading it imports no compression method (tests/fixtures/legacy_v1.md says how it was made)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_v1"
EXPECTED = json.loads((FIXTURE.parent / "legacy_v1_expected.json").read_text())


def test_legacy_checkpoint_loads_with_same_logits():
    import llava_fa  # noqa: F401  (registers the quantizer with transformers)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(FIXTURE, dtype=torch.float32).eval()
    formats = {name: m.format for name, m in model.named_modules() if hasattr(m, "format")}
    assert formats == {name: fmt for name, (_, fmt) in EXPECTED["modules"].items()}
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(EXPECTED["input_ids"])).logits[0]
    torch.testing.assert_close(logits, torch.tensor(EXPECTED["logits"]), atol=1e-4, rtol=1e-4)


def test_loading_a_checkpoint_imports_no_method():
    code = ("import sys, torch, llava_fa.io.hf\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(FIXTURE)!r})\n"
            "m(input_ids=torch.tensor([[1, 2, 3]]))\n"
            "bad = sorted(k for k in sys.modules if k.startswith('llava_fa.methods'))\n"
            "print('methods imported:', bad)\n"
            "sys.exit(1 if bad else 0)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
