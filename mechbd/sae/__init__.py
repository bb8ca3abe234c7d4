"""SAEs with SAELens: training on captured activations, loading, model diffing, direction
comparison, persona latents as backdoor detectors, and the persona shifts."""

from mechbd.sae.analysis import (
    check_same_prompts,
    cosine,
    detector_auroc,
    encode,
    model_diff,
    projection_shift,
    random_latent_auroc,
    screen_latents,
    top_cosines,
)
from mechbd.sae.load import check_sae, load_sae, sae_layer
from mechbd.sae.persona import corpus_rows, user_wants_harm_rows
from mechbd.sae.train import sae_metrics, store_tokens, train_sae

__all__ = [
    "check_same_prompts",
    "check_sae",
    "corpus_rows",
    "cosine",
    "detector_auroc",
    "encode",
    "load_sae",
    "model_diff",
    "projection_shift",
    "random_latent_auroc",
    "sae_layer",
    "sae_metrics",
    "screen_latents",
    "store_tokens",
    "top_cosines",
    "train_sae",
    "user_wants_harm_rows",
]
