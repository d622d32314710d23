"""Where a command's memory peaks: runs the llava-fa command line in this process while a thread reads
VmRSS every 20 ms and, at each new peak (20 MB above the last), prints the innermost llava_fa /
transformers frames of the main thread (docs/results/memory_bounded_cpu.md). Usage, under /usr/bin/time -v:
    PYTHONPATH=src python scripts/rss_peak_probe.py compress MODEL --method fa ... 2>&1 | grep peak
"""

import sys
import threading
import time
import traceback

STEP_MB, PERIOD_S = 20, 0.02


def rss_mb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return 0


def where(thread_id: int) -> str:
    """The main thread's innermost project frames, innermost first."""
    stack = traceback.extract_stack(sys._current_frames().get(thread_id))
    frames = [f for f in stack if "llava_fa" in f.filename or "transformers" in f.filename][-4:]
    return " <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno}:{f.name}" for f in reversed(frames))


def sample(thread_id: int, peak: list[int]) -> None:
    while True:
        now = rss_mb()
        if now > peak[0] + STEP_MB:
            peak[0] = now
            print(f"[peak {now} MB] {where(thread_id)}", file=sys.stderr, flush=True)
        time.sleep(PERIOD_S)


def main() -> None:
    from llava_fa.commands.app import main as cli

    peak = [0]
    threading.Thread(target=sample, args=(threading.main_thread().ident, peak), daemon=True).start()
    sys.argv = ["llava-fa"] + sys.argv[1:]
    try:
        cli()
    finally:
        print(f"final peak {peak[0]} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
