"""Linear probes (difference of means, logistic, PCA, LAT) for all layers at once, with the
metrics and baselines that make a probe result believable."""

from mechbd.probes.core import (
    METHODS,
    Probe,
    accuracy,
    auroc,
    auroc_interval,
    evaluate,
    random_direction_auroc,
    random_direction_null,
    recall_at_fpr,
)

__all__ = [
    "METHODS",
    "Probe",
    "accuracy",
    "auroc",
    "auroc_interval",
    "evaluate",
    "random_direction_auroc",
    "random_direction_null",
    "recall_at_fpr",
]
