"""Activation steering: operators installed by a context manager, directions with provenance,
one-pass greedy reads of counterbalanced multiple choice, and settings chosen on a selection
split and reported on a test split against random controls."""

from mechbd.steering.directions import Direction, from_probe, from_sae_decoder, mean_difference
from mechbd.steering.ops import OPS, Intervention, steer
from mechbd.steering.read import MCQReader, Reading
from mechbd.steering.select import (
    Counterbalanced,
    Outcome,
    additive,
    rise,
    select_and_test,
    with_controls,
)
from mechbd.steering.sweep import best_layer, measure, sweep

__all__ = [
    "OPS",
    "Counterbalanced",
    "Direction",
    "Intervention",
    "MCQReader",
    "Outcome",
    "Reading",
    "additive",
    "best_layer",
    "from_probe",
    "from_sae_decoder",
    "mean_difference",
    "measure",
    "rise",
    "select_and_test",
    "steer",
    "sweep",
    "with_controls",
]
