"""Data-parallel capture under torchrun (gloo, CPU processes): the store equals a single-process
capture byte for byte, also when the world size does not divide the chunks evenly, and a rerun
with another world size resumes without duplicating anything."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mechbd.capture import ActivationStore
from mechbd.io import write_jsonl
from tests.test_capture import prompt_rows


def run_capture(model: Path, prompts: Path, out: Path, nproc: int) -> list[int]:
    """Run ``mechbd capture`` (under torchrun when ``nproc`` > 1); return the number of prompts
    each process reports it captured."""
    launch = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    cmd = [
        *launch,
        "-m",
        "mechbd",
        "capture",
        str(model),
        str(prompts),
        "--out",
        str(out),
        "--shard-rows",
        "4",
        "--batch-size",
        "3",
        "--positions",
        "last,trigger_mean,tokens",
        "--layers",
        "all",
    ]
    env = os.environ.copy() | {"OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return [int(m) for m in re.findall(r"captured (\d+) prompts", p.stdout + p.stderr)]


def tree(store: Path) -> dict[str, bytes]:
    """Every file of the store except the manifest's model path, by relative path."""
    out = {}
    for f in sorted(store.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if f.name == "manifest.json":
                man = json.loads(data)
                man["model"].pop("path", None)
                data = json.dumps(man, sort_keys=True).encode()
            out[str(f.relative_to(store))] = data
    return out


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [2, 3])
def test_torchrun_capture_equals_single_process(tiny_organism, tmp_path, nproc):
    rows = prompt_rows(4)  # 16 rows -> 4 chunks of 4: uneven over 3 ranks
    rows = rows[:13]  # and a short last chunk
    write_jsonl(tmp_path / "p.jsonl", rows)
    assert run_capture(tiny_organism, tmp_path / "p.jsonl", tmp_path / "single", 1) == [13]
    per_rank = run_capture(tiny_organism, tmp_path / "p.jsonl", tmp_path / "dp", nproc)
    # chunks of 4, 4, 4, 1 rows round-robin over the ranks: each wrote only its own
    assert sorted(per_rank) == sorted({2: [8, 5], 3: [5, 4, 4]}[nproc])
    single, dp = tree(tmp_path / "single"), tree(tmp_path / "dp")
    assert sorted(single) == sorted(dp)
    assert [k for k in single if single[k] != dp[k]] == []
    st = ActivationStore(tmp_path / "dp")
    st.verify()
    assert len(st) == 13 and st.n_chunks == 4


@pytest.mark.slow
def test_torchrun_resumes_a_partial_store_without_duplicates(tiny_organism, tmp_path):
    rows = prompt_rows(4)[:13]
    write_jsonl(tmp_path / "p.jsonl", rows)
    run_capture(tiny_organism, tmp_path / "p.jsonl", tmp_path / "single", 1)
    # a crashed run: chunks 1 and 3 never landed, chunk 2 was half-written
    part = tmp_path / "dp"
    shutil.copytree(tmp_path / "single", part)
    man = json.loads((part / "manifest.json").read_text())
    (part / "manifest.json").write_text(json.dumps(man | {"complete": False}))
    shutil.rmtree(part / "chunks" / "00001")
    shutil.rmtree(part / "chunks" / "00003")
    (part / "chunks" / "00002").rename(part / "chunks" / ".00002.tmp")
    assert sorted(run_capture(tiny_organism, tmp_path / "p.jsonl", part, 2)) == [4, 5]
    assert tree(tmp_path / "single") == tree(part)
    assert not list((part / "chunks").glob(".*"))
