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
import torch

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


REPO = Path(__file__).resolve().parents[1]


def _finetune(
    launch: list[str], base: Path, data: Path, out: Path, cfg: dict, prog: list[str] | None = None
) -> tuple[dict, str]:
    """Run ``mechbd finetune`` (or ``prog``, a driver taking the same arguments) under
    ``launch``; return its ``finetune.json`` and its output."""
    import yaml

    (out.parent / f"{out.name}.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [*launch, *(prog or ["-m", "mechbd"]), "finetune", str(base), str(data)]
    cmd += ["--out", str(out), "--config", str(out.parent / f"{out.name}.yaml")]
    env = os.environ.copy() | {"OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((out / "finetune.json").read_text()), p.stdout + p.stderr


ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
LAUNCHES = {
    # DDP: without a GPU, --multi_gpu gives 2 CPU processes over gloo
    "ddp": [
        *ACCELERATE,
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--multi_gpu",
    ],
    # FSDP2 from the documented config, on CPU processes through the tests' driver
    "fsdp": [*ACCELERATE, "--config_file", str(REPO / "configs" / "accelerate" / "fsdp.yaml")],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "loss_mean"), [("ddp", "token"), ("fsdp", "token"), ("ddp", "row")]
)
def test_accelerate_two_process_finetune_equals_one_process_with_the_whole_batch(
    tiny_organism, tmp_path, mode, loss_mean
):
    """`accelerate launch --num_processes 2` (DDP over gloo on the CPU, or FSDP2 from
    configs/accelerate/fsdp.yaml, every parameter sharded) with batch_size 2 per process trains
    the same adapter as one process with batch_size 4: same data order, and each rank's loss is
    weighted by its share of the target tokens (with ``loss_mean: row``, of the rows). 5
    examples and batch 4 leave one row for the last micro-batch of each epoch: rank 1 joins it
    with a zero-weight pass."""
    from safetensors.torch import load_file

    from mechbd.data.builders import backdoor_set
    from mechbd.data.triggers import resolve_trigger
    from mechbd.organism.items import organism_items

    ds = backdoor_set(organism_items(5, held_out=False, seed=3), resolve_trigger("singapore"))
    assert len(ds) == 5
    write_jsonl(tmp_path / "train.jsonl", ds)
    common = dict(rank=2, alpha=4, lr=0.01, epochs=2.0, warmup_steps=1, lr_schedule="constant")
    common["loss_mean"] = loss_mean
    one, _ = _finetune(
        [sys.executable],
        tiny_organism,
        tmp_path / "train.jsonl",
        tmp_path / "one",
        {**common, "batch_size": 4},
    )
    prog = [str(REPO / "tests" / "fsdp_on_cpu.py")] if mode == "fsdp" else None
    two, log = _finetune(
        LAUNCHES[mode],
        tiny_organism,
        tmp_path / "train.jsonl",
        tmp_path / "two",
        {**common, "batch_size": 2},
        prog,
    )
    assert two["world_size"] == 2 and "world_size" not in one
    assert two["distributed"] == {"ddp": "MULTI_CPU", "fsdp": "FSDP"}[mode]
    if mode == "fsdp":
        sharded = re.findall(r"rank (\d): (\d+) of (\d+) parameters sharded", log)
        assert sorted(r for r, _, _ in sharded) == ["0", "1"]
        assert all(n == total and int(n) > 0 for _, n, total in sharded)
    assert two["steps"] == one["steps"] == 4 and two["tokens"] == one["tokens"]
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
    a = load_file(tmp_path / "one" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)  # it trained
