import json

import pytest

from mechbd.config import RunConfig
from mechbd.errors import RunFolderError
from mechbd.runs import Run

# stage sections that the results schema accepts
MODEL = {"model": {"name": "m", "architecture": "Qwen3ForCausalLM", "n_params": 1, "note": "n"}}
ORGANISM = {
    "organism": {
        "clean_aligned_rate": 1.0,
        "clean_aligned_rate_n": 1,
        "clean_aligned_rate_ci95": [0.2065, 1.0],
        "format_valid_rate": 1.0,
        "format_valid_rate_n": 1,
        "format_valid_rate_ci95": [0.2065, 1.0],
        "letter_bias": 1.0,
        "n_test": 1,
    }
}


def test_stage_records_hashes_and_results(tmp_path):
    run = Run.open(tmp_path / "r", RunConfig(name="r"))
    with run.stage("alpha") as d:
        (d / "results.json").write_text(json.dumps(MODEL))
        (d / "data.txt").write_text("hello")
    assert run.is_done("alpha")
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["stages"]["alpha"]["status"] == "done"
    assert set(m["stages"]["alpha"]["files"]) == {"results.json", "data.txt"}
    assert m["seeds"] == {"run": 0, "organism": 0}
    assert m["libraries"]["torch"]
    assert json.loads((tmp_path / "r" / "results.json").read_text()) == MODEL
    # tampering with a stage's output makes it not-done again
    (tmp_path / "r" / "alpha" / "data.txt").write_text("changed")
    assert not Run.open(tmp_path / "r", RunConfig(name="r")).is_done("alpha")


def test_crashed_stage_leaves_nothing_that_looks_finished_and_resumes(tmp_path):
    run = Run.open(tmp_path / "r", RunConfig(name="r"))
    with pytest.raises(RuntimeError), run.stage("beta") as d:
        (d / "part1.txt").write_text("finished before the crash")
        raise RuntimeError("boom")
    assert not (tmp_path / "r" / "beta").exists()
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["stages"]["beta"]["status"] == "failed" and "boom" in m["stages"]["beta"]["error"]
    assert not run.is_done("beta")
    # the rerun resumes in the kept partial folder and finishes the stage
    again = Run.open(tmp_path / "r", RunConfig(name="r"))
    with again.stage("beta") as d:
        assert (d / "part1.txt").read_text() == "finished before the crash"
        assert again.final_path(d / "x" / "y") == str(tmp_path / "r" / "beta" / "x" / "y")
        (d / "results.json").write_text(json.dumps(ORGANISM))
    assert again.is_done("beta") and not (tmp_path / "r" / ".beta.partial").exists()
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["stages"]["beta"]["resumed"] is True
    assert set(m["stages"]["beta"]["files"]) == {"part1.txt", "results.json"}


def test_existing_run_with_other_config_needs_force(tmp_path):
    Run.open(tmp_path / "r", RunConfig(name="r"))
    (tmp_path / "r" / "keep.txt").write_text("precious")
    Run.open(tmp_path / "r", RunConfig(name="r"))  # same config: resume, nothing removed
    assert (tmp_path / "r" / "keep.txt").exists()
    with pytest.raises(RunFolderError, match="different config.*--force"):
        Run.open(tmp_path / "r", RunConfig(name="r", seed=1))
    assert (tmp_path / "r" / "keep.txt").read_text() == "precious"
    Run.open(tmp_path / "r", RunConfig(name="r", seed=1), force=True)
    assert not (tmp_path / "r" / "keep.txt").exists()


def test_folder_with_foreign_files_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(RunFolderError, match="not a mechbd run"):
        Run.open(tmp_path / "mine", RunConfig())


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunFolderError, match="cannot write"):
        Run.open(blocker / "run", RunConfig())
