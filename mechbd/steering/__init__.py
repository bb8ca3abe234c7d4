"""Activation steering: operators installed by a context manager, directions with provenance,
and sweeps measured with a capability guard."""

from mechbd.steering.directions import Direction, from_probe, from_sae_decoder, mean_difference
from mechbd.steering.ops import OPS, Intervention, steer
from mechbd.steering.sweep import best_layer, measure, sweep

__all__ = [
    "OPS",
    "Direction",
    "Intervention",
    "best_layer",
    "from_probe",
    "from_sae_decoder",
    "mean_difference",
    "measure",
    "steer",
    "sweep",
]
