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
