"""The CUDA C++ batch-1 gemv of rfft fourier layers (kernels/fourier_gemv.cu): which layouts it takes,
its fallback where it cannot be built, and (on a GPU) its result against the Triton gemv plus the
epilogue in torch, bit for bit the same on a repeated call."""

import pytest
import torch
from test_fourier_kernel import make_layer

from llava_fa.formats import fourier_runtime
from llava_fa.kernels import cuda_build
from llava_fa.kernels import fourier_gemv_cuda as kg

# (m, n, params): rows not a multiple of the 128 of a block, K splits of several blocks (n 1000 -> 499
# entries, 4 splits of 128), every packed word shape (2+1 .. 4+4 bits), ODC rows, one group per row
GEMV_CASES = [
    (200, 1000, dict(group_size=64, row_scales=True)),
    (64, 300, dict(group_size=32, mag_bits=2, phase_bits=3)),  # 5-bit codes: 64-bit words
    (132, 130, dict(group_size=-1, mag_bits=4, phase_bits=4)),
    (36, 514, dict(group_size=128, mag_bits=3, phase_bits=4)),  # 7-bit codes
    (128, 257, dict(group_size=64, mag_bits=2, phase_bits=1)),  # 3-bit codes, odd width (no Nyquist column)
    (40, 96, dict(group_size=32, mag_bits=2, phase_bits=2)),  # 4-bit codes
    (24, 64, dict(group_size=-1, mag_bits=1, phase_bits=1)),  # 2-bit codes
]


def _layout(m, n, params, device="cpu"):
    layer = make_layer(m, n, {"transform": "rfft", "rank": 0, **params}, device)
    return layer, fourier_runtime.kernel_layout(layer, torch.device(device))


def test_layouts_it_takes():
    assert all(kg.shape_fits(_layout(*case)[1]) for case in GEMV_CASES)  # the GPU check below runs each
    assert {_layout(*case)[1].bits for case in GEMV_CASES} == set(range(2, 9))  # every packed word shape
    assert kg.shape_fits(_layout(64, 300, dict(group_size=64))[1], kw=64)
    assert not kg.shape_fits(_layout(64, 300, dict(group_size=32))[1], kw=64)  # a warp's entries span two groups
    with pytest.raises(ValueError, match="entries per warp and warps per block"):
        kg.fourier_gemv(torch.zeros(1, 501, dtype=torch.complex64), _layout(*GEMV_CASES[0])[1], kw=16, warps=2)
    assert not kg.shape_fits(_layout(26, 48, dict(group_size=32))[1])  # rows not in fours
    assert not kg.shape_fits(_layout(40, 70, dict(group_size=16))[1])  # groups smaller than a warp's entries
    rfft2 = make_layer(24, 20, dict(transform="rfft2", group_size=16))
    assert not kg.shape_fits(fourier_runtime.kernel_layout(rfft2, torch.device("cpu")))


def test_no_gpu_no_kernel():
    """On a CPU tensor the kernel does not run (the forward keeps its other paths) and says why."""
    _, rt = _layout(*GEMV_CASES[0])
    spec = torch.fft.rfft(torch.randn(1, 1000), dim=-1)
    assert not kg.runs(spec, rt)
    assert cuda_build.kernel(kg.SOURCE, "polar_gemv_b6_kw32", torch.device("cpu")) is None
    assert cuda_build.missing(kg.SOURCE, torch.device("cpu")) == "no CUDA device"


def check_gemv_matches(device: str) -> None:
    from llava_fa.kernels import fourier_matmul as km

    for m, n, params in GEMV_CASES:
        layer, rt = _layout(m, n, params, device)
        spec = torch.fft.rfft(torch.randn(1, n, device=device) / rt.in_scale, dim=-1)
        z = km.fourier_matmul(spec, rt, torch.float32)
        ref = z / rt.rows if rt.rows is not None else z
        ref = ref + layer.bias.float()
        for kw, warps in [s for s in kg.SHAPES[rt.bits] if kg.shape_fits(rt, s[0])]:
            run = lambda: kg.fourier_gemv(spec, rt, torch.float32, rows=rt.rows, bias=layer.bias, kw=kw,  # noqa: E731
                                          warps=warps)
            got = run()
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            print(f"{m}x{n} {params} kw {kw} warps {warps}: {err:.2e}")
            assert err <= 2e-3, (m, n, params, kw, warps, err)  # float16 sums of eight products (fourier_gemv)
            assert torch.equal(got, run())
        bf = kg.fourier_gemv(spec, rt, torch.bfloat16)
        assert bf.dtype == torch.bfloat16 and (bf.float() - z).abs().max() <= 1e-2 * z.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and nvcc")
def test_gemv_on_cuda():
    check_gemv_matches("cuda")


def test_status_names_each_source_asked_for(monkeypatch):
    """cuda_build.status() (in bench-decode records) names each CUDA source asked for: built, or why not."""
    modules = {(str(kg.SOURCE), 0): "nvcc not found (set CUDA_HOME to a CUDA toolkit)\nmore",
               ("/x/other.cu", 1): cuda_build.ctypes.c_void_p(1)}
    monkeypatch.setattr(cuda_build, "_MODULES", modules)
    assert cuda_build.status() == {"fourier_gemv.cu@cuda:0": "nvcc not found (set CUDA_HOME to a CUDA toolkit)",
                                   "other.cu@cuda:1": "built"}


FAKE_NVCC = """#!{python}
import sys, pathlib
log = pathlib.Path({log!r})
if sys.argv[1:] == ["--version"]:
    print("fake nvcc 13.0")
    sys.exit(0)
log.write_text(log.read_text() + "build\\n" if log.exists() else "build\\n")
if {fail}:
    sys.stderr.write("k.cu(3): error: expected a ';'\\n")
    sys.exit(1)
out = sys.argv[sys.argv.index("-o") + 1]
pathlib.Path(out).write_bytes(b"cubin for " + sys.argv[-1].encode())
"""


def _fake_nvcc(tmp_path, fail: bool):
    import sys

    script = tmp_path / ("bad-nvcc" if fail else "nvcc")
    script.write_text(FAKE_NVCC.format(python=sys.executable, log=str(tmp_path / "calls.log"), fail=fail))
    script.chmod(0o755)
    return str(script)


def test_cubins_are_built_once_per_source_and_arch(tmp_path, monkeypatch):
    """nvcc runs once per (source, architecture, nvcc version): the cubin is cached under their hash,
    written to a private file first; a failing build raises with nvcc's message and leaves no file."""
    monkeypatch.setenv("LLAVA_FA_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "k.cu"
    source.write_text("// a kernel\n")
    nvcc = _fake_nvcc(tmp_path, fail=False)
    first = cuda_build._build(source, "90", nvcc)
    assert first.read_bytes() == b"cubin for " + str(source).encode() and first.parent == tmp_path / "cache" / "cuda"
    assert cuda_build._build(source, "90", nvcc) == first  # cached: nvcc not run again
    assert (tmp_path / "calls.log").read_text() == "build\n"
    assert cuda_build._build(source, "80", nvcc) != first  # another architecture: another cubin
    source.write_text("// changed\n")
    assert cuda_build._build(source, "90", nvcc) != first  # a changed source builds again
    assert (tmp_path / "calls.log").read_text().count("build") == 3
    source.write_text("// broken\n")
    with pytest.raises(RuntimeError, match="expected a ';'"):
        cuda_build._build(source, "90", _fake_nvcc(tmp_path, fail=True))
    assert sorted(p.name for p in (tmp_path / "cache" / "cuda").iterdir()) == sorted(
        p.name for p in (tmp_path / "cache" / "cuda").glob("k-sm*.cubin"))  # no leftover private files
    assert len(list((tmp_path / "cache" / "cuda").glob("k-sm*.cubin"))) == 3
