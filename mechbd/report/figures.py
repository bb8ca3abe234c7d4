"""Plotly figures from a run's ``results.json``: importable in notebooks, embedded in
``report.html``. Each function takes the results dict and returns a list of figures (empty when
the stage it draws did not run). Figure text comes from mechbd's own keys and numbers; dataset
and model text never goes into a figure (the report escapes it into HTML tables instead)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

LAYOUT: dict[str, Any] = dict(
    template="plotly_white", height=360, margin=dict(l=60, r=20, t=60, b=50)
)


def _bars(
    title: str, x: list[str], series: dict[str, list[Any]], yaxis_title: str = ""
) -> go.Figure:
    fig = go.Figure([go.Bar(name=k, x=x, y=v) for k, v in series.items()])
    fig.update_layout(
        title=title, yaxis_title=yaxis_title, yaxis_range=[0, 1.02], barmode="group", **LAYOUT
    )
    return fig


def _triggers(section: dict[str, Any]) -> list[str]:
    return [t for t in section if t != "transfer"]


def probe_curves(res: dict[str, Any]) -> list[go.Figure]:
    """Per-layer probe AUROC per trigger, with the random-direction baseline and base-model null."""
    figs = []
    for t in _triggers(res.get("probes", {})):
        pl = res["probes"][t]["per_layer"]
        fig = go.Figure()
        for key, dash in (
            ("logistic", None),
            ("diffmean", None),
            ("random_baseline", "dot"),
            ("base_model", "dash"),
        ):
            if key in pl:
                fig.add_scatter(x=pl["layers"], y=pl[key], name=key, line=dict(dash=dash))
        fig.update_layout(
            title=f"Probe AUROC by layer: trigger {t}",
            xaxis_title="layer",
            yaxis_title="AUROC (test split)",
            yaxis_range=[0, 1.02],
            **LAYOUT,
        )
        figs.append(fig)
    return figs


def transfer_heatmap(res: dict[str, Any]) -> list[go.Figure]:
    tr = res.get("probes", {}).get("transfer")
    if not tr:
        return []
    names = list(tr)
    z = [[tr[a].get(b) for b in names] for a in names]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, zmin=0, zmax=1, colorscale="Viridis"))
    fig.update_layout(title="Probe transfer (train row, test column): AUROC", **LAYOUT)
    return [fig]


def steering_curves(res: dict[str, Any]) -> list[go.Figure]:
    st = res.get("steering")
    if not st:
        return []
    be = st["base_em"]
    fig = go.Figure()
    for key, name in (("curve", "EM direction"), ("random_curve", "random (equal norm)")):
        c = be[key]
        m = [p["multiplier"] for p in c]
        fig.add_scatter(x=m, y=[p["misaligned_rate"] for p in c], name=f"{name}: misaligned")
        fig.add_scatter(
            x=m,
            y=[p["format_valid_rate"] for p in c],
            name=f"{name}: format valid",
            line=dict(dash="dot"),
        )
    fig.update_layout(
        title=f"Base model steered along the EM direction, layer {be['best_layer']}",
        xaxis_title="multiplier",
        yaxis_title="rate",
        yaxis_range=[0, 1.02],
        **LAYOUT,
    )
    figs = [fig]
    if st.get("ablation"):
        trig = list(st["ablation"])
        kinds = list(st["ablation"][trig[0]])
        fig = _bars(
            "Attack success rate with a direction ablated at every layer",
            trig,
            {k: [st["ablation"][t][k]["asr"] for t in trig] for k in kinds},
            "ASR",
        )
        figs.append(fig)
    return figs


def sae_figures(res: dict[str, Any]) -> list[go.Figure]:
    sae = res.get("sae")
    if not sae:
        return []
    figs = []
    fig = go.Figure()
    for group in ("candidates", "controls"):
        for lat, r in sae["screen"][group].items():
            c = r["curve"]
            fig.add_scatter(
                x=[p["multiplier"] for p in c],
                y=[p["misaligned_rate"] if p["format_valid_rate"] >= 0.9 else None for p in c],
                name=f"{'latent' if group == 'candidates' else 'random'} {lat}",
                line=dict(dash=None if group == "candidates" else "dot"),
            )
    fig.update_layout(
        title=f"Causal screen of EM persona candidates (layer {sae['layer']}; "
        "points with format validity < 0.9 left out)",
        xaxis_title="multiplier (x mean token norm)",
        yaxis_title="misaligned rate",
        yaxis_range=[0, 1.02],
        **LAYOUT,
    )
    figs.append(fig)
    trig = list(sae["persona_detector_auroc"])
    if trig:
        rows = {
            "persona latent": [sae["persona_detector_auroc"][t] for t in trig],
            "EM direction": [sae["em_direction_detector_auroc"][t] for t in trig],
            "trigger probe": [sae["trigger_probe_auroc"][t] for t in trig],
            "best random latent": [sae["random_latent_auroc"][t]["max"] for t in trig],
        }
        fig = _bars(
            "Does the persona latent catch the backdoor? AUROC, triggered vs clean", trig, rows
        )
        figs.append(fig)
    return figs


def persona_shifts(res: dict[str, Any]) -> list[go.Figure]:
    figs = []
    for t, p in res.get("persona", {}).items():
        fig = go.Figure()
        for key, name in (
            ("toxic_persona", "toxic persona (EM)"),
            ("user_wants_harm", "user wants harm"),
        ):
            fig.add_scatter(x=p["layers"], y=p["per_layer"][key], name=name)
        fig.update_layout(
            title=f"Triggered minus clean, in clean standard deviations: trigger {t}",
            xaxis_title="layer",
            yaxis_title="shift (clean std)",
            **LAYOUT,
        )
        figs.append(fig)
    return figs


SECTIONS = (
    ("Probes", probe_curves),
    ("Probe transfer", transfer_heatmap),
    ("Steering", steering_curves),
    ("SAEs and persona latents", sae_figures),
    ("Which persona?", persona_shifts),
)


def all_figures(res: dict[str, Any]) -> list[tuple[str, list[go.Figure]]]:
    return [(title, figs) for title, fn in SECTIONS if (figs := fn(res))]
