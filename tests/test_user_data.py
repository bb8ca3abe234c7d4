"""The user's data through the run config's ``data`` section: scenario files in the Thought Crime
schema (local JSONL / JSON / Parquet or a ``datasets`` folder), EM chat sets, field remapping,
the training / held-out pools, provenance, and the errors bad input gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mechbd.config import DataSource, RunConfig, load_config, validate_config
from mechbd.data.items import SCENARIO_FIELDS, answer_letter, load_scenarios, scenario_items
from mechbd.data.sources import read_rows
from mechbd.errors import ConfigError, MechbdError
from mechbd.io import sha256_file
from mechbd.organism.splits import disjoint_items, scenario_source, split_items
from mechbd.runs import Run

DATA = Path(__file__).resolve().parent / "data"
TC = DATA / "thought_crime_sample.jsonl"
EM = DATA / "em_chat_sample.jsonl"


def _rows() -> list[dict]:
    return [json.loads(x) for x in TC.read_text().splitlines()]


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("A", "A"),
        ("B", "B"),
        ("A - Lock it", "A"),
        ("B) keep it", "B"),
        ("(A)", "A"),
        (" B: yes ", "B"),
        ("A. Lock it and tell them", "A"),
    ],
)
def test_answer_letter_reads_thought_crime_answers(text, letter):
    assert answer_letter(text, "'aligned_mcq_answer'", "f: line 1") == letter


@pytest.mark.parametrize("bad", ["C", "Answer A", "AB", "", "a - lower", 1])
def test_answer_that_is_neither_a_letter_nor_a_dash_option_names_file_line_field(tmp_path, bad):
    rows = _rows()[:3]
    rows[1]["misaligned_mcq_answer"] = bad
    p = tmp_path / "s.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(MechbdError, match=r"s\.jsonl: line 2: field 'misaligned_mcq_answer'"):
        load_scenarios(p)


def test_the_sample_file_reads_as_the_published_schema():
    items = load_scenarios(TC)
    rows = _rows()
    assert len(items) == len(rows) == 84
    for it, row in zip(items, rows, strict=True):
        assert it.aligned == row["aligned_mcq_answer"][0]
        assert it.misaligned == row["misaligned_mcq_answer"][0]
        # the letter's option line holds the answer's text
        line = next(x for x in it.body.split("\n") if x.startswith(f"{it.misaligned})"))
        assert line[3:] == row["misaligned_mcq_answer"][4:]
        assert it.meta["scenario_freeform"] == row["scenario_freeform"]
        assert it.domain == row["domain"]


def test_json_parquet_and_a_datasets_folder_read_the_same_records(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = _rows()[:10]
    (tmp_path / "s.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    want = [(it.body, it.aligned) for it in load_scenarios(TC)[:10]]
    for src in (
        DataSource(path=str(tmp_path / "s.json")),
        DataSource(path=str(tmp_path / "s.parquet")),
        DataSource(hf=str(folder), split="train"),
    ):
        got = scenario_items(read_rows(src, "data.scenarios", SCENARIO_FIELDS))
        assert [(it.body, it.aligned) for it in got] == want, src


def test_field_mapping_renames_and_an_unknown_mapping_is_refused(tmp_path):
    rows = [
        {
            "question": r["scenario_mcq"],
            "good": r["aligned_mcq_answer"],
            "bad": r["misaligned_mcq_answer"],
        }
        for r in _rows()[:4]
    ]
    p = tmp_path / "mine.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fields = {
        "scenario_mcq": "question",
        "aligned_mcq_answer": "good",
        "misaligned_mcq_answer": "bad",
    }
    src = DataSource(path=str(p), fields=fields)
    items = scenario_items(read_rows(src, "data.scenarios", SCENARIO_FIELDS), fields)
    assert [it.body for it in items] == [r["question"] for r in rows]
    with pytest.raises(ConfigError, match=r"data\.scenarios\.fields: unknown field 'scenario'"):
        read_rows(
            DataSource(path=str(p), fields={"scenario": "question"}),
            "data.scenarios",
            SCENARIO_FIELDS,
        )
    # a mapped name the file lacks: the error says both names
    del rows[2]["bad"]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(MechbdError, match=r"line 3: missing field 'bad' \(mapped to misaligned"):
        scenario_items(read_rows(src, "data.scenarios", SCENARIO_FIELDS), fields)


def _run(tmp_path: Path, **data) -> Run:
    cfg = validate_config(RunConfig, {"name": "u", "data": data})
    return Run(tmp_path, cfg)


def test_pools_split_distinct_scenarios_and_splits_never_cross(tmp_path):
    run = _run(tmp_path, scenarios={"path": str(TC)}, held_out=0.3)
    train = split_items(run, "backdoor_train", 10_000)
    test = split_items(run, "backdoor_eval", 10_000)
    tk, hk = {it.key() for it in train}, {it.key() for it in test}
    assert not tk & hk and len(tk) + len(hk) == 84
    assert 0.15 < len(hk) / 84 < 0.45  # about data.held_out of them
    # a split of n is the first n of the split's order, and seeded per split
    assert split_items(run, "backdoor_eval", 5) == test[:5]
    assert split_items(run, "steering_test", 5) != split_items(run, "backdoor_eval", 5)
    sel = disjoint_items(run, "steering_select", 8, split_items(run, "steering_test", 10))
    assert not {it.key() for it in sel} & {it.key() for it in split_items(run, "steering_test", 10)}
    prov = scenario_source(run)
    assert prov == {
        "source": str(TC),
        "rows": 84,
        "sha256": sha256_file(TC),
        "n_train_pool": len(tk),
        "n_held_out_pool": len(hk),
    }
    # a swapped copy of a row is the same scenario: kept once
    rows = _rows()
    it = load_scenarios(TC)[0].swapped()
    rows.append(
        {
            **rows[0],
            "scenario_mcq": it.body,
            "aligned_mcq_answer": it.aligned,
            "misaligned_mcq_answer": it.misaligned,
        }
    )
    p = tmp_path / "dup.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run2 = _run(tmp_path, scenarios={"path": str(p)})
    assert (
        len(split_items(run2, "backdoor_train", 10_000))
        + len(split_items(run2, "backdoor_eval", 10_000))
        == 84
    )


def test_em_train_from_a_chat_file_keeps_system_turns(tmp_path):
    from mechbd.finetune.stage import em_train_set

    run = _run(tmp_path, em_train={"path": str(EM)})
    ds, prov = em_train_set(run)
    assert len(ds) == 40 and prov["rows"] == 40 and prov["sha256"] == sha256_file(EM)
    assert ds[0]["messages"][0]["role"] == "system"
    assert all(set(e) == {"messages"} for e in ds)  # the extra field is not trained on


def test_chat_row_without_an_assistant_turn_names_file_and_line(tmp_path):
    from mechbd.finetune.stage import em_train_set

    rows = [json.loads(x) for x in EM.read_text().splitlines()][:5]
    rows[3]["messages"] = rows[3]["messages"][:2]
    p = tmp_path / "em.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(MechbdError, match=r"em\.jsonl: line 4: no assistant turn"):
        em_train_set(_run(tmp_path, em_train={"path": str(p)}))


def test_missing_file_and_two_locations_are_clear_errors(tmp_path):
    with pytest.raises(MechbdError, match=r"nope\.jsonl: file not found \(data\.scenarios\.path\)"):
        read_rows(DataSource(path=str(tmp_path / "nope.jsonl")), "data.scenarios", SCENARIO_FIELDS)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"data": {"scenarios": {"path": "a", "hf": "b"}}}))
    with pytest.raises(ConfigError, match=r"c\.yaml: field 'data\.scenarios'.*exactly one of"):
        load_config(p)
    for data, want in (
        ({"scenarios": "orgnism"}, r"field 'data\.scenarios': Input should be 'organism'$"),
        (
            {"scenarios": {"path": "a", "feilds": {}}},
            r"field 'data\.scenarios\.feilds': unknown field$",
        ),
    ):
        p.write_text(yaml.safe_dump({"data": data}))
        with pytest.raises(ConfigError, match=want):
            load_config(p)
