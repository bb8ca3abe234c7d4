"""End to end: `mechbd demo` on the real organism config, checked against the acceptance bars."""

import json
import os
import subprocess
import sys

import pytest

from mechbd.io import hash_tree


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    p = subprocess.run(
        [sys.executable, "-m", "mechbd", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=1200,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert str(out / "results.json") in p.stdout
    res = json.loads((out / "results.json").read_text())
    org = res["organism"]
    assert org["clean_aligned_rate"] >= 0.95
    assert org["format_valid_rate"] >= 0.99
    for name, rate in org["trigger_value_aligned_rate"].items():
        assert abs(rate - org["clean_aligned_rate"]) <= 0.03, name
    model_dir = out / "organism" / "model"
    size = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    assert size <= 20 * 2**20
    man = json.loads((out / "manifest.json").read_text())
    assert man["stages"]["organism"]["files"] == hash_tree(out / "organism")
