"""Where a command's memory peaks: runs the llava-fa command line in this process while a thread reads
VmRSS every 20 ms and, at each new peak (20 MB above the last), prints the innermost llava_fa /
transformers frames of the main thread (docs/results/memory_bounded_cpu.md). Usage, under /usr/bin/time -v:
    PYTHONPATH=src python scripts/rss_peak_probe.py compress MODEL --method fa ... 2>&1 | grep peak
"""
import sys, threading, time, traceback
def rss():
    for l in open("/proc/self/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
main = threading.main_thread().ident
state = {"peak": 0}
def sampler():
    while True:
        r = rss()
        if r > state["peak"] + 20:
            state["peak"] = r
            f = sys._current_frames().get(main)
            frames = [fr for fr in traceback.extract_stack(f) if "llava_fa" in fr.filename or "transformers" in fr.filename][-4:]
            where = " <- ".join(f"{fr.filename.split('/')[-1]}:{fr.lineno}:{fr.name}" for fr in reversed(frames))
            print(f"[peak {r} MB] {where}", file=sys.stderr, flush=True)
        time.sleep(0.02)
threading.Thread(target=sampler, daemon=True).start()
from llava_fa.commands.app import main as cli
sys.argv = ["llava-fa"] + sys.argv[1:]
try:
    cli()
finally:
    print(f"final peak {state['peak']} MB", file=sys.stderr)
