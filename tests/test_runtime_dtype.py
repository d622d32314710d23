"""`--dtype` names resolve in one place (llava_fa.runtime), and records say how float32 matmuls ran."""

import pytest
import torch

from llava_fa.errors import ConfigError
from llava_fa.runtime import environment, resolve_dtype


@pytest.fixture
def matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_auto_and_names_resolve():
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") is torch.float16


def test_tf32_is_float32_with_tf32_matmuls_and_the_record_says_so(matmul_precision):
    torch.set_float32_matmul_precision("highest")
    assert environment()["float32_matmul_precision"] == "highest"
    assert resolve_dtype("tf32", "cpu") is torch.float32
    assert torch.get_float32_matmul_precision() == "high"
    assert environment()["float32_matmul_precision"] == "high"


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ConfigError, match="auto, float32, tf32, bfloat16 or float16"):
        resolve_dtype("fp8", "cpu")
