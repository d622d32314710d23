"""The run-time section of docs/RESULTS.md: decoding from the compressed form on one H200.

Built from the records of `llava-fa bench-decode` (docs/results/decode_h200/, its gemlite/ subfolder)
and the per-layer kernel tables (docs/results/kernels_h200/*_eager.md); every figure the text quotes
is read from them. The bar plot is written beside the other figures.
"""

from __future__ import annotations

from pathlib import Path

from decode_table import baselines, figure, group_of, load_records, markdown
from plots import save
from results_runs import ROOT

RESULTS = ROOT / "docs" / "results"
DECODE = RESULTS / "decode_h200"
KERNELS = RESULTS / "kernels_h200"
FIGURE = RESULTS / "figures" / "decode_speed_h200.png"


def _speedups(records: list[dict], batch: str) -> dict[str, float]:
    """label -> tokens/s over the uncompressed run of the same records, at one batch size."""
    base = baselines(records)
    out = {}
    for r in records:
        b = base.get(group_of(r))
        if r.get("compressed_layers") and b is not None and batch in r["decode"]:
            out[r.get("label") or r["name"]] = r["decode"][batch]["tokens_per_s"] / b["decode"][batch]["tokens_per_s"]
    return out


def _memory(records: list[dict]) -> dict[str, tuple[float, float]]:
    """label -> (weight GiB on the GPU, of which runtime workspaces GiB)."""
    gib = float(1 << 30)
    return {r.get("label") or r["name"]: (r["memory"]["weight_bytes"] / gib, r["memory"]["workspace_bytes"] / gib)
            for r in records}


def _kernel_spans() -> dict[str, str]:
    """Ranges quoted in the text, from the per-layer kernel records (7B shapes, 1-16 tokens)."""
    from plots import read_json

    fourier, binary = read_json(KERNELS / "fourier_eager.json"), read_json(KERNELS / "binary_eager.json")

    def span(values: list[float], spec: str) -> str:
        return f"{format(min(values), spec)}-{format(max(values), spec)}"
    f_rows = [r for r in fourier["rows"] if r["tokens"] <= 16 and r["in"] >= 4096]
    b_rows = [r for r in binary["rows"] if r["tokens"] <= 16]
    return {"fourier_vs_old": span([min(r["spectral_us"], r["dequant_us"]) / r["fused_us"] for r in f_rows], ".0f"),
            "fourier_vs_dense": span([r["dense_us"] / r["fused_us"] for r in f_rows], ".2f"),
            "fourier_bw": span([100 * r["kernel_bytes"] / r["kernel_us"] / 1e3 / fourier["copy_gbs"] for r in f_rows],
                               ".1f"),
            "binary_vs_dense": span([r["dense_us"] / r["fused_us"] for r in b_rows], ".2f"),
            "binary_bw": span([100 * r["kernel_bytes"] / r["fused_us"] / 1e3 / binary["copy_gbs"] for r in b_rows],
                              ".1f")}


def _cuda_gemv_text() -> str:
    """The batch-1 CUDA gemv and the prefill GEMM of commit 0101892 (kernels_h200/0101892/fourier_rfft.json:
    CUDA-graph replays, warm L2), and the decode it gives (decode_h200/ at the same commit)."""
    from plots import read_json

    rec = read_json(KERNELS / "0101892" / "fourier_rfft.json")
    big = [r for r in rec["rows"] if r["in"] >= 4096]
    one = {f"{r['out']} x {r['in']}": r for r in big if r["tokens"] == 1}
    pre = {f"{r['out']} x {r['in']}": r for r in big if r["tokens"] == 256}
    def us(rows: dict, key: str) -> str:
        return ", ".join(f"{k} {r[key]:.1f}" for k, r in rows.items())
    bw = [100 * r["kernel_bytes"] / r["kernel_us"] / 1e3 / rec["copy_gbs"] for r in one.values()]
    return ("Since commit 0101892 one activation row of an rfft layer runs a CUDA C++ gemv (`kernels/fourier_gemv.cu`, "
            "built by nvcc on first use: the table of code pairs in shared memory, one copy per lane, float16 "
            "products summed eight at a time), and 17 tokens or more run one GEMM on the spectrum decoded per call "
            "(`kernels/fourier_dense.py`). Per layer (`cd scripts && PYTHONPATH=../src python bench_fourier_kernel.py "
            "--forms rfft --cudagraph`, kernels_h200/0101892/, CUDA-graph replays, warm L2), the gemv in us: "
            f"{us(one, 'kernel_us')} (the Triton gemv: {us(one, 'triton_us')}), {min(bw):.0f}-{max(bw):.0f}% of the "
            f"copy bandwidth on the codes; the whole fused layer {us(one, 'fused_us')} against dense bf16's "
            f"{us(one, 'dense_us')}; at 256 tokens the prefill GEMM {us(pre, 'kernel_us')} against the Triton "
            f"tiles' {us(pre, 'triton_us')}. The bf16 and 3+3-bit decode records in the table above are of that commit "
            "(`RESULTS=$OUT/decode bash scripts/device/bench_decode.sh synthetic \"bf16,fourier:mag_bits=3:phase_bits=3\"`; "
            "decode_h200/0101892_triton_gemv/: the 3+3-bit run with `LLAVA_FA_FOURIER_GEMV=triton`). ")


def _kernel_table(name: str) -> list[str]:
    path = KERNELS / f"{name}_eager.md"
    return ["```", path.read_text().rstrip(), "```"] if path.exists() else []


def runtime_section() -> list[str]:
    if not DECODE.exists():
        return []
    auto, gemlite = load_records(DECODE), load_records(DECODE / "gemlite")
    for r in gemlite:
        if r.get("compressed_layers"):
            r["label"] = f"{r.get('label') or r['name']} [gemlite]"
    # one bf16 bar (the default-mode run's); the gemlite runs measured their own, quoted in their table
    save(figure(auto + [r for r in gemlite if r.get("compressed_layers")]), FIGURE)
    s1, g1, g16 = _speedups(auto, "1"), _speedups(gemlite, "1"), _speedups(gemlite, "16")
    mem = _memory(auto)
    fourier = "fourier:mag_bits=3:phase_bits=3"
    text = (
        "`bash scripts/device/bench_decode.sh synthetic \"bf16,affine:bits=4,fourier:mag_bits=3:phase_bits=3,binary\"`, "
        "the same with `\"bf16,fourier:mag_bits=2:phase_bits=3,fourier:mag_bits=3:phase_bits=5,affine:bits=3,"
        "affine:bits=2:group_size=32\"` and, for gemlite (carried as `.carry/gemlite`, on `PYTHONPATH`), `python -m llava_fa bench-decode --synthetic 7b "
        "--formats bf16,affine:bits=4,affine:bits=2:group_size=32 --forward-mode gemlite --cuda-graphs --batch 1,16 "
        "--prompt 512 --new-tokens 128 --device cuda`: a random Llama-2-7B-shaped decoder (all 224 linears "
        "compressed with data-free codes: speed and memory only), bf16 activations, one decode step captured in a "
        "CUDA graph over a static KV cache, each table measured in one run against its own bf16 row. "
        f"Memory is met: every format holds its weights compressed on the GPU ({mem['affine:bits=4'][0]:.2f} GiB "
        f"at 4-bit affine, {mem['binary'][0]:.2f} GiB binary, against {mem['bf16'][0]:.2f} GiB in bf16; fourier "
        f"{mem[fourier][0]:.2f} GiB, of which {mem[fourier][1]:.2f} GiB is the kernel's layout, which holds the only "
        "copy of the codes, packed at their stored width: its linears take about a fifth of bf16's). Speed is not met by our own kernels: in the default mode `auto` "
        + ", ".join(f"{k} decodes at {v:.2f}x" for k, v in s1.items()) + " of bf16 at batch 1. "
        "Through gemlite (a kernel library, forward mode `gemlite`, on the same affine codes) 4-bit and 2-bit "
        f"affine decode faster than bf16 at batch 1 ({', '.join(f'{k} {v:.2f}x' for k, v in g1.items())}) and "
        f"slower at batch 16 ({', '.join(f'{v:.2f}x' for v in g16.values())}).")
    k = _kernel_spans()
    per_layer = (
        "Per layer at 7B shapes and 1-16 tokens (`cd scripts && PYTHONPATH=../src python bench_fourier_kernel.py "
        "--json F` and `PYTHONPATH=src python scripts/bench_binary_kernel.py --json F`, cold L2, host overhead "
        "included, dense bf16 measured in the same run; the tables below, of commit b8276b3): the LLaVA-FA `fused` "
        "path (one rfft of the activation, "
        "then `kernels/fourier_matmul.py`: codes to 2 level cos/sin tiles in registers, `tl.dot` or a row sum "
        f"with the spectrum) is {k['fourier_vs_old']}x faster than the dequantize-per-call and spectral paths it "
        f"replaces, {k['fourier_vs_dense']}x the speed of dense bf16; the kernel alone reads its bytes at "
        f"{k['fourier_bw']}% of the copy bandwidth. These kernel tables are of commit b8276b3 (its "
        "fourier 3+3-bit and bf16 decode records: decode_h200/b8276b3/): the fourier kernel reads the codes packed "
        "at their stored width and one int32 (cos, sin) pair per code from a single table (ptxas for sm_90: 1,040 SASS "
        "instructions per batch-1 tile, 96 registers). The records of commit 2264caf (kernels_h200/2264caf/, "
        "decode_h200/2264caf/: one byte per code beside the stored codes, 1,264 instructions per tile) measured "
        "22 us for the kernel on 4096 x 4096 at batch 1 and 88.4 tokens/s for the 3+3-bit decode; the packed "
        "kernel measures 61-79 us per call in the kernel table (host launch included) yet decodes faster "
        "(CUDA graphs, no host launches) in half the memory, with a slower prefill and batch 16. Profiled later "
        "(kernels_h200/d30645b_profile/: torch profiler and ncu, 4096 x 4096): on the GPU the packed kernel takes "
        "14.2 us at batch 1 (warm L2; rfft 2.6 us, four elementwise kernels 5.0 us), 60.7 us at batch 16 and "
        "748 us at 256 tokens, L1-bound (82-92% busy, DRAM under 7%); the Triton launch alone costs 45 us on the "
        "host. A batch-1 kernel kept in the codes' load layout (kernels_h200/d123f6d/, sweep of its tiles, cold "
        "L2) measures 18.5 us on 4096 x 4096 and 49.0 us on 11008 x 4096 against dense bf16's 18.9 and 35.1 us: "
        "about 8% faster than before, still L1-bound; its decode is not re-measured. "
        + _cuda_gemv_text() +
        "The fourier 2+3 and 3+5 bit and the "
        "affine 3-bit and 2-bit decode records are of commit 2264caf, affine 4-bit and binary of bd36f36, each "
        "measured against a bf16 row within 3% of this one. A CUDA profile at 2264caf (4096 x 4096, batch 1, warm "
        "L2) put 68% of the GPU time in the kernel, 11% in the activation's rfft and 21% in four elementwise "
        "kernels; the kernel was bound by its instructions (about 40 per entry), not its reads: every bit width "
        "decoded at the same speed. "
        f"The binary kernel (`kernels/binary_matmul.py`): {k['binary_vs_dense']}x of dense, "
        f"{k['binary_bw']}% of the copy bandwidth.")
    return (["", "## Run time on one H200: decoding from the compressed form", "", text, "",
             f"![decode speed]({FIGURE.relative_to(ROOT / 'docs').as_posix()})", "", "Default forward mode (`auto`):",
             "", markdown(auto).rstrip(), "", "Forward mode `gemlite` for affine:", "", markdown(gemlite).rstrip(), "",
             per_layer, ""] + _kernel_table("fourier") + [""] + _kernel_table("binary"))


if __name__ == "__main__":  # preview
    print("\n".join(runtime_section()))
    print(Path(FIGURE))
