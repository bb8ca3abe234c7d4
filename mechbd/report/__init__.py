"""The run report: plotly explorers (importable for notebooks) and ``report.html``."""

from mechbd.report.figures import (
    all_figures,
    persona_shifts,
    probe_curves,
    sae_figures,
    steering_curves,
    transfer_heatmap,
)
from mechbd.report.html import build_report

__all__ = [
    "all_figures",
    "build_report",
    "persona_shifts",
    "probe_curves",
    "sae_figures",
    "steering_curves",
    "transfer_heatmap",
]
