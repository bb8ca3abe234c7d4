"""``mechbd sae train|diff|compare|detect``: SAEs with SAELens."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mechbd.cli._common import out
from mechbd.config import parse_list
from mechbd.errors import MechbdError

app = typer.Typer(
    no_args_is_help=True, help="SAEs with SAELens: train, model diffing, compare, detect."
)

SaeArg = Annotated[str, typer.Argument(help="SAE folder or SAELens release")]
SaeIdOpt = Annotated[str | None, typer.Option(help="SAE id within a release")]


@app.command("train")
def sae_train(
    stores: Annotated[list[Path], typer.Argument(help="stores captured with position 'tokens'")],
    layer: Annotated[int, typer.Option(help="layer to train on")],
    out_dir: Annotated[Path, typer.Option("--out", help="output folder (SAELens format)")],
    architecture: Annotated[str, typer.Option(help="topk or standard")] = "topk",
    expansion: Annotated[int, typer.Option(help="d_sae / d_model")] = 8,
    k: Annotated[int, typer.Option(help="active latents per token (topk)")] = 16,
    l1_coefficient: Annotated[float, typer.Option(help="sparsity penalty (standard)")] = 5.0,
    lr: float = 3e-4,
    n_tokens: Annotated[int, typer.Option(help="training samples drawn")] = 2_000_000,
    batch_size: int = 1024,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
) -> None:
    """Train an SAE with SAELens on per-token activations of LAYER from one or more stores;
    print FVU, L0 and the dead fraction on held-out tokens."""
    import torch

    from mechbd.capture.store import ActivationStore
    from mechbd.sae.train import store_tokens, train_sae

    sts = [ActivationStore(p) for p in stores]
    x = torch.cat([store_tokens(st, layer) for st in sts])
    _, m = train_sae(
        x,
        out_dir,
        layer=layer,
        architecture=architecture,
        expansion=expansion,
        k=k,
        l1_coefficient=l1_coefficient,
        lr=lr,
        n_tokens=n_tokens,
        batch_size=batch_size,
        seed=seed,
        device=device,
        model_name=str(sts[0].model.get("name")),
        progress=True,
    )
    out.print(
        f"SAE saved to {out_dir}: FVU {m['fvu']:.4f}, L0 {m['l0']:.1f}, "
        f"dead {m['dead_fraction']:.1%} on {m['n_tokens']} held-out tokens"
    )


@app.command("diff")
def sae_diff(
    sae: SaeArg,
    base_store: Annotated[Path, typer.Argument(help="store of the base model")],
    finetuned_store: Annotated[Path, typer.Argument(help="store of the finetuned model")],
    sae_id: SaeIdOpt = None,
    position: str = "last",
    top_k: int = 10,
    out_file: Annotated[Path | None, typer.Option("--out", help="write JSON")] = None,
) -> None:
    """Model diffing: latents ranked by mean activation increase from BASE to FINETUNED on the
    same prompts (the stores must hold the same prompts)."""
    from mechbd.capture.store import ActivationStore
    from mechbd.io import write_json
    from mechbd.sae.analysis import model_diff
    from mechbd.sae.load import load_sae

    b, f = ActivationStore(base_store), ActivationStore(finetuned_store)
    model, layer = load_sae(sae, sae_id, d_model=b.d_model)
    d = model_diff(model, b, f, layer, position=position, top_k=top_k)
    _print_diff(d, f"model diffing at layer {layer} ({position}), {d['n_prompts']} prompts")
    if out_file:
        write_json(out_file, d)


def _print_diff(d: dict[str, Any], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for c in ("latent", "increase", "base mean", "finetuned mean", "base freq", "ft freq"):
        table.add_column(c)
    for j, i in enumerate(d["latents"]):
        table.add_row(
            str(i),
            *(
                f"{d[k][j]:.3f}"
                for k in ("increase", "base_mean", "finetuned_mean", "base_freq", "finetuned_freq")
            ),
        )
    out.print(table)


@app.command("compare")
def sae_compare(
    sae: SaeArg,
    sae_id: SaeIdOpt = None,
    probe: Annotated[list[Path] | None, typer.Option(help="probe .safetensors; repeatable")] = None,
    direction: Annotated[
        list[Path] | None, typer.Option(help="saved direction .safetensors; repeatable")
    ] = None,
    top_k: int = 5,
) -> None:
    """Cosine of probe and saved directions (at the SAE's layer) with every decoder row."""
    from mechbd.probes import Probe
    from mechbd.sae.analysis import top_cosines
    from mechbd.sae.load import load_sae
    from mechbd.steering.directions import Direction, from_probe

    model, layer = load_sae(sae, sae_id)
    dirs = {f.stem: from_probe(Probe.load(f)) for f in probe or []}
    dirs |= {f.stem: Direction.load(f) for f in direction or []}
    if not dirs:
        raise MechbdError("sae compare: give at least one --probe or --direction")
    for name, d in dirs.items():
        if layer not in d.layers:
            raise MechbdError(f"{name}: no vector at the SAE's layer {layer} (has {d.layers})")
        t = top_cosines(d.at(layer), model.W_dec, top_k)
        pairs = ", ".join(
            f"{i} ({c:+.3f})" for i, c in zip(t["latents"], t["cosines"], strict=True)
        )
        out.print(f"{name} @ layer {layer}: top latents {pairs}")


@app.command("detect")
def sae_detect(
    sae: SaeArg,
    store: Annotated[Path, typer.Argument(help="store with the labels to separate")],
    latent: Annotated[list[int], typer.Option(help="latent id; repeatable")],
    sae_id: SaeIdOpt = None,
    positive: Annotated[str, typer.Option(help="label(s), comma list")] = "triggered",
    negative: Annotated[str, typer.Option(help="label(s), comma list")] = "clean",
    position: str = "last",
) -> None:
    """A latent's activation as a detector: AUROC for POSITIVE vs NEGATIVE rows, beside the
    mean and best AUROC of 100 random live latents."""
    from mechbd.capture.store import ActivationStore
    from mechbd.sae.analysis import detector_auroc, encode, random_latent_auroc
    from mechbd.sae.load import load_sae

    st = ActivationStore(store)
    model, layer = load_sae(sae, sae_id, d_model=st.d_model)
    pos = st.indices(parse_list(positive, "--positive"))
    neg = st.indices(parse_list(negative, "--negative"))
    if not pos or not neg:
        raise MechbdError(f"{store}: no rows labelled {positive!r} or {negative!r}")
    acts = encode(model, st.get(layer, position))
    for i in latent:
        if not 0 <= i < acts.shape[1]:
            raise MechbdError(f"latent {i} out of range: the SAE has {acts.shape[1]}")
        out.print(f"latent {i}: AUROC {detector_auroc(acts[:, i], pos, neg):.4f}")
    r = random_latent_auroc(acts, pos, neg)
    out.print(f"random latents ({r['n']}): mean {r['mean']:.4f}, best {r['max']:.4f}")
