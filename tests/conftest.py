from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mechbd.config import OrganismConfig

torch.set_num_threads(min(2, os.cpu_count() or 1))

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
)


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


def random_llama(tok, seed: int = 0):
    """A tiny random-init Llama (the second architecture) sized for ``tok``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg).eval()
