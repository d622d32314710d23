"""Write the two small offline lm-eval tasks of tests/fixtures/harness_tasks into a folder, with
absolute data paths (lm-eval hands `data_files` to `datasets` as written, so relative paths would
resolve against the working directory):

    python scripts/harness_local_tasks.py /tmp/harness_tasks
    llava-fa eval MODEL --tasks llava_fa_tiny_mc,llava_fa_tiny_wikitext --tasks-include /tmp/harness_tasks
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    from test_eval_tasks import write_tasks  # the YAMLs the tests run: one definition

    folder = write_tasks(Path(sys.argv[1] if len(sys.argv) > 1 else "harness_tasks"))
    print(f"wrote {', '.join(sorted(p.name for p in folder.glob('*.yaml')))} into {folder}")


if __name__ == "__main__":
    main()
