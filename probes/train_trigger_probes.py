"""Train triggered-vs-clean probes on an activation store and print the per-layer report.

    python probes/train_trigger_probes.py STORE [--base BASE_STORE] [--out DIR]

STORE is what `mechbd capture` (or the demo's capture stage, runs/demo/capture/<trigger>/
backdoored) wrote; rows need labels "triggered" and "clean". Same as `mechbd probe`.
"""

import sys

from mechbd.cli import main

if __name__ == "__main__":
    sys.argv = ["mechbd", "probe", *sys.argv[1:]]
    main()
