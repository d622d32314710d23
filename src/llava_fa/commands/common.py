"""What several commands share: help texts of common options and how library errors reach the user."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from llava_fa.errors import LlavaFAError, UserError

DTYPE_HELP = "auto (float32 on CPU, the checkpoint's own dtype on CUDA), float32, bfloat16, float16."
FORWARD_MODE_HELP = ("How compressed layers run: cached (default), dequant, fused (affine), "
                     "spectral (fourier).")


@contextmanager
def reported_as_user_errors() -> Iterator[None]:
    """Turn the library's input errors into UserErrors: one line on stderr, exit code 2, no traceback."""
    try:
        yield
    except LlavaFAError as e:
        raise UserError(str(e)) from None
