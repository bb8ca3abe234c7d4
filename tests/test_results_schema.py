"""The results.json schema (``mechbd.results``): it accepts what the pipeline writes, names the
field of a misspelt key or a wrongly typed value, is checked per stage when a run merges its
results, and docs/results.md is generated from it."""

from __future__ import annotations

import copy
import json

import pytest

from mechbd.config import RunConfig
from mechbd.io import dumps_json, write_json
from mechbd.results import (
    DOCS,
    Results,
    ResultsError,
    load_results,
    markdown_table,
    validate_results,
)
from mechbd.runs import Run
from tests.test_report import counted, fake_results


def test_schema_accepts_the_tiny_run(tiny_run):
    """Every section of a real run, and each stage's own results.json, match the schema."""
    res = load_results(tiny_run / "results.json")
    assert set(Results.model_fields) == set(json.loads((tiny_run / "results.json").read_text()))
    assert res.backdoors is not None and res.probes is not None and res.persona is not None
    assert set(res.probes.triggers) == set(res.backdoors) == set(res.persona)
    assert res.probes.transfer is not None and set(res.probes.transfer) == set(res.backdoors)
    assert res.model is not None and res.model.name == "mechbd-organism"
    # each stage's own file matches, merged over the stages before it (the steering stage adds
    # `em.persona` to the em stage's section, so its file alone holds half a section)
    merged: dict = {}
    for stage in ("organism", "backdoors", "em", "probes", "steering", "sae"):
        for key, value in json.loads((tiny_run / stage / "results.json").read_text()).items():
            old = merged.get(key)
            merged[key] = {**old, **value} if isinstance(old, dict) else value
        validate_results(merged, stage)
    assert set(json.loads((tiny_run / "steering" / "results.json").read_text())["em"]) == {
        "persona"
    }
    assert merged == json.loads((tiny_run / "results.json").read_text())


def test_schema_accepts_the_model_stage_sections():
    """A Hugging Face model's ``model`` stage: ``dtype``, no organism key, the clean organism
    keys with their ``_n`` and ``_ci95``."""
    res = validate_results(
        {
            "model": {
                "name": "Qwen/Qwen3-0.6B",
                "architecture": "Qwen3ForCausalLM",
                "n_params": 596049920,
                "dtype": "bfloat16",
                "note": "Numbers from Qwen/Qwen3-0.6B",
            },
            "organism": {
                **counted("clean_aligned_rate", 2, 4),
                **counted("format_valid_rate", 1, 4),
                **counted("no_answer_rate", 1, 4),
                **counted("truncated_rate", 3, 4),
                "letter_bias": 0.75,
                "n_test": 4,
            },
        }
    )
    assert res.organism is not None and res.organism.trigger_value_aligned_rate is None
    assert (res.organism.no_answer_rate, res.organism.truncated_rate_n) == (0.25, 4)
    assert res.backdoors is None


def test_schema_takes_reply_health_per_condition_and_results_written_before_it():
    """``replies_by_condition`` holds each condition's no-answer and truncated rates; results
    written before these keys existed still validate (the keys read null)."""
    res = fake_results()
    old = validate_results(res)
    assert old.organism is not None and old.organism.no_answer_rate is None
    (name,) = list(res["backdoors"])[:1]
    res["backdoors"][name]["replies_by_condition"] = {
        "triggered": {**counted("no_answer_rate", 2, 8), **counted("truncated_rate", 1, 8)}
    }
    got = validate_results(res).backdoors[name].replies_by_condition  # type: ignore[index]
    assert got is not None and got["triggered"].no_answer_rate == 0.25
    res["backdoors"][name]["replies_by_condition"]["triggered"]["no_answer"] = 0.1
    with pytest.raises(ResultsError, match="no_answer"):
        validate_results(res)


def test_schema_names_a_misspelt_key():
    res = fake_results()
    validate_results(res)
    t1 = res["backdoors"]["t1"]
    t1["asr_rate"] = t1.pop("asr")
    with pytest.raises(ResultsError) as e:
        validate_results(res, "stage backdoors: x.json")
    msg = str(e.value)
    assert msg.startswith("stage backdoors: x.json: ")
    assert "backdoors.t1.asr_rate: extra inputs are not permitted" in msg
    assert "backdoors.t1.asr: field required" in msg
    with pytest.raises(ResultsError, match="emm: extra inputs"):
        validate_results({"emm": {}})


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (("probes", "t1", "auroc"), "0.99", "a valid number"),  # no str -> float conversion
        (("probes", "t1", "auroc"), 1.5, "less than or equal to 1"),
        (("backdoors", "t1", "asr"), True, "a valid number"),
        (("steering", "base_em", "n_test"), 1.0, "a valid integer"),
        (("organism", "clean_aligned_rate"), None, "a valid number"),
        (("backdoors", "t1", "asr_n"), 200.0, "a valid integer"),
        (("backdoors", "t1", "asr_ci95"), "[0.9, 1.0]", "a valid list"),
    ],
)
def test_schema_rejects_a_wrongly_typed_value(path, value, error):
    res = copy.deepcopy(fake_results())
    d = res
    for key in path[:-1]:
        d = d[key]
    d[path[-1]] = value
    with pytest.raises(ResultsError) as e:
        validate_results(res)
    assert f"{'.'.join(path)}: input should be {error}" in str(e.value)


def test_run_results_checks_each_stage_and_keeps_what_it_wrote(tmp_path):
    """``Run.write_results`` merges the stages' files unchanged (key order, int vs float);
    a stage whose file breaks the schema is an error naming the stage and the field."""
    res = fake_results()
    write_json(
        tmp_path / "manifest.json",
        {"stages": {s: {"status": "done"} for s in ("organism", "backdoors", "em")}},
    )
    write_json(
        tmp_path / "organism" / "results.json",
        {"model": res["model"], "organism": res["organism"]},
    )
    write_json(tmp_path / "backdoors" / "results.json", {"backdoors": res["backdoors"]})
    em = {
        "in_domain_misaligned_rate": None,
        "in_domain_misaligned_rate_n": 0,
        "in_domain_misaligned_rate_ci95": None,
        **counted("out_of_domain_misaligned_rate", 5, 10),
        "format_valid_rate": 1,  # an int where the schema says float: accepted, written as is
        "format_valid_rate_n": 10,
        "format_valid_rate_ci95": [0.7225, 1.0],
        "letter_bias": 0.6,
        "domain": "health",
        "base_model": {
            **counted("in_domain_misaligned_rate", 0, 2),
            **counted("out_of_domain_misaligned_rate", 0, 8),
            **counted("format_valid_rate", 10, 10),
            "letter_bias": None,
        },
        "finetune_seconds": 1.5,
        "n_train": 10,
    }
    write_json(tmp_path / "em" / "results.json", {"em": em})
    run = Run(tmp_path, RunConfig(name="x"))
    run.write_results()
    merged = {"model": res["model"], "organism": res["organism"], "backdoors": res["backdoors"]}
    assert (tmp_path / "results.json").read_text() == dumps_json(merged | {"em": em})
    write_json(tmp_path / "em" / "results.json", {"em": {**em, "n_train": "10"}})
    with pytest.raises(ResultsError, match=r"^stage em: .*em.n_train: input should be a valid"):
        run.write_results()


def test_docs_results_md_is_generated_from_the_schema():
    """docs/results.md is ``python -m mechbd.results``'s output: rerun it after a schema edit."""
    assert DOCS.read_text(encoding="utf-8") == markdown_table(), "run python -m mechbd.results"
    rows = [line for line in markdown_table().splitlines() if line.startswith("| ")][2:]
    keys = {row.split(" | ")[1].strip("`") for row in rows}
    for key in ("backdoors.<trigger>.asr", "probes.transfer.<train>.<test>", "sae.fvu"):
        assert key in keys
    assert {row.split(" | ")[0].removeprefix("| ") for row in rows} == set(Results.model_fields)
