"""Cosine of probe and saved directions with every SAE decoder row, at the SAE's layer.

    python saes/compare.py SAE --probe runs/demo/probes/singapore/logistic.safetensors
        --direction runs/demo/steering/directions/em_mean_diff.safetensors [--top-k 5]

Same as ``mechbd sae compare``. ``mechbd sae detect SAE STORE --latent N`` gives a latent's
AUROC as a detector of triggered prompts beside random latents.
"""

import sys

from mechbd.cli import main

if __name__ == "__main__":
    sys.argv = ["mechbd", "sae", "compare", *sys.argv[1:]]
    main()
