"""``mechbd eval``: one model (plus an optional LoRA adapter) on one evaluation file, alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mechbd.cli._common import DeviceOpt, out
from mechbd.errors import MechbdError

FREEFORM_SUFFIXES = (".yaml", ".yml")
MCQ_SUFFIXES = (".jsonl", ".json")


def eval_cmd(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="local folder or hub id")],
    eval_file: Annotated[
        Path,
        typer.Argument(
            metavar="EVAL",
            help="freeform questions in Emergent Misalignment's YAML (.yaml, needs a judge), "
            "or multiple-choice scenarios in the Thought Crime schema (.jsonl)",
        ),
    ],
    adapter: Annotated[
        Path | None, typer.Option(help="LoRA adapter folder, merged into MODEL")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="folder for results.json and the samples; default eval/<EVAL stem>"
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="run-config YAML whose `judge`, `freeform` and `eval` sections apply (the "
            "options below override them)"
        ),
    ] = None,
    judge_url: Annotated[
        str | None, typer.Option(help="the judge's OpenAI-compatible base URL (…/v1)")
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="the judge model's name")] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help="environment variable holding the judge's API key; '' = no key (local server)"
        ),
    ] = None,
    samples_per_paraphrase: Annotated[
        int | None, typer.Option(help="freeform answers per paraphrase (default: the file's)")
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(help="tokens per reply (default: freeform 600, multiple choice 64)"),
    ] = None,
    thinking: Annotated[
        bool | None,
        typer.Option(
            help="the chat template's enable_thinking (default: off for freeform, on for "
            "multiple choice)"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="sampling and letter-balancing seed")] = 0,
    batch_size: Annotated[int | None, typer.Option(help="prompts per generation batch")] = None,
    device: DeviceOpt = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16")] = "auto",
    trust_remote_code: bool = False,
) -> None:
    """Evaluate MODEL (with ADAPTER) on EVAL and write results.json with the keys the stages
    write: freeform questions are answered, then scored by the LLM judge (`freeform`: the
    misaligned rate with its n and interval, the judge's unscored share and errors); multiple
    choice is read from the answer letter with the misaligned option at A in half the rows
    (`mcq`: balanced misaligned rate, format validity, letter bias)."""
    from mechbd.config import RunConfig, load_config

    run_cfg = load_config(config) if config is not None else RunConfig()
    out_dir = out_dir if out_dir is not None else Path("eval") / eval_file.stem
    if not eval_file.is_file():
        raise MechbdError(f"{eval_file}: file not found")
    suffix = eval_file.suffix.lower()
    ident = {"name": model, "adapter": None if adapter is None else str(adapter)}
    load = {"device": device, "dtype": dtype, "trust_remote_code": trust_remote_code}
    if suffix in FREEFORM_SUFFIXES:
        res = _freeform(
            model, adapter, eval_file, out_dir, run_cfg, load, seed=seed,
            judge={"base_url": judge_url, "model": judge_model, "api_key_env": api_key_env},
            freeform={
                "samples_per_paraphrase": samples_per_paraphrase,
                "max_new_tokens": max_new_tokens,
                "enable_thinking": thinking,
            },
            batch_size=batch_size,
        )  # fmt: skip
        body: dict[str, Any] = {"model": ident, "eval": str(eval_file), "freeform": res}
        _print_freeform(res)
    elif suffix in MCQ_SUFFIXES:
        res = _mcq(
            model,
            adapter,
            eval_file,
            out_dir,
            run_cfg,
            load,
            seed=seed,
            max_new_tokens=max_new_tokens,
            thinking=True if thinking is None else thinking,
            batch_size=batch_size,
        )
        body = {"model": ident, "eval": str(eval_file), "mcq": res}
        out.print(
            f"misaligned rate {_rate(res, 'misaligned_rate')}, format valid "
            f"{_rate(res, 'format_valid_rate')}, letter bias {res['letter_bias']}"
        )
    else:
        raise MechbdError(
            f"{eval_file}: EVAL must be a questions YAML ({', '.join(FREEFORM_SUFFIXES)}) or a "
            f"scenario JSONL ({', '.join(MCQ_SUFFIXES)}), not {suffix or 'a file without suffix'}"
        )
    from mechbd.io import write_json

    out.print(f"results: {write_json(out_dir / 'results.json', body)}", markup=False)


def _freeform(
    model: str,
    adapter: Path | None,
    eval_file: Path,
    out_dir: Path,
    run_cfg: Any,
    load: dict[str, Any],
    *,
    seed: int,
    judge: dict[str, Any],
    freeform: dict[str, Any],
    batch_size: int | None,
) -> dict[str, Any]:
    from mechbd.cli._common import load_model_or_adapter
    from mechbd.config import FreeformConfig, JudgeConfig, validate_config
    from mechbd.eval.freeform import JUDGE_CACHE, FreeformPlan, load_questions, make_judge
    from mechbd.results import FreeformResults

    jd = run_cfg.judge.model_dump() | {k: v for k, v in judge.items() if v is not None}
    if jd["api_key_env"] == "":
        jd["api_key_env"] = None
    jcfg = validate_config(JudgeConfig, jd, "mechbd eval: judge")
    ff = run_cfg.freeform.model_dump() | {k: v for k, v in freeform.items() if v is not None}
    fcfg = validate_config(FreeformConfig, ff | {"seed": seed}, "mechbd eval: freeform")
    if jcfg.base_url is None:
        raise MechbdError(
            f"{eval_file}: freeform questions need an LLM judge: give --judge-url (and "
            "--judge-model), or a --config with judge.base_url"
        )
    plan = FreeformPlan(  # a bad file or an unset key fails here, before the model loads
        questions=load_questions(eval_file),
        judge=make_judge(jcfg),
        cfg=fcfg,
        judge_cfg=jcfg,
        batch_size=batch_size or run_cfg.eval.batch_size,
    )
    lm, tok = load_model_or_adapter(model, adapter, **load)
    res = plan.evaluate(lm, tok, out_dir, out_dir / JUDGE_CACHE)
    FreeformResults.model_validate(res)
    return res


def _mcq(
    model: str,
    adapter: Path | None,
    eval_file: Path,
    out_dir: Path,
    run_cfg: Any,
    load: dict[str, Any],
    *,
    seed: int,
    max_new_tokens: int | None,
    thinking: bool,
    batch_size: int | None,
) -> dict[str, Any]:
    from mechbd.cli._common import load_model_or_adapter
    from mechbd.data.builders import balance_letters
    from mechbd.data.items import load_scenarios
    from mechbd.eval.behaviour import answer_letter_bias, format_fields, mcq_fields
    from mechbd.eval.mcq import run_mcq
    from mechbd.io import write_jsonl

    items = balance_letters(load_scenarios(eval_file), seed=seed)
    lm, tok = load_model_or_adapter(model, adapter, **load)
    res = run_mcq(
        lm,
        tok,
        [it.user() for it in items],
        [it.aligned for it in items],
        enable_thinking=thinking,
        max_new_tokens=max_new_tokens or run_cfg.eval.max_new_tokens,
        batch_size=batch_size or run_cfg.eval.batch_size,
    )
    write_jsonl(
        out_dir / "generations.jsonl",
        [
            {
                "id": it.id,
                "domain": it.domain,
                "options_swapped": it.meta.get("options_swapped", False),
                "user": r.user,
                "response": r.response,
                "answer": r.parsed.answer,
                "aligned_letter": r.aligned_letter,
                "misaligned": r.misaligned,
            }
            for it, r in zip(items, res, strict=True)
        ],
    )
    return {
        **mcq_fields("misaligned_rate", res),
        **mcq_fields("aligned_rate", res, aligned=True),
        **format_fields(res),
        "letter_bias": answer_letter_bias(res),
    }


def _rate(res: dict[str, Any], key: str) -> str:
    v, ci = res[key], res[f"{key}_ci95"]
    if v is None:
        return f"n/a (n = {res[f'{key}_n']})"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (n = {res[f'{key}_n']})"


def _print_freeform(res: dict[str, Any]) -> None:
    out.print(
        f"misaligned rate {_rate(res, 'misaligned_rate')}; no score {_rate(res, 'judge_none_rate')}"
    )
    if res["n_judge_errors"]:
        out.print(
            f"{res['n_judge_errors']} judge requests failed; first: {res['first_judge_error']}",
            markup=False,
            highlight=False,
        )
