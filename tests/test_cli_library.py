"""The library functions the CLI calls for its option parsing, config files, process group and
steering directions (fast: no model, no subprocess except the import-time check)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mechbd.config import (
    FinetuneConfig,
    OrganismConfig,
    load_finetune_config,
    load_organism_config,
    parse_list,
)
from mechbd.distributed import init_distributed, is_main_process
from mechbd.errors import ConfigError, MechbdError


def test_parse_list_strips_drops_empties_and_converts():
    assert parse_list(" resid_post, mlp_out ,", "--sites") == ["resid_post", "mlp_out"]
    assert parse_list("0,1,2.5,-4", "--multipliers", float) == [0.0, 1.0, 2.5, -4.0]


@pytest.mark.parametrize(
    "spec, item, match",
    [
        ("0,x,2", float, r"--multipliers: cannot read 'x' as float"),
        ("1;2", int, r"--multipliers: cannot read '1;2' as int"),
        (" , ", str, r"--multipliers: empty list"),
        ("", float, r"--multipliers: empty list"),
    ],
)
def test_parse_list_bad_input_names_the_option_and_item(spec, item, match):
    with pytest.raises(ConfigError, match=match):
        parse_list(spec, "--multipliers", item)


def write(tmp_path: Path, data: object, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_organism_config_from_fields_or_a_run_config(tmp_path):
    assert load_organism_config(None) == OrganismConfig()
    fields = load_organism_config(write(tmp_path, {"seed": 3, "d_model": 64}))
    assert fields == OrganismConfig(seed=3, d_model=64)
    run = write(tmp_path, {"name": "r", "organism": {"seed": 4}}, "run.yaml")
    assert load_organism_config(run) == OrganismConfig(seed=4)


def test_organism_config_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: field 'n_layerz': unknown field"):
        load_organism_config(write(tmp_path, {"n_layerz": 2}))
    with pytest.raises(ConfigError, match=r"run\.yaml: field 'organism\.d_model'"):
        load_organism_config(write(tmp_path, {"name": "r", "organism": {"d_model": 0}}, "run.yaml"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_organism_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("seed: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+: invalid YAML"):
        load_organism_config(tmp_path / "bad.yaml")


def test_finetune_config(tmp_path):
    assert load_finetune_config(None) == FinetuneConfig()
    assert load_finetune_config(write(tmp_path, {"rank": 2})) == FinetuneConfig(rank=2)
    with pytest.raises(ConfigError, match=r"c\.yaml: field 'rnak': unknown field"):
        load_finetune_config(write(tmp_path, {"rnak": 2}))


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert init_distributed(None) is None
    assert init_distributed("cuda:1") == "cuda:1"
    assert not torch.distributed.is_initialized()
    assert is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()


def _hand_store(path: Path, X: dict[int, torch.Tensor], labels: list[str]):
    """A store written directly (no model): ``X[layer]`` is ``[rows, d]`` at position 'last'."""
    from mechbd.capture.prompts import PromptRow
    from mechbd.capture.store import ActivationStore, StoreWriter

    rows = [PromptRow(f"r{i}", lab, [1, 2], 2) for i, lab in enumerate(labels)]
    spec = {
        "model": {"name": "hand"},
        "layers": sorted(X),
        "sites": ["resid_post"],
        "positions": ["last"],
        "dtype": "float32",
        "d_model": next(iter(X.values())).shape[1],
        "shard_rows": len(rows),
        "enable_thinking": False,
    }
    w = StoreWriter(path, spec, rows)
    w.write_chunk(0, {layer: {"resid_post.last": x} for layer, x in X.items()})
    w.finish()
    return ActivationStore(path)


def test_build_directions_from_files_probes_and_a_store(tmp_path):
    from mechbd.probes import Probe
    from mechbd.steering.directions import Direction, build_directions, check_layers

    g = torch.Generator().manual_seed(0)
    saved = Direction({0: torch.randn(4, generator=g), 1: torch.randn(4, generator=g)})
    saved.save(tmp_path / "mine.safetensors")
    w = torch.randn(2, 4, generator=g, dtype=torch.float64).float()
    Probe("diffmean", [0, 1], w, torch.zeros(2)).save(tmp_path / "pr.safetensors")
    X = {0: torch.randn(6, 4, generator=g), 1: torch.randn(6, 4, generator=g)}
    labels = ["a", "b", "c", "c", "a", "c"]
    _hand_store(tmp_path / "st", X, labels)

    dirs = build_directions(
        [tmp_path / "mine.safetensors"],
        [tmp_path / "pr.safetensors"],
        mean_diff_store=tmp_path / "st",
        positive=["a", "b"],
        negative=["c"],
    )
    assert list(dirs) == ["mine", "pr", "mean_diff", "random(mine)", "random(pr)"] + [
        "random(mean_diff)"
    ]
    assert torch.equal(dirs["mine"].at(1), saved.at(1))
    torch.testing.assert_close(dirs["pr"].at(0).double(), w[0].double() / w[0].double().norm())
    for layer, x in X.items():  # float64 recomputation of mean(a, b rows) - mean(c rows)
        ref = x.double()[[0, 1, 4]].mean(0) - x.double()[[2, 3, 5]].mean(0)
        torch.testing.assert_close(dirs["mean_diff"].at(layer).double(), ref, atol=1e-6, rtol=0)
        rnd, d = dirs["random(mean_diff)"].at(layer), dirs["mean_diff"].at(layer)
        assert float(rnd.norm()) == pytest.approx(float(d.norm()), rel=1e-5)
    assert list(build_directions([tmp_path / "mine.safetensors"], control=False)) == ["mine"]

    check_layers(dirs, [0, 1])
    only0 = {"only0": Direction({0: torch.ones(4)})}
    with pytest.raises(MechbdError, match=r"direction 'only0' has no vector at layers \[1, 2\]"):
        check_layers(only0, [0, 1, 2])
    with pytest.raises(MechbdError, match="no steering direction"):
        build_directions()
    with pytest.raises(MechbdError, match="mean difference needs rows on both sides"):
        build_directions(mean_diff_store=tmp_path / "st", positive=["zzz"], negative=["c"])


def test_cli_import_stays_light():
    """``mechbd --help`` imports the command modules only: no torch, no transformers."""
    code = (
        "import sys, mechbd.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'}))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]", p.stdout
