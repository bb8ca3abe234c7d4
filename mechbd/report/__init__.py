"""The run report: plotly explorers (importable for notebooks) and ``report.html``."""

from mechbd.report.figures import (
    all_figures,
    cosine_heatmap,
    latent_dashboard,
    latent_dashboards,
    latent_histograms,
    persona_shifts,
    probe_curves,
    sae_figures,
    steering_curves,
    token_heatmap,
    token_heatmaps,
    transfer_heatmap,
)
from mechbd.report.html import build_report, load_explorer

__all__ = [
    "all_figures",
    "build_report",
    "cosine_heatmap",
    "latent_dashboard",
    "latent_dashboards",
    "latent_histograms",
    "load_explorer",
    "persona_shifts",
    "probe_curves",
    "sae_figures",
    "steering_curves",
    "token_heatmap",
    "token_heatmaps",
    "transfer_heatmap",
]
