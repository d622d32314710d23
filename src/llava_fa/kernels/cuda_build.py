"""Build a CUDA C++ source of this package into a cubin once per machine and launch its kernels by name.

The kernels that need shared memory laid out by hand (kernels/fourier_gemv.cu: a lookup table with
one copy per lane) are CUDA C++, not Triton. They take one struct of raw device pointers and sizes,
so nothing needs torch headers: `nvcc` (found as torch's cpp_extension finds it, CUDA_HOME) builds a
cubin in seconds for the GPU's own architecture, into $LLAVA_FA_CACHE/cuda/ under a name made of the
source's hash, the architecture and nvcc's version (a changed source or GPU builds again). The build
writes a private file and renames it: a reader never loads half a cubin. The cubin is loaded and its
kernels launched through the CUDA driver API on torch's current stream, as Triton launches its own
(so CUDA graphs capture them). Without nvcc or a GPU, `kernel` returns None and `missing` says why;
callers keep their Triton or torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from llava_fa.paths import cache_dir

_MODULES: dict[tuple[str, int], ctypes.c_void_p | str] = {}  # (source, device) -> CUmodule, or why it is missing
_FUNCTIONS: dict[tuple[str, int, str], ctypes.c_void_p] = {}
_DRIVER: list[ctypes.CDLL] = []


def _driver() -> ctypes.CDLL:
    if not _DRIVER:
        _DRIVER.append(ctypes.CDLL("libcuda.so.1"))
    return _DRIVER[0]


def _check(result: int, what: str) -> None:
    if result != 0:
        raise RuntimeError(f"{what} failed (CUresult {result})")


def _nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    found = Path(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    return str(found) if found is not None and found.exists() else shutil.which("nvcc")


def _build(source: Path, arch: str, nvcc: str) -> Path:
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(source.read_bytes() + arch.encode() + version.encode()).hexdigest()[:16]
    out = cache_dir() / "cuda" / f"{source.stem}-sm{arch}-{key}.cubin"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        part = Path(tmp) / out.name
        cmd = [nvcc, "-O3", "-std=c++17", "-cubin", "-lineinfo", f"-arch=sm_{arch}", "-o", str(part), str(source)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"nvcc failed on {source.name}:\n{done.stderr[-4000:]}")
        os.replace(part, out)
    return out


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _module(source: Path, device: torch.device) -> ctypes.c_void_p | str:
    index = _index(device)
    key = (str(source), index)
    if key not in _MODULES:
        try:
            nvcc = _nvcc()
            if nvcc is None:
                raise RuntimeError("nvcc not found (set CUDA_HOME to a CUDA toolkit)")
            major, minor = torch.cuda.get_device_capability(index)
            cubin = _build(source, f"{major}{minor}", nvcc).read_bytes()
            module = ctypes.c_void_p()
            with torch.cuda.device(index):
                torch.cuda.current_stream().synchronize()  # torch's primary context is current on this thread
                _check(_driver().cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")
            _MODULES[key] = module
        except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
            _MODULES[key] = str(err)
    return _MODULES[key]


def kernel(source: Path, name: str, device: torch.device) -> ctypes.c_void_p | None:
    """The kernel `name` (extern "C") of `source` built for `device`'s GPU, or None (`missing` says why)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    module = _module(source, device)
    if isinstance(module, str):
        return None
    key = (str(source), _index(device), name)
    if key not in _FUNCTIONS:
        func = ctypes.c_void_p()
        _check(_driver().cuModuleGetFunction(ctypes.byref(func), module, name.encode()), f"cuModuleGetFunction {name}")
        _FUNCTIONS[key] = func
    return _FUNCTIONS[key]


def missing(source: Path, device: torch.device) -> str | None:
    """Why `kernel(source, ..., device)` is None, once it was asked for."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return "no CUDA device"
    found = _MODULES.get((str(source), _index(device)))
    return found if isinstance(found, str) else None


def status() -> dict[str, str]:
    """Every source asked for so far, per device: "built", or why not (for records: which kernel ran)."""
    return {f"{Path(source).name}@cuda:{index}": "built" if not isinstance(module, str) else module.splitlines()[0]
            for (source, index), module in _MODULES.items()}


def launch(func: ctypes.c_void_p, grid: tuple[int, int], threads: int, args: ctypes.Structure,
           device: torch.device) -> None:
    """Run `func` with one by-value struct argument on torch's current stream of `device`."""
    params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.pointer(args), ctypes.c_void_p))
    stream = ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)
    _check(_driver().cuLaunchKernel(func, grid[0], grid[1], 1, threads, 1, 1, 0, stream, params, None),
           "cuLaunchKernel")
