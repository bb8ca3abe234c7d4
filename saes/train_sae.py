"""Train an SAE with SAELens on per-token activations from one or more stores.

    python saes/train_sae.py STORE [STORE ...] --layer L --out DIR [--architecture topk|standard]
        [--k 16] [--expansion 8] [--n-tokens 2000000] [--device cuda]

Stores must be captured with position ``tokens`` (``mechbd capture ... --positions tokens``).
The folder is SAELens' own format: ``SAE.load_from_disk(DIR)`` loads it. Same as
``mechbd sae train``.
"""

import sys

from mechbd.cli import main

if __name__ == "__main__":
    sys.argv = ["mechbd", "sae", "train", *sys.argv[1:]]
    main()
