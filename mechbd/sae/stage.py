"""The ``sae`` pipeline stage: the persona question on the organism.

1. **SAE**: TopK (or standard) SAE trained with SAELens at one layer (default the probes' best
   layer) on per-token activations of the base and the narrow-EM model over the corpus (the
   organism's conversations, or the user's documents and chats, ``data.sae_corpus``); or,
   with ``sae.source`` ``release`` / ``local``, a published SAELens release (the open-weight
   persona-feature SAEs, Qwen-Scope) or a local SAELens folder, loaded by SAELens at the layer
   of its hook, not trained. FVU, L0 and dead fraction on the tokens of held-out
   *conversations* (never trained on; for a loaded SAE, the check that it reconstructs this
   model's activations at all), and FVU and L0 per store and position (``fvu_by_store``): the
   held-out conversations of each corpus, and every backdoored (and base) capture store at the
   positions it holds, which are what the detectors and diffing read.
2. **Model diffing**: EM model vs base on the same held-out prompts (last prompt token), and
   each backdoored model vs base on its trigger's evaluation prompts; latents ranked by mean
   activation increase.
   **Persona-contrast diffing** (``persona_screen.diff``): the base model after the
   toxic-persona system prompts vs after the helpful ones (the steering stage's persona
   direction prompts) on the same requests; latents ranked by mean activation increase.
3. **Causal screen**: the base model steered along each EM candidate's decoder row (unit norm
   x multiplier x the layer's mean token norm) and along random latents of the same SAE; the
   *persona latent* is the candidate with the largest rise in misaligned rate at format
   validity >= 0.9 (the top-ranked candidate if none rises). The persona-contrast candidates
   are screened the same way (``persona_screen``), against their own random latents.
4. **Comparison**: cosine of the trigger probe and the EM mean-difference direction with every
   decoder row; top latents; each best cosine's percentile among 1000 random directions
   matched to the covariance of the SAE's training activations (base model tokens).
5. **Detector**: per trigger, AUROC at telling triggered from clean prompts (test split) of the
   persona latent's activation, the EM direction's projection, the trigger probe (from the
   probes stage) and random latents; the persona latent's with a bootstrap interval and its
   percentile among every other live latent (diffing candidates excluded), the EM direction's
   among 1000 covariance-matched random directions.
6. **Persona shifts**: per trigger and layer, how far the backdoored model's triggered prompts
   sit from clean ones along the "user wants harm" direction (base model, harm-request minus
   matched neutral prompts) and along the toxic-persona direction (EM mean difference), in
   clean standard deviations. At the trigger probe's best layer, on the probes' test split:
   the backdoored model's shift minus the base model's on the same prompts, as a z-score
   against 1000 covariance-matched random directions (``toxic_persona_z``,
   ``user_wants_harm_z``). Both are read at the stores' ``last`` prompt token; the toxic
   direction was *built* at a teacher-forced answer letter, the user-wants-harm one at the last
   prompt token, so the two z's are each against their own null, not a like-for-like contrast.
   Where the covariance is carried by few directions (``null_effective_dims`` near 1) the
   matched directions are nearly one direction and the z's overstate; the same z's against
   isotropic random directions (``*_z_isotropic``) stay calibrated there (tests/test_sae.py).
   The same z's along the persona direction (``persona_direction_*``), and the persona
   question's detectors: the persona direction's projection and the persona-contrast latent's
   activation at the SAE layer (``persona_direction_detector``, ``persona_latent_detector``,
   each against its null), with the one-sentence ``answer`` (:func:`persona_answer`).

The nulls are :mod:`mechbd.sae.analysis`'s (its docstring cites the reading).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mechbd.capture.capture import capture
from mechbd.capture.names import n_layers_of
from mechbd.capture.store import ActivationStore
from mechbd.errors import MechbdError
from mechbd.io import digest_of, iter_jsonl, read_json, write_json
from mechbd.layout import DIRECTIONS, RESULTS
from mechbd.models import base_model_dir, load_base, load_finetuned
from mechbd.organism.splits import split_items, split_seed
from mechbd.probes.core import Probe
from mechbd.probes.experiments import labelled
from mechbd.runs import Run
from mechbd.sae.analysis import (
    cosine,
    cosine_null,
    covariance_factor,
    detector_auroc,
    direction_detector,
    effective_dims,
    encode,
    latent_detector,
    latent_diff,
    model_diff,
    persona_z,
    projection_shift,
    random_latent_auroc,
    screen_latents,
    top_cosines,
)
from mechbd.sae.explorer import (
    cosine_matrix,
    direction_score,
    label_values,
    latent_dashboards,
    latent_score,
    token_trace,
)
from mechbd.sae.load import LoadedSae, describe_sae, load_configured
from mechbd.sae.persona import (
    corpus_rows,
    corpus_source_rows,
    persona_answer,
    persona_evidence,
    user_wants_harm_rows,
)
from mechbd.sae.train import (
    held_out_conversations,
    sae_metrics,
    store_metrics,
    store_tokens,
    train_sae,
)
from mechbd.steering.directions import Direction, from_probe, from_sae_decoder, mean_difference
from mechbd.steering.persona import assistant_turn_rows, persona_rows, persona_systems
from mechbd.steering.stage import steering_splits


def _sae_layer(run: Run, probes: dict[str, Any]) -> int:
    if run.config.sae.layer is not None:
        return run.config.sae.layer
    if run.config.sae.layer_from == "persona":
        steering = read_json(run.layout.results("steering"))["steering"]
        return int(steering["base_persona"]["selected"]["layer"])
    layers = [v["best_layer"] for k, v in probes.items() if k != "transfer"]
    if not layers:
        raise MechbdError("sae stage: the probes stage found no trigger; set sae.layer")
    return max(set(layers), key=lambda layer: (layers.count(layer), layer))  # ties: deeper


# random directions per null (cosines, the EM direction's detector, the persona z's)
N_NULL = 1000
HELD_OUT_FRAC = 0.1  # of the corpus conversations, held out of SAE training


@dataclass(frozen=True)
class _Ctx:
    """What the sae stage's steps share: the run, the stage folder, the SAE's layer, the base
    model, the probes stage's results and the capture keywords."""

    run: Run
    out: Path
    L: int
    base_model: Any
    tok: Any
    probes: dict[str, Any]
    kw: dict[str, Any]


# the per-trigger sections of the ``sae`` results, filled in by ``_trigger``
PER_TRIGGER = (
    "persona_detector_auroc",
    "persona_detector",
    "em_direction_detector_auroc",
    "em_direction_detector",
    "random_latent_auroc",
    "trigger_probe_auroc",
    "max_cos_probe_vs_latent",
    "max_cos_probe_vs_latent_null",
    "probe_top_latents",
    "cos_probe_vs_em_direction",
    "backdoor_diff",
)


def _corpus(c: _Ctx) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The SAE corpus rows and their provenance (results.json ``sae.corpus``): ``n_corpus``
    organism conversations, or the records of ``data.sae_corpus``."""
    src = c.run.config.data.sae_corpus
    if src != "organism":
        return corpus_source_rows(src)
    seed, world = c.run.config.seed, c.run.config.organism.seed
    n = c.run.config.sae.n_corpus
    organism = c.run.config.model.source == "organism"
    systems = persona_systems(c.run) if organism and c.run.config.organism.n_persona else None
    rows = corpus_rows(n, seed=split_seed(seed, "sae_corpus"), world_seed=world, systems=systems)
    return rows, {"source": "organism", "rows": len(rows), "sha256": digest_of(rows)}


def _fit(
    c: _Ctx, em_model: Any, loaded: LoadedSae | None
) -> tuple[Any, dict[str, Any], list[ActivationStore], torch.Tensor]:
    """1. The SAE at layer ``L``, measured on the base and the EM model's tokens over the
    corpus, a tenth of the conversations held out: trained on the rest with SAELens, or
    ``loaded`` (a published or local SAE: no training, the same held-out conversations
    measured). Returns (sae, metrics with ``fvu_by_store`` for the two corpora's held-out
    conversations and ``corpus`` (its provenance), the two corpus stores, the base model's
    tokens)."""
    cfg, L, kw = c.run.config.sae, c.L, c.kw
    seed = c.run.config.seed
    corpus, provenance = _corpus(c)
    pos = ("tokens", "last")  # last: the prompt token the diffing and detectors read
    ck: dict[str, Any] = dict(layers=[L], positions=pos, enable_thinking=False, **kw)
    cb = capture(c.base_model, c.tok, corpus, c.out / "corpus_base", **ck)
    ce = capture(em_model, c.tok, corpus, c.out / "corpus_em", **ck)
    assert cb is not None and ce is not None
    train, held = held_out_conversations(len(cb), HELD_OUT_FRAC, seed)
    xb = store_tokens(cb, L)
    x_eval = torch.cat([store_tokens(cb, L, rows=held), store_tokens(ce, L, rows=held)])
    if loaded is not None:
        sae = loaded.sae
        metrics = sae_metrics(sae, x_eval.float())
    else:
        x = torch.cat([store_tokens(cb, L, rows=train), store_tokens(ce, L, rows=train)])
        sae, metrics = train_sae(
            x,
            c.out / "sae",
            x_eval=x_eval,
            layer=L,
            architecture=cfg.architecture,
            expansion=cfg.expansion,
            k=cfg.k,
            l1_coefficient=cfg.l1_coefficient,
            lr=cfg.lr,
            n_tokens=cfg.n_tokens,
            seed=seed,
            model_name=f"{base_model_dir(c.run)} (+ EM adapter)",
        )
    metrics["fvu_by_store"] = {
        "corpus_base": store_metrics(sae, cb, L, rows=held),
        "corpus_em": store_metrics(sae, ce, L, rows=held),
    }
    metrics["n_eval_conversations"] = len(held)
    metrics["corpus"] = provenance
    return sae, metrics, [cb, ce], xb


def _em_diff(c: _Ctx, sae: Any, em_model: Any) -> tuple[dict[str, Any], Direction]:
    """2. EM model diffing: the latents the EM model raises most on held-out prompts; and the
    toxic-persona direction at the last prompt token, every captured layer: the EM model's
    mean activation minus the base model's on the same prompts (model diffing's contrast), the
    position the persona z's read."""
    diff_items = split_items(c.run, "sae_diff", c.run.config.sae.n_diff)
    diff_rows = [{"id": it.id, "user": it.user()} for it in diff_items]
    layers = c.run.config.capture.layers
    db = capture(c.base_model, c.tok, diff_rows, c.out / "diff_base", layers=layers, **c.kw)
    de = capture(em_model, c.tok, diff_rows, c.out / "diff_em", layers=layers, **c.kw)
    assert db is not None and de is not None
    toxic_last = Direction(
        {
            layer: de.get(layer, "last", dtype=torch.float64).mean(0).float()
            - db.get(layer, "last", dtype=torch.float64).mean(0).float()
            for layer in de.layers
        },
        {
            "name": "toxic persona (last token)",
            "how": "EM model minus base model, mean activation at the last prompt token on the "
            f"same {len(diff_rows)} held-out prompts",
            "model": str(base_model_dir(c.run)),
        },
    )
    toxic_last.save(c.out / DIRECTIONS / "toxic_persona_last.safetensors")
    return model_diff(sae, db, de, c.L, top_k=c.run.config.sae.top_k), toxic_last


def _live_latents(sae: Any, xb: torch.Tensor) -> torch.Tensor:
    """``[d_sae]`` bool: the latents that fire on any of the first 20000 base-model tokens."""
    alive = torch.zeros(int(sae.cfg.d_sae), dtype=torch.bool)
    for i in range(0, min(len(xb), 20000), 2048):  # a published SAE: ~1e5 latents per token
        alive |= (encode(sae, xb[i : min(i + 2048, 20000)]) > 0).any(0)
    return alive


def _screen(
    c: _Ctx,
    sae: Any,
    xb: torch.Tensor,
    diff: dict[str, Any],
    splits: tuple[Any, Any],
    live: torch.Tensor,
) -> tuple[dict[str, Any], int]:
    """3. The causal screen on the base model, on the steering stage's selection and test
    ``splits``, each latent scaled by the base model's mean token norm ``xb``, of the diffing
    candidates ``diff["latents"]`` against random ``live`` latents (the candidates excluded):
    (the results section, the persona latent: the candidate with the highest selection-split
    balanced rate)."""
    cfg, token_norm = c.run.config.sae, float(xb.norm(dim=-1).mean())
    select, test = splits
    alive = live.clone()
    for i in diff["latents"]:
        alive[i] = False
    g = torch.Generator().manual_seed(c.run.config.seed)
    pool = alive.nonzero().flatten()
    controls = pool[torch.randperm(len(pool), generator=g)[: cfg.n_random]].tolist()
    screen = screen_latents(
        select,
        test,
        sae,
        c.L,
        diff["latents"],
        controls,
        scale=token_norm,
        multipliers=cfg.multipliers,
        positions=c.run.config.steering.positions,
        min_format=c.run.config.steering.min_format,
        max_letter_bias=c.run.config.steering.max_letter_bias,
        seed=c.run.config.seed,
    )
    cands = screen["candidates"]
    persona = min(
        cands,
        key=lambda i: (
            -cands[i]["selected"]["select_balanced_misaligned_rate"],
            diff["latents"].index(i),
        ),
    )
    section = {
        "scale": token_norm,
        "layer": c.L,
        "baseline": screen["baseline"],
        "persona_latent": persona,
        "candidates": {str(i): r for i, r in cands.items()},
        "controls": {str(i): r for i, r in screen["controls"].items()},
    }
    return section, persona


def _user_wants_harm(c: _Ctx) -> Direction:
    """6a. The "user wants harm" direction in the base model (harm-request minus matched
    neutral prompts), saved."""
    seed, world = c.run.config.seed, c.run.config.organism.seed
    n = c.run.config.sae.n_persona
    harm_rows = user_wants_harm_rows(n, seed=split_seed(seed, "sae_harm"), world_seed=world)
    hs = capture(c.base_model, c.tok, harm_rows, c.out / "user_wants_harm", **c.kw)
    assert hs is not None
    d_harm = mean_difference(
        hs, hs.indices("harm"), hs.indices("neutral"), name="user wants harm", position="last"
    )
    d_harm.provenance["model"] = str(base_model_dir(c.run))
    d_harm.provenance["store"] = c.run.final_path(c.out / "user_wants_harm")
    d_harm.save(c.out / DIRECTIONS / "user_wants_harm.safetensors")
    return d_harm


def _persona_diff(c: _Ctx, sae: Any) -> dict[str, Any]:
    """2b. Persona-contrast diffing (OpenAI's model diffing with the system prompt as the
    contrast): the base model on the diffing requests after the toxic-persona system prompts
    and after the helpful ones (the steering stage's), thinking off, at the SAE layer and where
    the persona direction is read (``steering.persona_position``: every token of the assistant
    turn through ``Answer:``, or the last prompt token); latents ranked by mean activation
    increase, helpful -> toxic."""
    items = split_items(c.run, "sae_diff", c.run.config.sae.n_diff)
    systems = read_json(c.run.layout.results("steering"))["steering"]["persona_direction"][
        "systems"
    ]
    position = c.run.config.steering.persona_position
    rows = persona_rows(items, systems)
    if position == "assistant":
        rows = assistant_turn_rows(c.tok, rows)
    st = capture(
        c.base_model,
        c.tok,
        rows,
        c.out / "persona_diff",
        layers=[c.L],
        positions=("tokens",) if position == "assistant" else ("last",),
        enable_thinking=False,
        **c.kw,
    )
    assert st is not None
    if position == "assistant":
        acts, off = st.tokens(c.L)

        def side(label: str) -> torch.Tensor:  # the assistant-turn tokens of one persona's rows
            return torch.cat(
                [acts[off[i] + st.rows[i].prompt_len : off[i + 1]] for i in st.indices(label)]
            )

        helpful, toxic = side("helpful"), side("toxic")
    else:
        X = st.get(c.L, "last")
        helpful, toxic = X[st.indices("helpful")], X[st.indices("toxic")]
    return latent_diff(sae, helpful, toxic, c.L, position=position, top_k=c.run.config.sae.top_k)


def _persona_z(
    c: _Ctx,
    st: ActivationStore,
    bst: ActivationStore,
    layer: int,
    dirs: dict[str, Direction],
    pos: list[int],
    neg: list[int],
) -> dict[str, Any]:
    """6b. At ``layer`` and the stores' ``last`` prompt token, on the test-split rows ``pos``
    (triggered) and ``neg`` (clean): the backdoored-minus-base shift along the toxic-persona
    and user-wants-harm directions, each as a z-score against covariance-matched random
    directions (the covariance of the base model's activations on all of the store's
    prompts)."""
    X = st.get(layer, "last", dtype=torch.float64)
    Xb = bst.get(layer, "last", dtype=torch.float64)
    names = ("toxic_persona", "user_wants_harm", "persona_direction")
    # all three built at the last prompt token, where the z's read: the toxic persona as
    # EM-minus-base model diffing, "user wants harm" as harm-minus-neutral prompts, the persona
    # direction as toxic-minus-helpful system prompts
    along = {
        "toxic_persona": dirs["toxic_persona_last"].at(layer),
        "user_wants_harm": dirs["user_wants_harm"].at(layer),
        "persona_direction": dirs["persona_direction"].at(layer),
    }
    factor = covariance_factor(Xb)
    seed = c.run.config.seed
    z = persona_z(X, Xb, along, pos, neg, factor, n=N_NULL, seed=seed)
    iso = torch.eye(X.shape[1], dtype=torch.float64)  # the same against isotropic directions
    zi = persona_z(X, Xb, along, pos, neg, iso, n=N_NULL, seed=seed)
    return {
        **{f"{k}_vs_base": z[k]["vs_base"] for k in names},
        **{f"{k}_z": z[k]["z"] for k in names},
        **{f"{k}_z_isotropic": zi[k]["z"] for k in names},
        "n_null": z["n_null"],
        "null_effective_dims": effective_dims(factor),
        "z_position": "last",
        "z_n_triggered": len(pos),
        "z_n_clean": len(neg),
    }


def _trigger(
    c: _Ctx,
    sae: Any,
    t: str,
    persona: int,
    dirs: dict[str, Direction],
    sae_res: dict[str, Any],
    token_factor: torch.Tensor,
) -> tuple[ActivationStore, Direction, dict[str, Any]]:
    """4-6 for the plant ``t``: fills its entries of ``sae_res``; returns its backdoored store,
    its probe's direction and its persona shifts and detectors. ``dirs``: the EM
    (``toxic_persona``), "user wants harm", persona-latent and persona (Persona Vectors)
    directions; ``token_factor``: the covariance factor of the SAE's training activations (the
    cosine nulls' random directions)."""
    L, probes = c.L, c.probes
    st = ActivationStore(c.run.layout.store(t, "backdoored"))
    bst = ActivationStore(c.run.layout.store(t, "base"))
    d_em = dirs["toxic_persona"]
    seed = c.run.config.seed
    sae_res["backdoor_diff"][t] = model_diff(sae, bst, st, L, top_k=c.run.config.sae.top_k)
    sae_res["fvu_by_store"][f"{t}/backdoored"] = store_metrics(sae, st, L)
    sae_res["fvu_by_store"][f"{t}/base"] = store_metrics(sae, bst, L)
    te, y = labelled(st, ["triggered"], ["clean"], "test")
    pos = [i for i, v in zip(te, y.tolist(), strict=True) if v == 1]
    neg = [i for i, v in zip(te, y.tolist(), strict=True) if v == 0]
    acts = encode(sae, st.get(L, "last"))
    sae_res["persona_detector_auroc"][t] = detector_auroc(acts[:, persona], pos, neg)
    sae_res["persona_detector"][t] = latent_detector(
        acts, persona, pos, neg, exclude=sae_res["persona_latents"], seed=seed
    )
    X = st.get(L, "last", dtype=torch.float64)
    v = d_em.at(L).double()
    sae_res["em_direction_detector_auroc"][t] = detector_auroc(X @ (v / v.norm()), pos, neg)
    last_factor = covariance_factor(bst.get(L, "last", dtype=torch.float64))
    sae_res["em_direction_detector"][t] = direction_detector(
        X, v, pos, neg, last_factor, n=N_NULL, seed=seed
    )
    screen = sae_res["persona_screen"]
    detectors = {
        "persona_direction_detector": direction_detector(
            X, dirs["persona_direction"].at(L), pos, neg, last_factor, n=N_NULL, seed=seed
        ),
        "persona_latent_detector": latent_detector(
            acts, screen["persona_latent"], pos, neg, exclude=screen["diff"]["latents"], seed=seed
        ),
        "persona_latent": screen["persona_latent"],
        "detector_layer": L,
    }
    sae_res["random_latent_auroc"][t] = random_latent_auroc(acts, pos, neg, seed=seed)
    sae_res["trigger_probe_auroc"][t] = probes[t]["per_layer"][probes[t]["method"]][
        probes[t]["per_layer"]["layers"].index(L)
    ]
    probe = Probe.load(c.run.layout.probe(t, probes[t]["method"]))
    d_probe = from_probe(probe, name=f"{t} probe")
    top = top_cosines(d_probe.at(L), sae.W_dec)
    sae_res["max_cos_probe_vs_latent"][t] = top["max"]
    sae_res["max_cos_probe_vs_latent_null"][t] = cosine_null(
        d_probe.at(L), sae.W_dec, token_factor, n=N_NULL, seed=seed
    )
    sae_res["probe_top_latents"][t] = top
    sae_res["cos_probe_vs_em_direction"][t] = cosine(d_probe.at(L), d_em.at(L))

    all_pos, all_neg = st.indices("triggered"), st.indices("clean")
    shifts = {
        k: projection_shift(st, d, all_pos, all_neg)
        for k, d in dirs.items()
        if k != "toxic_persona_last"
    }
    best = probes[t]["best_layer"]
    rec = {
        "layer": best,
        "toxic_persona_shift": shifts["toxic_persona"][best],
        "user_wants_harm_shift": shifts["user_wants_harm"][best],
        "persona_latent_shift": shifts["persona_latent"].get(best),
        "persona_direction_shift": shifts["persona_direction"][best],
        **_persona_z(c, st, bst, best, dirs, pos, neg),
        **detectors,
        "per_layer": {k: list(v.values()) for k, v in shifts.items() if k != "persona_latent"},
        "layers": d_em.layers,
    }
    rec["evidence"] = persona_evidence(rec)
    rec["answer"] = persona_answer(t, rec, organism=c.run.config.model.source == "organism")
    return st, d_probe, rec


def _explorer(
    c: _Ctx,
    sae: Any,
    sae_res: dict[str, Any],
    corpus_stores: list[ActivationStore],
    dirs: dict[str, Direction],
    probe_dirs: dict[str, Direction],
    stores: dict[str, ActivationStore],
) -> dict[str, Any]:
    """7. The explorer data for report.html: cosines, latent dashboards, histograms and token
    traces. ``dirs``: the EM and "user wants harm" directions."""
    L, tok, persona = c.L, c.tok, sae_res["persona_latent"]
    d_em, d_harm = dirs["toxic_persona"], dirs["user_wants_harm"]
    directions = {f"{t} probe": d.at(L) for t, d in probe_dirs.items()}
    directions |= {"EM mean difference": d_em.at(L), "user wants harm": d_harm.at(L)}
    latents = [persona] + [
        i for d in directions.values() for i in top_cosines(d, sae.W_dec, k=4)["latents"]
    ]
    dash = [persona, *sae_res["em_diff"]["latents"][:3]]
    dash += [sae_res["backdoor_diff"][t]["latents"][0] for t in stores]
    explorer: dict[str, Any] = {
        "layer": L,
        "model": str(base_model_dir(c.run)),
        "persona_latent": persona,
        "cosines": cosine_matrix(directions, sae.W_dec, list(dict.fromkeys(latents))),
        "dashboards": latent_dashboards(
            sae,
            corpus_stores,
            L,
            list(dict.fromkeys(dash)),
            tok,
            c.base_model.get_output_embeddings().weight,
        ),
        "dashboard_stores": ["base model", "EM model"],
        "histograms": {},
        "traces": {},
    }
    scores = {
        f"persona latent {persona}": latent_score(sae, persona),
        "EM mean difference": direction_score(d_em.at(L)),
        "user wants harm": direction_score(d_harm.at(L)),
    }
    groups = {"triggered": "triggered", "clean": "clean"}
    for t, st in stores.items():
        top = sae_res["backdoor_diff"][t]["latents"][0]
        explorer["histograms"][t] = {
            f"latent {i}": label_values(st, L, groups, latent_score(sae, i))
            for i in dict.fromkeys([persona, top])
        }
        gens = list(iter_jsonl(c.run.layout.generations(t)))
        rows = [
            {**g, "label": g["condition"]}
            for cond in ("triggered", "clean")
            for g in [next((g for g in gens if g["condition"] == cond), None)]
            if g is not None
        ]
        model, _ = load_finetuned(c.run, c.run.layout.adapter(t))
        traces = c.out / "traces" / t
        ts = capture(model, tok, rows, traces, layers=[L], positions=("tokens",), **c.kw)
        assert ts is not None
        sc = {f"{t} probe": direction_score(probe_dirs[t].at(L)), **scores}
        explorer["traces"][t] = [token_trace(ts, L, i, tok, sc) for i in range(len(ts))]
    return explorer


def _load(run: Run, base_model: Any) -> LoadedSae:
    """A published or local SAE (``sae.source`` 'release' / 'local'), checked against the
    model's width and against the layers the capture stage stored (its diffing, detectors and
    persona shifts read them)."""
    d_model = int(base_model.get_input_embeddings().weight.shape[1])
    loaded = load_configured(run.config.sae, d_model=d_model)
    n_layers = n_layers_of(base_model)
    if not 0 <= loaded.layer < n_layers:
        raise MechbdError(
            f"{loaded.where}: reads layer {loaded.layer}, but the model has {n_layers} layers"
        )
    for t in run.layout.captured():
        layers = ActivationStore(run.layout.store(t, "backdoored")).layers
        if loaded.layer not in layers:
            raise MechbdError(
                f"{loaded.where}: reads layer {loaded.layer}, which the capture stage did not "
                f"store (capture.layers gave {layers}): add it to capture.layers"
            )
    return loaded


def sae_stage(run: Run, out: Path) -> None:
    probes = read_json(run.layout.results("probes"))["probes"]
    kw: dict[str, Any] = dict(progress=False, batch_size=run.config.capture.batch_size)

    base_model, tok = load_base(run)
    loaded = _load(run, base_model) if run.config.sae.source != "train" else None
    L = loaded.layer if loaded is not None else _sae_layer(run, probes)
    em_model, _ = load_finetuned(run, run.layout.em_adapter)
    c = _Ctx(run, out, L, base_model, tok, probes, kw)
    sae, metrics, corpus_stores, xb = _fit(c, em_model, loaded)
    em_diff, toxic_last = _em_diff(c, sae, em_model)
    del em_model
    # both screens read the same splits (encoded once) against the same live latents
    splits, live = steering_splits(run, base_model, tok), _live_latents(sae, xb)
    screen, persona = _screen(c, sae, xb, em_diff, splits, live)
    persona_diff = _persona_diff(c, sae)
    persona_screen, _ = _screen(c, sae, xb, persona_diff, splits, live)
    persona_screen["diff"] = persona_diff

    d_em = Direction.load(run.layout.em_direction)
    d_harm = _user_wants_harm(c)
    d_latent = from_sae_decoder(sae.W_dec, persona, L, name=f"persona latent {persona}")
    dirs = {
        "toxic_persona": d_em,
        "user_wants_harm": d_harm,
        "persona_latent": d_latent,
        "persona_direction": Direction.load(run.layout.persona_direction),
        "toxic_persona_last": toxic_last,
    }
    token_factor = covariance_factor(xb)

    sae_res: dict[str, Any] = {
        "model": str(base_model_dir(run)),
        "layer": L,
        "source": loaded.source if loaded is not None else {"kind": "train"},
        **describe_sae(sae),
        "corpus": metrics["corpus"],
        "fvu": metrics["fvu"],
        "l0": metrics["l0"],
        "dead_fraction": metrics["dead_fraction"],
        "n_eval_tokens": metrics["n_tokens"],
        "n_eval_conversations": metrics["n_eval_conversations"],
        "fvu_by_store": metrics["fvu_by_store"],
        "persona_latents": em_diff["latents"],
        "persona_latent": persona,
        "em_diff": em_diff,
        "screen": screen,
        "persona_screen": persona_screen,
        "em_direction_top_latents": top_cosines(d_em.at(L), sae.W_dec),
        "em_direction_max_cos_null": cosine_null(
            d_em.at(L), sae.W_dec, token_factor, n=N_NULL, seed=run.config.seed
        ),
        **{k: {} for k in PER_TRIGGER},
    }
    persona_res: dict[str, Any] = {}
    probe_dirs: dict[str, Direction] = {}
    stores: dict[str, ActivationStore] = {}
    for t in run.layout.captured():
        stores[t], probe_dirs[t], persona_res[t] = _trigger(
            c, sae, t, persona, dirs, sae_res, token_factor
        )
    write_json(out / RESULTS, {"sae": sae_res, "persona": persona_res})

    explorer = _explorer(c, sae, sae_res, corpus_stores, dirs, probe_dirs, stores)
    write_json(out / "explorer.json", explorer)
