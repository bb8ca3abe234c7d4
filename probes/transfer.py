"""Cross-trigger transfer: train a probe on each store, test it on every store.

    python probes/transfer.py NAME=STORE NAME=STORE ...

Each probe is a logistic probe trained on its store's train split; the matrix holds the AUROC at
the training store's best layer on each store's test split (triggered vs clean).
"""

import sys

from mechbd.capture import ActivationStore
from mechbd.probes.experiments import transfer_matrix, trigger_probe_report

if __name__ == "__main__":
    if len(sys.argv) < 2 or any("=" not in a for a in sys.argv[1:]):
        sys.exit(__doc__)
    stores = {k: ActivationStore(v) for k, v in (a.split("=", 1) for a in sys.argv[1:])}
    probes, best = {}, {}
    for name, st in stores.items():
        rep, fitted = trigger_probe_report(st, n_random=10)
        probes[name], best[name] = fitted["logistic"], rep["best_layer"]
    m = transfer_matrix(probes, stores, best)
    print("train \\ test " + " ".join(f"{b:>10s}" for b in stores))
    for a, row in m.items():
        print(f"{a:12s} " + " ".join(f"{row[b]:10.3f}" for b in stores))
