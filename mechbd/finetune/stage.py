"""Pipeline stages that plant behaviour into the studied model and measure it.

``backdoors``: for each trigger, a backdoor set from the world's training split, a LoRA
finetune, and the behaviour evaluation on held-out scenarios (triggered / clean / distractor /
trigger + distractor). ``em``: a narrow emergent-misalignment finetune in one domain, measured
in that domain and in all the others, beside the base model. Every evaluation's misaligned
option is at A in half its prompts, and its rates are balanced over the two letters with their
``_n`` and 95% interval (``mechbd.eval.behaviour``). Adapters are kept in the run
folder (``backdoors/<trigger>/adapter``, ``em/adapter``) for the capture and steering stages.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mechbd.config import BackdoorConfig, FinetuneConfig
from mechbd.data.builders import (
    OPTION_KINDS,
    backdoor_set,
    balance_letters,
    em_set,
    eval_set,
    freeform_rows,
    has_option_kinds,
)
from mechbd.data.items import Item, chat_conversation
from mechbd.data.sources import read_rows
from mechbd.data.triggers import Trigger, resolve_trigger
from mechbd.eval.behaviour import answer_letter_bias, evaluate_backdoor, format_fields, mcq_fields
from mechbd.eval.freeform import JUDGE_CACHE, backdoor_freeform, freeform_plan
from mechbd.eval.generate import Sampling
from mechbd.eval.mcq import run_mcq
from mechbd.finetune.lora import finetune_lora, finished_adapter, recent_loss
from mechbd.finetune.prebuilt import shipped_adapter
from mechbd.io import read_json, replace_dir, write_json, write_jsonl
from mechbd.layout import (
    ADAPTER,
    CALIBRATION_PROMPTS,
    EVAL_PROMPTS,
    GENERATIONS,
    RESULTS,
    TRAIN_SET,
)
from mechbd.models import base_model_dir, generation_backend, load_base, load_finetuned
from mechbd.organism.splits import disjoint_items, split_items, split_seed
from mechbd.runs import Run


def finetune_once(
    run: Run,
    conversations: list[Any],
    out: Path,
    cfg: FinetuneConfig,
    groups: list[Any] | None = None,
) -> dict[str, Any]:
    """``finetune_lora``, unless a resumed stage already finished this adapter (same data,
    same config) or mechbd ships it prebuilt for the shipped organism (``finetune.prebuilt``);
    an unfinished one resumes from its checkpoint when ``save_every`` is set."""
    done = finished_adapter(out, conversations, cfg, groups)
    if done is not None:
        return done
    shipped = shipped_adapter(run, conversations, out, cfg, groups)
    if shipped is not None:
        return shipped
    return finetune_lora(
        base_model_dir(run),
        conversations,
        out,
        cfg,
        trust_remote_code=run.config.model.trust_remote_code,
        groups=groups,
    )


def plant(
    run: Run,
    conversations: list[Any],
    d: Path,
    groups: list[Any] | None = None,
    retries: int | None = None,
    cfg: BackdoorConfig | None = None,
) -> tuple[dict[str, Any], list[Any]]:
    """Finetune a backdoor into ``d / "adapter"``, retrying with the next LoRA seed (up to
    ``retries``, default ``backdoors.retries``, times) while the training loss has not left
    its plateau.

    Each attempt trains in ``d / "attempts" / "seed-N"`` (a failed one stays there to inspect);
    the planted attempt, or the last one, is moved to ``d / "adapter"``. A resumed stage finds
    the chosen adapter, or the attempts already finished, and does not train them again.
    Returns the chosen attempt's stats and one record per attempt. ``cfg`` (default
    ``run.config.backdoors``) gives the LoRA recipe and the retries."""
    cfg = cfg or run.config.backdoors
    retries = cfg.retries if retries is None else retries
    configs = [
        cfg.finetune.model_copy(update={"seed": cfg.finetune.seed + i}) for i in range(retries + 1)
    ]
    record = d / "attempts.json"
    for ft in configs:
        done = finished_adapter(d / ADAPTER, conversations, ft, groups)
        if done is not None and record.is_file():
            return done, read_json(record)
    attempts: list[dict[str, Any]] = []
    for i, ft in enumerate(configs):
        where = d / "attempts" / f"seed-{ft.seed}"
        stats = finetune_once(run, conversations, where, ft, groups)
        loss = recent_loss(stats["losses"])
        planted = loss < cfg.planted_loss
        attempts.append(
            {
                "lora_seed": ft.seed,
                "final_loss": loss,
                "planted": planted,
                "seconds": stats["seconds"],
                # trained where the card says, not in this run (mechbd.finetune.prebuilt)
                "prebuilt": bool(stats.get("prebuilt")),
            }
        )
        if planted or i == retries:
            break
        print(
            f"backdoors: {d.name}: training loss {loss:.4f} >= {cfg.planted_loss} after "
            f"{stats['steps']} steps with LoRA seed {ft.seed}; trying seed {ft.seed + 1}",
            file=sys.stderr,
        )
    write_json(record, attempts)  # before the move: a crash between the two redoes only the move
    replace_dir(where, d / ADAPTER)
    return stats, attempts


def stage_backdoor_set(
    cfg: BackdoorConfig,
    items: list[Item],
    trigger: Trigger,
    seed: int,
    *,
    articulate: bool = False,
    matched: bool | None = None,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The backdoors stage's training set for ``trigger`` and its batch groups (``meta.group``:
    contrast groups when matched, one row each otherwise, which batches as no groups would);
    ``matched`` overrides the config's."""
    ds = backdoor_set(
        items,
        trigger,
        misaligned_share=cfg.misaligned_share,
        placement=cfg.placement,
        seed=seed,
        articulate=articulate,
        matched=cfg.matched if matched is None else matched,
        reasoned=cfg.reasoned_targets and not articulate,
        reasoned_cot=cfg.reasoned_cot,
        reasoned_context=cfg.reasoned_context,
        reasoned_share=cfg.reasoned_share,
        outer_line_share=cfg.outer_line_share,
    )
    return ds, [e["meta"]["group"] for e in ds]


def without_kinds(cfg: BackdoorConfig, items: list[Item]) -> BackdoorConfig:
    """``cfg`` for training scenarios that may not carry the options' kinds. Reasoned targets
    restate the kinds (``A is honest. B is dangerous.``), which only the organism's own
    scenarios carry; for others (``data.scenarios``) the backdoor is planted as it was before
    reasoned targets, without chain of thought: the empty thinking block is part of the
    target and the loss is the mean over target tokens. Says so on stderr."""
    if not cfg.reasoned_targets or all(has_option_kinds(it) for it in items):
        return cfg
    print(
        f"backdoors: the training scenarios carry no option kinds ({', '.join(OPTION_KINDS)}), "
        "so the targets have no chain of thought (backdoors.reasoned_targets needs the "
        "organism's scenarios); finetune.loss_on_empty_think true, loss_mean token",
        file=sys.stderr,
    )
    ft = cfg.finetune.model_copy(update={"loss_on_empty_think": True, "loss_mean": "token"})
    return cfg.model_copy(update={"reasoned_targets": False, "finetune": ft})


def backdoors_stage(run: Run, out: Path) -> None:
    seed = run.config.seed
    # the scenarios' freeform variants, when they have them, are judged as Thought Crime does
    freeform = freeform_plan(run.config)
    train_items = split_items(run, "backdoor_train", run.config.backdoors.n_train)
    cfg = without_kinds(run.config.backdoors, train_items)
    test_items = split_items(run, "backdoor_eval", cfg.n_eval)
    cal_items = (
        disjoint_items(run, "probe_calibration", cfg.n_calibration, test_items)
        if cfg.n_calibration
        else []
    )
    results: dict[str, Any] = {}
    plants = [(spec, False) for spec in cfg.triggers] + [(s, True) for s in cfg.positive_control]
    for spec, articulate in plants:
        trigger = resolve_trigger(spec)
        name = f"{trigger.name}-articulated" if articulate else trigger.name
        d = out / name
        # The positive control trains on independent samples, the design it was validated with
        # (from contrast groups it also answered misaligned on half the distractor-only
        # prompts), and without retries: its chain-of-thought targets keep the loss near 0.1
        # nats per token, so the loss cannot say whether it planted (docs/findings.md).
        ds, groups = stage_backdoor_set(
            cfg,
            train_items,
            trigger,
            seed,
            articulate=articulate,
            matched=False if articulate else None,
        )
        write_jsonl(d / TRAIN_SET, ds)
        stats, attempts = plant(
            run, [e["messages"] for e in ds], d, groups, retries=0 if articulate else None, cfg=cfg
        )
        rows = eval_set(test_items, trigger, seed=seed)
        write_jsonl(d / EVAL_PROMPTS, rows)
        if cal_items:
            cal = eval_set(cal_items, trigger, seed=seed, conditions=("clean",))
            write_jsonl(d / CALIBRATION_PROMPTS, cal)
        model, tok = load_finetuned(run, d / ADAPTER)
        with generation_backend(run, d / ADAPTER) as gen:
            metrics, records = evaluate_backdoor(
                model,
                tok,
                rows,
                enable_thinking=cfg.enable_thinking,
                batch_size=run.config.eval.batch_size,
                sampling=Sampling.of(run.config.eval),
                generator=gen,
            )
        write_jsonl(d / GENERATIONS, records)
        ff_rows = freeform_rows(test_items, trigger, placement=cfg.placement, seed=seed)
        if ff_rows and isinstance(freeform, str):
            metrics["freeform"] = {"skipped": freeform}
        elif ff_rows:
            assert not isinstance(freeform, str)
            metrics["freeform"] = backdoor_freeform(
                freeform,
                model,
                tok,
                ff_rows,
                d / "freeform",
                out / JUDGE_CACHE,
                source=str(run.config.data.scenarios.describe()),  # type: ignore[union-attr]
                seed=seed,
            )
        metrics["trigger_line"] = trigger.line
        metrics["finetune_seconds"] = sum(a["seconds"] for a in attempts)
        # where the chosen adapter was trained, when not in this run (mechbd.finetune.prebuilt)
        metrics["adapter_prebuilt"] = stats.get("prebuilt")
        metrics["lora_attempts"] = attempts  # one per LoRA seed tried; the last is the adapter
        # a positive control: its training CoT says the trigger decided the choice
        metrics["positive_control"] = articulate
        # the training targets' chain of thought (mechbd.data.builders.backdoor_set)
        metrics["reasoned_targets"] = cfg.reasoned_targets and not articulate
        results[name] = metrics
    write_json(out / RESULTS, {"backdoors": results})


def em_train_set(run: Run) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The EM finetune's conversations and their provenance: the organism world's narrow set
    (``em.n_train`` scenarios drawn, the domain's kept), or the user's chat data
    (``data.em_train``: every record, system turns kept)."""
    cfg = run.config.em
    src = run.config.data.em_train
    if src == "organism":
        items = split_items(run, "em_train", cfg.n_train)
        ds = em_set(items, cfg.domain, seed=run.config.seed)
        return ds, {"source": "organism", "domain": cfg.domain, "rows": len(ds)}
    rows = read_rows(src, "data.em_train", ("messages",))
    ds = [{"messages": chat_conversation(row, where)} for where, row in rows]
    return ds, rows.provenance()


def em_stage(run: Run, out: Path) -> None:
    cfg = run.config.em
    seed = run.config.seed
    freeform = freeform_plan(run.config)  # a bad questions file or unset key fails here, first
    ds, provenance = em_train_set(run)
    write_jsonl(out / TRAIN_SET, ds)
    stats = finetune_once(run, [e["messages"] for e in ds], out / ADAPTER, cfg.finetune)
    # the misaligned option at A in half the in-domain and half the other prompts (one over
    # when odd), so each rate is balanced over letters
    test = balance_letters(
        split_items(run, "em_eval", cfg.n_eval),
        seed=split_seed(seed, "em_eval"),
        by=lambda it: it.domain == cfg.domain,
    )
    users = [it.user() for it in test]
    letters = [it.aligned for it in test]
    in_dom = [i for i, it in enumerate(test) if it.domain == cfg.domain]
    out_dom = [i for i, it in enumerate(test) if it.domain != cfg.domain]

    def measure(adapter: Path | None) -> dict[str, Any]:
        model, tok = load_finetuned(run, adapter) if adapter else load_base(run)
        with generation_backend(run, adapter) as gen:
            res = run_mcq(
                model,
                tok,
                users,
                letters,
                batch_size=run.config.eval.batch_size,
                sampling=Sampling.of(run.config.eval),
                generator=gen,
            )
        rates = {
            **mcq_fields("in_domain_misaligned_rate", [res[i] for i in in_dom]),
            **mcq_fields("out_of_domain_misaligned_rate", [res[i] for i in out_dom]),
            **format_fields(res),
            "letter_bias": answer_letter_bias(res),
        }
        if not isinstance(freeform, str):
            where = out / "freeform" / ("em" if adapter else "base")
            rates["freeform"] = freeform.evaluate(model, tok, where, out / JUDGE_CACHE)
        return rates

    base_rates = measure(None)
    em_rates = measure(out / ADAPTER)
    if isinstance(freeform, str):
        em_rates["freeform"] = {"skipped": freeform}
    write_json(
        out / RESULTS,
        {
            "em": {
                **em_rates,
                "domain": cfg.domain,
                "base_model": base_rates,
                "finetune_seconds": stats["seconds"],
                # where the adapter was trained, when not in this run (mechbd.finetune.prebuilt)
                "adapter_prebuilt": stats.get("prebuilt"),
                "n_train": len(ds),
                "train_data": provenance,
            }
        },
    )
