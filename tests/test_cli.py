"""The CLI as a user runs it: a subprocess, one-line errors, exit code 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY

MECHBD = [sys.executable, "-m", "mechbd"]


def mechbd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MECHBD, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def tiny_config(tmp_path: Path, **extra) -> Path:
    cfg = {
        "name": "tiny",
        "organism": TINY,
        "eval": {"max_new_tokens": 24},
        "backdoors": {"triggers": []},  # the later stages are covered by test_stages.py
        "em": {"enabled": False},
    } | extra
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_unknown_field(tmp_path):
    p = tiny_config(tmp_path, bogus=1)
    line = one_line_error(mechbd("run", str(p), cwd=tmp_path))
    assert "tiny.yaml" in line and "'bogus'" in line and "unknown field" in line


def test_zero_size(tmp_path):
    p = tiny_config(tmp_path, organism=TINY | {"n_layers": 0})
    assert "organism.n_layers" in one_line_error(mechbd("run", str(p), cwd=tmp_path))


def test_missing_config(tmp_path):
    assert "config file not found" in one_line_error(mechbd("run", "missing.yaml", cwd=tmp_path))


def test_unwritable_out(tmp_path):
    (tmp_path / "blocker").write_text("")
    p = tiny_config(tmp_path)
    line = one_line_error(
        mechbd("run", str(p), "--out", str(tmp_path / "blocker" / "run"), cwd=tmp_path)
    )
    assert "cannot write" in line


@pytest.mark.slow
def test_run_tiny_pipeline_then_rerun_skips(tmp_path):
    p = tiny_config(tmp_path)
    first = mechbd("run", str(p), "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    from tests.recompute import organism_rates

    want = organism_rates(tmp_path / "r")  # from the stage's samples: all n_test replies
    assert want["n"] == res["organism"]["n_test"] == TINY["n_test"]
    org = res["organism"]
    assert org["clean_aligned_rate"] == pytest.approx(want["clean_aligned_rate"], abs=1e-12)
    assert abs(2 * want["n_aligned_at_A"] - want["n"]) == want["n"] % 2  # letters balanced
    assert org["clean_aligned_rate_n"] == org["format_valid_rate_n"] == want["n"]
    assert org["format_valid_rate"] == want["format_valid_rate"]
    assert "organism" in res["model"]["note"]
    man = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert man["stages"]["organism"]["status"] == "done"
    second = mechbd("run", str(p), "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert second.returncode == 0 and "done, skipped" in second.stderr
    # another config into the same folder is refused, the run is untouched
    p2 = tiny_config(tmp_path, seed=5)
    assert "--force" in one_line_error(
        mechbd("run", str(p2), "--out", str(tmp_path / "r"), cwd=tmp_path)
    )
    assert json.loads((tmp_path / "r" / "results.json").read_text()) == res


@pytest.mark.slow  # `mechbd finetune` in subprocesses
def test_data_and_finetune_commands(tmp_path, tiny_organism):
    p = mechbd(
        "data",
        "backdoor",
        "--trigger",
        "singapore",
        "--n",
        "24",
        "--out",
        str(tmp_path / "bd.jsonl"),
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in (tmp_path / "bd.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and sum(r["meta"]["condition"] == "triggered" for r in rows) == 8
    p = mechbd(
        "data",
        "eval",
        "--trigger",
        "heyyy",
        "--n",
        "5",
        "--out",
        str(tmp_path / "ev.jsonl"),
        cwd=tmp_path,
    )
    assert p.returncode == 0 and len((tmp_path / "ev.jsonl").read_text().splitlines()) == 20
    cfg = tmp_path / "lora.yaml"
    cfg.write_text(yaml.safe_dump({"rank": 2, "alpha": 4, "epochs": 1.0, "batch_size": 8}))

    def finetune(data: str, adapter: str, *extra: str):
        return mechbd(
            "finetune",
            str(tiny_organism),
            str(tmp_path / data),
            "--out",
            str(tmp_path / adapter),
            *extra,
            cwd=tmp_path,
        )

    p = finetune("bd.jsonl", "ad", "--config", str(cfg))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "ad" / "adapter_config.json").is_file()
    # the set's contrast groups (meta.group) were the batch groups
    from mechbd.finetune.lora import conversations_digest

    card = json.loads((tmp_path / "ad" / "finetune.json").read_text())
    convs = [r["messages"] for r in rows]
    groups = [r["meta"]["group"] for r in rows]
    assert len(set(groups)) == 8
    assert card["conversations_sha"] == conversations_digest(convs, groups)
    assert card["conversations_sha"] != conversations_digest(convs)
    del rows[5]["meta"]["group"]
    (tmp_path / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = one_line_error(finetune("part.jsonl", "ad4"))
    assert "part.jsonl: line 6: no meta.group" in line
    cfg.write_text(yaml.safe_dump({"rnak": 2}))
    line = one_line_error(finetune("bd.jsonl", "ad2", "--config", str(cfg)))
    assert "lora.yaml" in line and "'rnak'" in line
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\n')
    line = one_line_error(finetune("bad.jsonl", "ad3"))
    assert "bad.jsonl: line 1" in line


def test_bad_comma_lists_are_one_line_errors_before_any_model_loads(tmp_path):
    import torch

    from mechbd.steering.directions import Direction

    Direction({0: torch.ones(4)}).save(tmp_path / "d.safetensors")
    (tmp_path / "ev.jsonl").write_text('{"user": "x"}\n')
    line = one_line_error(
        mechbd(
            "steer",
            "no-such-model",
            "ev.jsonl",
            "--direction",
            "d.safetensors",
            "--multipliers",
            "0,x",
            cwd=tmp_path,
        )
    )
    assert "--multipliers: cannot read 'x' as float" in line
    line = one_line_error(
        mechbd("capture", "no-such-model", "p.jsonl", "--out", "o", "--sites", ",", cwd=tmp_path)
    )
    assert "--sites: empty list" in line
