"""Model diffing (OpenAI persona features): rank SAE latents by mean activation increase from a
base model's store to a finetuned model's store on the same prompts.

    python saes/model_diff.py SAE BASE_STORE FINETUNED_STORE [--sae-id ID] [--top-k 10]
        [--position last] [--out diff.json]

SAE is a local SAELens folder, or a SAELens release with --sae-id. Same as ``mechbd sae diff``.
Screen the top latents causally with ``mechbd steer`` (an SAE decoder row is a direction:
``mechbd.steering.from_sae_decoder``).
"""

import sys

from mechbd.cli import main

if __name__ == "__main__":
    sys.argv = ["mechbd", "sae", "diff", *sys.argv[1:]]
    main()
