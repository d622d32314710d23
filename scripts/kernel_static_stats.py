"""Compile the fourier kernels for a GPU target without a GPU and print what ptxas reports.

Registers per thread, spills, shared memory, SASS instruction count and the global loads of the
PTX, for the decode (row-sum) and tensor-core kernels of kernels/fourier_matmul.py at 7B-like
constexprs. A static proxy, not a timing: use it between GPU sessions to see what a change does
to the code (occupancy from registers, instruction count per tile, vectorized loads). Needs Triton
(a CPU build of torch has none: `pip install triton` into another venv and put it on PYTHONPATH):

    PYTHONPATH=src:/path/to/triton/site-packages python scripts/kernel_static_stats.py [--arch 90]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from llava_fa.kernels import fourier_matmul as km

POINTERS = {"spec_ptr": "*fp32", "codes_ptr": "*u8", "tables_ptr": "*i32", "scales_ptr": "*fp16",
            "gstart_ptr": "*i32", "goff_ptr": "*i32", "edge_ptr": "*fp32", "out_ptr": "*fp32"}
COMMON = {"K_REG": 2047, "GROUP": 64, "ALIGNED": True, "BITS": 6, "ENTRIES": 4, "WORD_BYTES": 3, "N_EDGE": 2,
          "COMPLEX_OUT": False}
KERNELS = {  # name -> (kernel, its runtime scalars in order, its constexprs)
    "gemv (batch 1)": (km._fourier_gemv_kernel, ["M", "stride_c", "edge0", "edge1", "N_WORDS"],
                       {**COMMON, "K_CHUNK": 256, "SPLIT_K": 8, "ASM_GATHER": True, "BLOCK_M": 128, "BLOCK_K": 32}),
    "dot (batch 16)": (km._fourier_matmul_kernel, ["B", "M", "stride_spec", "stride_c", "stride_out", "edge0", "edge1", "N_WORDS"],
                       {**COMMON, "K_CHUNK": 512, "SPLIT_K": 4, "DOT_DTYPE": "bf16", "BLOCK_B": 16, "BLOCK_M": 32,
                        "BLOCK_K": 128}),
}


def compile_stats(kernel, scalars: list[str], consts: dict, arch: int, ptxas: Path) -> str:
    names = list(kernel.arg_names)
    sig = {n: POINTERS.get(n, "i32" if n in scalars else "constexpr") for n in names}
    if "DOT_DTYPE" in consts:
        consts = {**consts, "DOT_DTYPE": triton.language.bfloat16}
    aligned = [n for n in names if n in POINTERS or n in ("M", "stride_c", "stride_spec", "stride_out")]
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned})  # as a launch specializes
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4, "num_stages": 3})
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(ptx)
        run = subprocess.run([str(ptxas), f"-arch=sm_{arch}a", "-v", "k.ptx", "-o", "k.cubin"], cwd=tmp,
                             capture_output=True, text=True, check=True)
        sass = subprocess.run([str(ptxas.parent / "cuobjdump"), "-sass", "k.cubin"], cwd=tmp, capture_output=True,
                              text=True, check=True).stdout
    regs = re.search(r"Used (\d+) registers", run.stderr).group(1)
    spills = re.search(r"(\d+) bytes spill stores", run.stderr)
    loads = sorted(set(re.findall(r"ld\.global[.\w:]*", ptx)))
    count = {kind: len(re.findall(re.escape(kind) + r"\s", ptx)) for kind in loads}
    instructions = len(re.findall(r"^\s+/\*[0-9a-f]+\*/", sass, re.M))
    return (f"registers {regs}, spill stores {spills.group(1) if spills else 0} B, shared "
            f"{compiled.metadata.shared} B, SASS instructions {instructions}, PTX global loads {count}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    args = ap.parse_args()
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    for name, (kernel, scalars, consts) in KERNELS.items():
        print(f"{name}: {compile_stats(kernel, scalars, consts, args.arch, ptxas)}")


if __name__ == "__main__":
    main()
