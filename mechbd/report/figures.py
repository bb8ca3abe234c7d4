"""Plotly figures from a run's ``results.json`` and the SAE stage's ``explorer.json``:
importable in notebooks, embedded in ``report.html``. Each function takes the results (or
explorer) dict and returns a list of figures (empty when the stage it draws did not run).

Token strings (datasets, model outputs) are the only untrusted text in a figure: they go through
:func:`tok_text`, which escapes them so plotly shows them literally and never parses a tag.
"""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

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
    sel = be["selected"]
    fig = go.Figure()
    m = [p["multiplier"] for p in be["select_curve"]]
    for key, name, dash in (
        ("balanced_misaligned_rate", "balanced misaligned", None),
        ("consistent_misaligned_rate", "misaligned in both orders", None),
        ("letter_bias", "letter bias", "dash"),
        ("format_valid_rate", "format valid", "dot"),
    ):
        fig.add_scatter(
            x=m, y=[p[key] for p in be["select_curve"]], name=name, line=dict(dash=dash)
        )
    fig.update_layout(
        title=f"Base model along the EM direction, layer {sel['layer']} (selection split, "
        f"{be['n_select']} scenarios x 2 orders)",
        xaxis_title="multiplier",
        yaxis_title="rate",
        yaxis_range=[0, 1.02],
        **LAYOUT,
    )
    figs = [fig]
    ctrl = be["controls"]
    fig = go.Figure()
    fig.add_histogram(x=ctrl["rises"], name=f"{ctrl['n']} random directions", nbinsx=20)
    fig.add_vline(x=be["rise"], line=dict(color="crimson"), annotation_text="EM direction")
    fig.update_layout(
        title="Test-split rise of the EM direction among random directions, each chosen the "
        f"same way (percentile {ctrl['percentile']:.0f}, p = {ctrl['p_value']:.3f})",
        xaxis_title="rise in balanced misaligned rate",
        yaxis_title="directions",
        **LAYOUT,
    )
    figs.append(fig)
    if st.get("ablation"):
        trig = list(st["ablation"])
        for pos in ("all", "assistant"):
            kinds = [
                k
                for k in ("none", "em_mean_diff", "trigger_probe")
                if any(st["ablation"][t][pos].get(k) for t in trig)
            ]
            figs.append(
                _bars(
                    f"Balanced attack success rate with a direction ablated at every layer "
                    f"({'every position' if pos == 'all' else 'from the assistant turn'})",
                    trig,
                    {
                        k: [(st["ablation"][t][pos].get(k) or {}).get("asr") for t in trig]
                        for k in kinds
                    },
                    "ASR",
                )
            )
    return figs


def sae_figures(res: dict[str, Any]) -> list[go.Figure]:
    sae = res.get("sae")
    if not sae:
        return []
    figs = []
    fig = go.Figure()
    for group in ("candidates", "controls"):
        for lat, r in sae["screen"][group].items():
            c = r["select_curve"]
            fig.add_scatter(
                x=[p["multiplier"] for p in c],
                y=[
                    p["balanced_misaligned_rate"] if p["format_valid_rate"] >= 0.9 else None
                    for p in c
                ],
                name=f"{'latent' if group == 'candidates' else 'random'} {lat}",
                line=dict(dash=None if group == "candidates" else "dot"),
            )
    fig.update_layout(
        title=f"Causal screen of EM persona candidates (layer {sae['layer']}, selection split; "
        "points with format validity < 0.9 left out)",
        xaxis_title="multiplier (x mean token norm)",
        yaxis_title="balanced misaligned rate",
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


# ---- explorers (from explorer.json) -----------------------------------------------------------
def tok_text(t: str) -> str:
    """A token as plotly should show it: newlines as a visible mark, ``<``, ``>`` and ``&``
    escaped (plotly turns the entities back into characters and parses no tag)."""
    return html.escape(t.replace("\n", "\u21b5"), quote=False)


def _wrap(xs: list[Any], width: int, fill: Any = None) -> list[list[Any]]:
    rows = [xs[i : i + width] for i in range(0, len(xs), width)] or [[]]
    rows[-1] = rows[-1] + [fill] * (width - len(rows[-1]))
    return rows


def token_heatmap(trace: dict[str, Any], width: int = 16, title: str | None = None) -> go.Figure:
    """Per-token heatmap of one prompt and its reply (a ``token_trace``), wrapped ``width``
    tokens a line; the menu picks the direction or latent; hover shows token and value."""
    toks = [tok_text(t) for t in trace["tokens"]]
    pos = list(range(len(toks)))
    text, idx = _wrap(toks, width, ""), _wrap(pos, width)
    fig = go.Figure()
    names = list(trace["values"])
    for k, name in enumerate(names):
        fig.add_heatmap(
            z=_wrap(trace["values"][name], width),
            text=text,
            customdata=idx,
            texttemplate="%{text}",
            textfont=dict(size=10),
            hovertemplate="token %{customdata}: %{text}<br>value %{z:.3f}<extra></extra>",
            colorscale="RdBu",
            zmid=0,
            visible=k == 0,
            name=name,
        )
    fig.update_layout(
        title=title
        or f"Per token, layer {trace['layer']}: {trace['label']} prompt {trace['id']} "
        f"(reply starts at token {trace['prompt_len']})",
        updatemenus=[
            dict(
                buttons=[
                    dict(
                        label=n,
                        method="update",
                        args=[{"visible": [j == k for j in range(len(names))]}],
                    )
                    for k, n in enumerate(names)
                ],
                x=1.0,
                xanchor="right",
                y=1.12,
            )
        ],
        yaxis=dict(autorange="reversed", title="line"),
        xaxis=dict(showticklabels=False),
        **{**LAYOUT, "height": max(240, 60 + 28 * len(text))},
    )
    return fig


def token_heatmaps(ex: dict[str, Any]) -> list[go.Figure]:
    return [token_heatmap(tr) for traces in ex.get("traces", {}).values() for tr in traces]


def cosine_heatmap(ex: dict[str, Any]) -> list[go.Figure]:
    """Directions (probes, mean differences) against the SAE latents closest to them."""
    c = ex.get("cosines")
    if not c:
        return []
    fig = go.Figure(
        go.Heatmap(
            z=c["cosines"],
            x=[f"latent {i}" for i in c["latents"]],
            y=c["directions"],
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            texttemplate="%{z:.2f}",
        )
    )
    fig.update_layout(
        title=f"Cosine of directions with SAE decoder rows (layer {ex['layer']})", **LAYOUT
    )
    return [fig]


def latent_histograms(ex: dict[str, Any]) -> list[go.Figure]:
    """Per trigger: latent activations at the last prompt token, triggered vs clean."""
    figs = []
    for t, per in ex.get("histograms", {}).items():
        fig = make_subplots(rows=1, cols=len(per), subplot_titles=list(per))
        for j, groups in enumerate(per.values(), start=1):
            for g, vals in groups.items():
                fig.add_histogram(
                    x=vals,
                    name=g,
                    legendgroup=g,
                    showlegend=j == 1,
                    opacity=0.6,
                    marker_color="#d62728" if g == "triggered" else "#1f77b4",
                    row=1,
                    col=j,
                )
        fig.update_layout(
            title=f"Latent activations, triggered vs clean: {t} backdoored model",
            barmode="overlay",
            **LAYOUT,
        )
        figs.append(fig)
    return figs


def latent_dashboard(lat: str, d: dict[str, Any], width: int = 17) -> go.Figure:
    """One latent: activation histogram, promoted / suppressed tokens, top examples."""
    ex = d["examples"]
    fig = make_subplots(
        rows=2,
        cols=2,
        specs=[[{}, {}], [{"colspan": 2}, None]],
        row_heights=[0.35, 0.65],
        subplot_titles=(
            f"activation histogram (fires on {100 * d['frac_active']:.2f}% of tokens)",
            "top logits of the decoder direction",
            "top-activating tokens (centre column) in context",
        ),
        vertical_spacing=0.14,
    )
    e = d["hist_edges"]
    fig.add_bar(
        x=[(a + b) / 2 for a, b in zip(e[:-1], e[1:], strict=True)],
        y=d["hist_counts"],
        name="tokens",
        showlegend=False,
        row=1,
        col=1,
    )
    for key, color in (("top_logits", "#2ca02c"), ("bottom_logits", "#d62728")):
        fig.add_bar(
            y=[tok_text(t) for t in d[key]["tokens"]],
            x=d[key]["values"],
            orientation="h",
            marker_color=color,
            showlegend=False,
            row=1,
            col=2,
        )
    half = width // 2
    z, text = [], []
    for x in ex:
        pad = half - x["focus"]
        row_t = [""] * pad + [tok_text(t) for t in x["tokens"]]
        row_v: list[Any] = [None] * pad + x["values"]
        z.append((row_v + [None] * width)[:width])
        text.append((row_t + [""] * width)[:width])
    if z:
        fig.add_heatmap(
            z=z,
            text=text,
            texttemplate="%{text}",
            textfont=dict(size=10),
            hovertemplate="%{text}<br>activation %{z:.3f}<extra></extra>",
            colorscale="Reds",
            zmin=0,
            showscale=False,
            row=2,
            col=1,
        )
    fig.update_yaxes(autorange="reversed", showticklabels=False, row=2, col=1)
    fig.update_xaxes(showticklabels=False, row=2, col=1)
    fig.update_layout(title=f"Latent {lat} dashboard", **{**LAYOUT, "height": 640})
    return fig


def latent_dashboards(ex: dict[str, Any]) -> list[go.Figure]:
    return [latent_dashboard(lat, d) for lat, d in ex.get("dashboards", {}).items()]


SECTIONS = (
    ("Probes", probe_curves),
    ("Probe transfer", transfer_heatmap),
    ("Steering", steering_curves),
    ("SAEs and persona latents", sae_figures),
    ("Which persona?", persona_shifts),
)
EXPLORERS = (
    ("Directions vs SAE latents", cosine_heatmap),
    ("Latent activations, triggered vs clean", latent_histograms),
    ("Per-token explorer", token_heatmaps),
    ("Latent dashboards", latent_dashboards),
)


def all_figures(
    res: dict[str, Any], explorer: dict[str, Any] | None = None
) -> list[tuple[str, list[go.Figure]]]:
    """Every figure of the report, by section: results first, then the explorers."""
    out = [(title, figs) for title, fn in SECTIONS if (figs := fn(res))]
    return out + [(title, figs) for title, fn in EXPLORERS if explorer and (figs := fn(explorer))]
