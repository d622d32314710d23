"""Same inputs through two checkouts of llava_fa: are the stored codes of gptq, fa-gptq and the
binarization family bit-identical? (Used to check the restructuring of the feedback loop.)

    git worktree add /tmp/old 685b23c            # the code before the restructuring
    python scripts/code_identity_check.py run /tmp/old/src /tmp/old.pt
    python scripts/code_identity_check.py run src /tmp/new.pt
    python scripts/code_identity_check.py compare /tmp/old.pt /tmp/new.pt

`run` imports llava_fa from SRC (one thread, so BLAS reductions keep their order) and saves every
method output of the cases below; `compare` prints, per method, how many cases are identical.
"""

import sys
from collections import defaultdict

import torch

if len(sys.argv) == 4 and sys.argv[1] == "run":
    sys.path.insert(0, sys.argv[2])
    torch.set_num_threads(1)
    import llava_fa

    assert sys.argv[2].rstrip("/").split("/")[-1] in llava_fa.__file__, llava_fa.__file__
    from llava_fa.methods import LayerStats, build_config, get_method
    from llava_fa.methods.gptq import gptq_quantize


def equal(x, y) -> bool:
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x)
    if isinstance(x, (tuple, list)):
        return all(equal(p, q) for p, q in zip(x, y))
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)


def compare(a_path: str, b_path: str) -> None:
    a, b = torch.load(a_path), torch.load(b_path)
    summary = defaultdict(lambda: [0, 0])
    for key in a:
        summary[key.split()[0]][0] += 1
        summary[key.split()[0]][1] += equal(a[key], b[key])
    for family, (n, same) in summary.items():
        print(f"{family:16s} {same}/{n} identical")


def run_cases(out_path: str) -> None:
    def problem(out_f, n, seed, tokens=600):
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(out_f, n, generator=g) * 0.02
        k = max(4, n // 4)
        Xt = torch.randn(tokens, k, generator=g) @ torch.randn(k, n, generator=g) + 0.1 * torch.randn(tokens, n, generator=g)
        Xv = torch.randn(tokens // 2, n, generator=g) * (torch.rand(n, generator=g) * 3)
        if n > 8:
            Xt[:, 3] = 0; Xv[:, 3] = 0  # a dead input
        stats = LayerStats(n, xtx={"text": Xt.T @ Xt, "image": Xv.T @ Xv}, sq={"text": (Xt * Xt).sum(0), "image": (Xv * Xv).sum(0)},
                           tokens={"text": tokens, "image": tokens // 2})
        return W, stats


    out = {}
    # GPTQ
    for n in (64, 128, 192, 256):
        for seed in (0, 1):
            W, st = problem(48, n, seed)
            H = st.hessian("all")
            for bits in (2, 3, 4):
                for gs in (32, 64, -1):
                    for act in (False, True):
                        for bs in (128, 48):
                            for sym in ((False, True) if bits > 2 else (False,)):
                                key = f"gptq n{n} s{seed} b{bits} g{gs} act{int(act)} bs{bs} sym{int(sym)}"
                                out[key] = gptq_quantize(W, H, bits=bits, group_size=gs, sym=sym, block_size=bs, act_order=act)
    # the binarization family
    for n in (64, 128, 200, 256):
        for seed in (0, 1):
            W, st = problem(32, n, seed)
            for name in ("billm", "arb", "arb-x", "arb-rc", "pb-llm", "sab"):
                for bs in (64, 128):
                    opts = {"block_size": bs}
                    key = f"{name} n{n} s{seed} bs{bs}"
                    out[key] = get_method(name)(build_config(name, opts)).compress(W, st).state_dict()
            for name, opts in (("billm", {"salient": False}), ("arb", {"bitmap": False, "iters": 3}),
                               ("arb-rc", {"salient": False}), ("sab", {"lambda_steers_selection": True}),
                               ("sab", {"lambda_floor": 0.5}), ("pb-llm", {"salient_frac": 0.05})):
                key = f"{name} n{n} s{seed} {sorted(opts.items())}"
                out[key] = get_method(name)(build_config(name, opts)).compress(W, st).state_dict()
            out[f"billm-nostats n{n} s{seed}"] = get_method("billm")().compress(W, None).state_dict()
    # fa-gptq
    for n in (64, 128, 256):
        for seed in (0, 1):
            W, st = problem(32, n, seed)
            for opts in ({}, {"levels": "uniform"}, {"mag_bits": 3, "phase_bits": 3, "group_size": 32},
                         {"mag_bits": 1, "phase_bits": 2, "real_bits": 2}):
                key = f"fa-gptq n{n} s{seed} {sorted(opts.items())}"
                out[key] = get_method("fa-gptq")(build_config("fa-gptq", opts)).compress(W, st, bias=torch.ones(32)).state_dict()
    torch.save(out, out_path)
    print(len(out), "cases")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "run":
        run_cases(sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
