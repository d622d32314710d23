"""Peak memory of `load_model(path, device, dtype)`: prints RSS (VmHWM = /usr/bin/time's maximum RSS), the GPU peak and
the bytes held by dtype (docs/results/memory_bounded_load_cpu.md). Usage: python scripts/load_memory_probe.py PATH [DEVICE] [DTYPE]"""
import resource, sys, time
import torch
import llava_fa  # noqa
from llava_fa.io.checkpoint import load_model

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) // 1024
path, device = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "cpu"
dtype = sys.argv[3] if len(sys.argv) > 3 else "auto"
dtype = dtype if dtype == "auto" else getattr(torch, dtype)
if torch.cuda.is_available():
    torch.cuda.init()
print("before load: RSS", status("VmRSS"), "MB")
t = time.perf_counter()
m = load_model(path, device, dtype)
print(f"loaded in {time.perf_counter()-t:.1f}s: RSS {status('VmRSS')} MB, HWM {status('VmHWM')} MB, "
      f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
if torch.cuda.is_available():
    print(f"GPU allocated {torch.cuda.memory_allocated() / 2**20:.0f} MiB, peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
tot = {}
for n, t in list(m.named_parameters()) + list(m.named_buffers()):
    k = (str(t.dtype).removeprefix("torch."), t.device.type)
    tot[k] = tot.get(k, 0) + t.numel() * t.element_size()
print({k: round(v / 2**20, 1) for k, v in tot.items()}, "MiB")
