"""Run a kernel check under Triton's interpreter, for the kernel tests of every format."""

import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))


def run_in_triton_interpreter(code: str) -> None:
    """Run `code` in a fresh Python with TRITON_INTERPRET=1 (the interpreter is chosen when a kernel module is
    imported, so not in this process), from the repository root with tests/ importable; it must print 'ok'."""
    path = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    run = subprocess.run([sys.executable, "-c", code + "; print('ok')"], env=env, capture_output=True, text=True,
                         timeout=900, cwd=os.path.dirname(TESTS))
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
