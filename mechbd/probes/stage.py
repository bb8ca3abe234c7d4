"""The ``probes`` pipeline stage: for each trigger's stores (``capture/<trigger>``), the
triggered-vs-clean probes with their controls, the generic contrast-pair probes (contrast
prompts captured from the backdoored model here) and the cross-trigger transfer matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechbd.capture.capture import capture
from mechbd.capture.store import ActivationStore
from mechbd.io import write_json
from mechbd.layout import RESULTS, STORE_MANIFEST
from mechbd.models import load_finetuned
from mechbd.probes.core import Probe
from mechbd.probes.experiments import (
    generic_probe_report,
    generic_rows,
    transfer_matrix,
    trigger_probe_report,
)
from mechbd.runs import Run


def probes_stage(run: Run, out: Path) -> None:
    results: dict[str, Any] = {}
    probes: dict[str, Probe] = {}
    stores: dict[str, ActivationStore] = {}
    for t in run.layout.captured():
        st = ActivationStore(run.layout.store(t, "backdoored"))
        base_st = ActivationStore(run.layout.store(t, "base"))
        cal_dir = run.layout.store(t, "calibration")
        cal = ActivationStore(cal_dir) if (cal_dir / STORE_MANIFEST).is_file() else None
        rep, fitted = trigger_probe_report(st, base_st, save_dir=out / t, calibration=cal)
        model, tok = load_finetuned(run, run.layout.adapter(t))
        contrast = capture(
            model,
            tok,
            generic_rows(),
            out / t / "generic_contrast",
            layers=st.layers,
            positions=("response_mean",),
            progress=False,
        )
        assert contrast is not None
        rep["generic"] = generic_probe_report(st, contrast)
        results[t] = rep
        probes[t] = fitted[rep["method"]]
        stores[t] = st
    if probes:
        best = {t: results[t]["best_layer"] for t in probes}
        results["transfer"] = transfer_matrix(probes, stores, best)
    write_json(out / RESULTS, {"probes": results})
