from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mechbd.config import RunConfig, load_config
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


def test_configs_are_frozen():
    cfg = RunConfig()
    with pytest.raises(ValidationError):
        cfg.seed = 3  # type: ignore[misc]


def test_organism_yaml_is_the_demo_config():
    # `mechbd demo` must be `mechbd run configs/organism.yaml`.
    assert load_config(REPO / "configs" / "organism.yaml") == RunConfig(name="demo")
