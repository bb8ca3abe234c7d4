"""SAEs with SAELens: training on captured activations, loading, model diffing, direction
comparison, persona latents as backdoor detectors, and the persona shifts, each with its null."""

from mechbd.sae.analysis import (
    check_same_prompts,
    cosine,
    cosine_null,
    covariance_factor,
    detector_auroc,
    direction_detector,
    effective_dims,
    encode,
    latent_detector,
    matched_directions,
    model_diff,
    persona_z,
    projection_shift,
    random_latent_auroc,
    screen_latents,
    shift_vs_base,
    top_cosines,
)
from mechbd.sae.load import check_sae, load_sae, sae_layer
from mechbd.sae.persona import corpus_rows, user_wants_harm_rows
from mechbd.sae.train import (
    held_out_conversations,
    sae_metrics,
    store_metrics,
    store_tokens,
    train_sae,
)

__all__ = [
    "check_same_prompts",
    "check_sae",
    "corpus_rows",
    "cosine",
    "cosine_null",
    "covariance_factor",
    "detector_auroc",
    "direction_detector",
    "effective_dims",
    "encode",
    "held_out_conversations",
    "latent_detector",
    "load_sae",
    "matched_directions",
    "model_diff",
    "persona_z",
    "projection_shift",
    "random_latent_auroc",
    "sae_layer",
    "sae_metrics",
    "screen_latents",
    "shift_vs_base",
    "store_metrics",
    "store_tokens",
    "top_cosines",
    "train_sae",
    "user_wants_harm_rows",
]
