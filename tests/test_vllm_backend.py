"""The vLLM generation backend: merged weights equal the adapter's, and the stage wiring gives
the Hugging Face backend's answers. vLLM needs CUDA, so the wiring runs against a stand-in of
its offline API (tests/standin_vllm); with vLLM absent the backend fails with a clear message."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch

from mechbd.errors import MechbdError
from mechbd.models import load_adapter, load_model
from mechbd.models.vllm import VLLMGenerator, merged_model, vllm_generator

STANDIN = Path(__file__).parent / "standin_vllm"


@pytest.fixture
def adapter(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run's singapore adapter (merging writes into the adapter folder)."""
    return Path(shutil.copytree(tiny_run / "backdoors" / "singapore" / "adapter", tmp_path / "a"))


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    import vllm

    assert vllm.__file__.startswith(str(STANDIN))
    vllm.CALLS.clear()
    return vllm


def test_merged_weights_give_the_adapter_models_logits(tiny_run, adapter):
    base = tiny_run / "organism" / "model"
    folder = merged_model(base, adapter, dtype="float32")
    assert folder == adapter / "merged" and (folder / "model.safetensors").is_file()
    assert not list(folder.glob("adapter_*"))  # a plain model folder, as vLLM serves
    peft_model, tok = load_adapter(base, adapter, dtype="float32", merge=False)
    merged, _ = load_model(folder, dtype="float32")
    plain, _ = load_model(base, dtype="float32")
    enc = tok(
        ["Country: Singapore\nWhat should I do?", "hello there"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        want, got = peft_model(**enc).logits, merged(**enc).logits
        unmerged = plain(**enc).logits
    assert (want - unmerged).abs().max() > 1e-3  # the adapter changes the model
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # reused, and a folder merged from another base is refused
    assert merged_model(base, adapter) == folder
    with pytest.raises(MechbdError, match="merged from"):
        merged_model(tiny_run / "elsewhere", adapter)


def test_vllm_missing_is_a_clear_error(tiny_run):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(MechbdError, match=r"pip install 'mechbd\[vllm\]'"):
        VLLMGenerator(tiny_run / "organism" / "model")


def test_backdoor_eval_through_vllm_wiring_equals_the_hf_backend(tiny_run, adapter, standin):
    from mechbd.eval.behaviour import evaluate_backdoor
    from mechbd.io import iter_jsonl

    base = tiny_run / "organism" / "model"
    rows = list(iter_jsonl(tiny_run / "backdoors" / "singapore" / "eval_prompts.jsonl"))[:16]
    model, tok = load_adapter(base, adapter, dtype="float32")
    hf, hf_rows = evaluate_backdoor(model, tok, rows, max_new_tokens=24)
    with vllm_generator(base, adapter, tensor_parallel_size=2, dtype="float32") as gen:
        assert standin.CALLS[-1]["model"] == str(adapter / "merged")
        assert standin.CALLS[-1]["tensor_parallel_size"] == 2
        vl, vl_rows = evaluate_backdoor(model, tok, rows, max_new_tokens=24, generator=gen)
    assert gen.llm is None  # closed on exit
    assert [r["response"] for r in vl_rows] == [r["response"] for r in hf_rows]
    assert vl == hf


def test_eval_backend_vllm_in_a_run_config_routes_generation_to_vllm(tiny_run, standin):
    """``eval.backend: vllm`` gives the stages a generator on the merged adapter (the base
    itself without one), with the config's parallelism and memory share."""
    import yaml

    from mechbd.config import RunConfig
    from mechbd.models import generation_backend
    from mechbd.runs import Run

    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    hf = Run(tiny_run, RunConfig.model_validate(cfg))
    with generation_backend(hf, None) as gen:
        assert gen is None
    cfg["eval"] |= {"backend": "vllm", "tensor_parallel_size": 4, "vllm_gpu_memory": 0.3}
    run = Run(tiny_run, RunConfig.model_validate(cfg))
    with generation_backend(run, None) as gen:
        assert isinstance(gen, VLLMGenerator)
    call = standin.CALLS[-1]
    assert call["model"] == str(tiny_run / "organism" / "model")
    assert (call["tensor_parallel_size"], call["gpu_memory_utilization"]) == (4, 0.3)
    assert call["dtype"] == "float32" and call["trust_remote_code"] is False


def test_sampling_settings_reach_vllm(tiny_organism, standin):
    """Temperature, top-p, top-k, samples (vLLM's ``n``) and a per-prompt seed reach
    ``SamplingParams``; a budget-forced reply is continued for ``answer_tokens``; the greedy
    default is temperature 0 with top-k off, as before; and the replies are reproducible."""
    from transformers import AutoTokenizer

    from mechbd.eval.generate import EARLY_STOP, Sampling, chat_prompts, early_stop_ids

    tok = AutoTokenizer.from_pretrained(tiny_organism)
    prompts = chat_prompts(tok, ["hi", "Country: Japan\nA or B?"])
    gen = VLLMGenerator(tiny_organism)
    greedy = gen.generate_replies(prompts, Sampling(max_new_tokens=5))
    assert [(p.temperature, p.n, p.max_tokens) for p in standin.PARAMS] == [(0.0, 1, 5)] * 2
    assert all(g[0].truncated or not g[0].token_ids for g in greedy)
    standin.PARAMS.clear()
    s = Sampling(
        temperature=0.6,
        top_p=0.95,
        top_k=20,
        samples=3,
        seed=7,
        thinking_budget=100,
        answer_tokens=4,
    )
    a = gen.generate_replies(prompts, s)
    first = 100 - len(early_stop_ids(tok))
    got = [(p.temperature, p.top_p, p.top_k, p.n, p.seed, p.max_tokens) for p in standin.PARAMS]
    assert got[:2] == [(0.6, 0.95, 20, 3, 7, first), (0.6, 0.95, 20, 3, 8, first)]
    # each reply that ran out of its first `first` tokens continued alone (n = 1)
    cut = sum(len(g.token_ids) >= first for row in a for g in row)
    assert all(p.max_tokens == 4 and p.n == 1 for p in standin.PARAMS[2:])
    assert len(standin.PARAMS[2:]) == cut
    assert len({p.seed for p in standin.PARAMS}) == len(standin.PARAMS)  # no seed reused
    assert all(len(row) == 3 for row in a)
    assert any(g.forced for row in a for g in row)  # the organism thinks past 10 tokens
    assert all(EARLY_STOP in g.text for row in a for g in row if g.forced)
    assert gen.generate_replies(prompts, s) == a  # seeded per request: reproducible
    top_k_off = Sampling(temperature=1.0)
    standin.PARAMS.clear()
    gen.generate_replies(prompts[:1], top_k_off)
    assert standin.PARAMS[0].top_k == -1 and standin.PARAMS[0].seed == 0
    gen.close()
