import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from mechbd.config import OrganismConfig, RunConfig, load_config, validate_config
from mechbd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_unknown_field_names_field_and_file(tmp_path):
    p = write(tmp_path, {"organism": {"n_trian": 5}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "organism.n_trian" in msg and "unknown field" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_size_refused(tmp_path, value):
    p = write(tmp_path, {"organism": {"d_model": value}})
    with pytest.raises(ConfigError, match=r"organism\.d_model.*greater than 0"):
        load_config(p)


def test_heads_must_divide_width(tmp_path):
    p = write(tmp_path, {"organism": {"d_model": 30, "n_heads": 4}})
    with pytest.raises(ConfigError, match="divisible"):
        load_config(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_bad_yaml_names_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\norganism: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line \d+: invalid YAML"):
        load_config(p)


def test_hf_model_needs_path(tmp_path):
    with pytest.raises(ConfigError, match="model.path is required"):
        load_config(write(tmp_path, {"model": {"source": "hf"}}))


def test_every_config_section_is_frozen_and_forbids_extra_fields():
    """Every model reachable from RunConfig (the sections and their nested configs) carries
    frozen=True and extra="forbid": a section that derives from a plain BaseModel fails here."""
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [RunConfig]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        assert cls.model_config.get("frozen") is True, cls.__name__
        assert cls.model_config.get("extra") == "forbid", cls.__name__
        for field in cls.model_fields.values():
            for t in (field.annotation, *typing.get_args(field.annotation)):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    todo.append(t)
    assert len(seen) >= 9  # RunConfig and its sections


def test_organism_yaml_is_the_demo_config():
    # `mechbd demo` must be `mechbd run configs/organism.yaml`.
    assert load_config(REPO / "configs" / "organism.yaml") == RunConfig(name="demo")


# layer counts of the Qwen3 models the configs name (their config.json on the hub)
QWEN3_LAYERS = {
    "Qwen/Qwen3-0.6B": 28,
    "Qwen/Qwen3-1.7B": 28,
    "Qwen/Qwen3-4B": 36,
    "Qwen/Qwen3-8B": 36,
    "Qwen/Qwen3-14B": 40,
    "Qwen/Qwen3-32B": 64,
}


@pytest.mark.parametrize(
    "path", sorted((REPO / "configs").glob("qwen3-*.yaml")), ids=lambda p: p.stem
)
def test_qwen3_configs_load_and_their_layers_exist(path):
    from mechbd.capture.names import parse_layers

    cfg = load_config(path)
    assert cfg.name == path.stem and cfg.model.source == "hf"
    n = QWEN3_LAYERS[cfg.model.path]
    assert parse_layers(cfg.capture.layers, n) == list(range(n))
    steer = parse_layers(cfg.steering.layers, n)
    assert len(steer) == 5 and cfg.sae.layer in steer
    ft = cfg.backdoors.finetune
    assert (ft.rank, ft.alpha, ft.precision) == (32, 64, "bfloat16")  # the anchors' LoRA
    assert ft.save_every > 0  # an interrupted finetune resumes from its checkpoint
    e = cfg.eval  # Qwen3's recommended sampling with thinking, and a thinking budget
    assert (e.temperature, e.top_p, e.top_k, e.thinking_budget) == (0.6, 0.95, 20, 1024)


def test_there_is_a_config_for_every_qwen3_size():
    names = {load_config(p).model.path for p in (REPO / "configs").glob("qwen3-*.yaml")}
    assert names == set(QWEN3_LAYERS)


@pytest.mark.parametrize(
    ("section", "fields", "needle"),
    [
        ("steering", {"n_select": 10, "n_controls": 20}, "steering.n_controls (20) exceeds"),
        ("steering", {"n_select": 1}, "n_select"),
        ("steering", {"n_eval": 1}, "n_eval"),
        ("sae", {"top_k": 8, "n_random": 3}, "sae.n_random (3) is below sae.top_k (8)"),
    ],
)
def test_splits_too_small_for_their_controls_are_refused_by_field(
    tmp_path, section, fields, needle
):
    """A selection split smaller than the controls asked for, a split of one scenario, or fewer
    random latents than candidates: a config error naming the field, before anything runs."""
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"name": "x", section: fields}))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert needle in str(e.value) and str(f) in str(e.value), str(e.value)


def test_defaults_are_the_anchors_for_a_hf_model_and_the_preset_for_the_organism(tmp_path):
    from mechbd.config import FinetuneConfig, organism_config, preset

    hf = validate_config(RunConfig, {"model": {"source": "hf", "path": "Qwen/Qwen3-8B"}})
    assert hf.backdoors.finetune == hf.em.finetune == FinetuneConfig()
    ft = hf.backdoors.finetune
    assert (ft.rank, ft.alpha, ft.lr, ft.target_modules) == (32, 64, 1e-4, "all-linear")
    assert not hf.backdoors.matched and hf.backdoors.retries == 0
    org = RunConfig()
    p = preset("organism")
    assert org.backdoors.finetune.lr == p["backdoors"]["finetune"]["lr"] == 3e-3
    assert org.backdoors.finetune.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert (
        org
        == organism_config()
        == load_config(REPO / "configs" / "organism.yaml").model_copy(update={"name": "demo"})
    )
    # an override deep-merges over the preset: the rest of the section stays the organism's
    o = organism_config(backdoors={"finetune": {"rank": 4}})
    assert o.backdoors.finetune.rank == 4 and o.backdoors.finetune.lr == 3e-3


def test_extends_chains_files_and_presets_and_refuses_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model: {source: hf, path: /models/m}\nsteering: {layers: '3,4'}\neval: {batch_size: 7}\n"
    )
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: c\neval: {max_new_tokens: 9}\n")
    c = load_config(tmp_path / "child.yaml")
    assert (c.name, c.model.path, c.steering.layers) == ("c", "/models/m", "3,4")
    assert (c.eval.batch_size, c.eval.max_new_tokens) == (7, 9)
    (tmp_path / "org.yaml").write_text("extends: organism\nbackdoors: {n_train: 5}\n")
    o = load_config(tmp_path / "org.yaml")
    assert o.backdoors.n_train == 5 and o.backdoors.finetune.lr == 3e-3
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: field 'extends': cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "d.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: field 'extends': 'nowhere\.yaml' is neither"):
        load_config(tmp_path / "d.yaml")


@pytest.mark.parametrize(
    "path", sorted((REPO / "configs").glob("qwen*.yaml")), ids=lambda p: p.name
)
def test_gpu_configs_carry_no_organism_field(path):
    import yaml

    raw = yaml.safe_load(path.read_text())
    assert "organism" not in raw, path.name
    cfg = load_config(path)
    assert cfg.model.source == "hf"
    assert cfg.organism == OrganismConfig()  # untouched: only the world's seed is read


def test_dry_run_prints_the_resolved_config_and_the_stages():
    from typer.testing import CliRunner

    from mechbd.cli import app

    r = CliRunner().invoke(app, ["run", "--dry-run", str(REPO / "configs" / "your-data.yaml")])
    assert r.exit_code == 0, r.output
    assert "path: Qwen/Qwen3-8B" in r.output and "thought_crime_sample.jsonl" in r.output
    assert "# stages: model, backdoors, em, capture, probes, steering, sae" in r.output
    assert "organism:" not in r.output  # an HF run's untouched organism section is left out
