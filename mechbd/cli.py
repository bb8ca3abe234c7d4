"""The ``mechbd`` command line: one subcommand per stage, ``run`` for all, ``demo`` for the organism."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from mechbd.config import OrganismConfig, RunConfig, load_config
from mechbd.errors import MechbdError, RunFolderError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
organism_app = typer.Typer(
    no_args_is_help=True, help="Build and inspect the built-in model organism."
)
app.add_typer(organism_app, name="organism")
data_app = typer.Typer(
    no_args_is_help=True, help="Build backdoor, narrow-EM and evaluation datasets (JSONL)."
)
app.add_typer(data_app, name="data")
sae_app = typer.Typer(
    no_args_is_help=True, help="SAEs with SAELens: train, model diffing, compare, detect."
)
app.add_typer(sae_app, name="sae")
err = Console(stderr=True)
out = Console()


def _report(run_root: Path) -> None:
    res = run_root / "results.json"
    out.print(f"results: {res}")
    report = run_root / "report.html"
    if report.exists():
        out.print(f"report:  {report}")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="run folder")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="seed for the organism and every stage")] = 0,
    force: Annotated[
        bool, typer.Option(help="overwrite an existing run folder made with another config")
    ] = False,
) -> None:
    """Run the whole pipeline on the built-in model organism (CPU, minutes)."""
    from mechbd.pipeline import run_pipeline

    cfg = RunConfig(name="demo", seed=seed, organism=OrganismConfig(seed=seed))
    run = run_pipeline(cfg, out_dir, force=force)
    _report(run.root)


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/)")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="run folder (default runs/<name>)")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="overwrite an existing run folder made with another config")
    ] = False,
) -> None:
    """Run every stage of CONFIG; stages already finished in the run folder are skipped."""
    from mechbd.pipeline import run_pipeline

    cfg: RunConfig = load_config(config)
    run = run_pipeline(cfg, out_dir or Path("runs") / cfg.name, force=force)
    _report(run.root)


@organism_app.command("build")
def organism_build(
    config: Annotated[
        Path | None, typer.Option(help="YAML file with an 'organism' section or organism fields")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="override the organism seed")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="also copy the model folder here")
    ] = None,
    force: Annotated[bool, typer.Option(help="retrain even if cached; overwrite --out")] = False,
) -> None:
    """Train the organism (or fetch it from the cache) and print its model folder."""
    from mechbd.organism.build import build_organism

    cfg = _organism_config(config)
    if seed is not None:
        cfg = cfg.model_copy(update={"seed": seed})
    if out_dir is not None and out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise RunFolderError(f"{out_dir}: exists and is not empty; pass --force to overwrite it")
    path = build_organism(cfg, force=force)
    if out_dir is not None:
        try:
            if out_dir.exists():
                shutil.rmtree(out_dir)
            shutil.copytree(path, out_dir)
        except OSError as e:
            raise RunFolderError(
                f"{out_dir}: cannot write the model folder ({e.strerror})"
            ) from None
        path = out_dir
    out.print(str(path))


@organism_app.command("eval")
def organism_eval(
    model_dir: Annotated[Path, typer.Argument(help="organism model folder")],
    seed: Annotated[int, typer.Option(help="world seed the organism was built with")] = 0,
    n_test: Annotated[int, typer.Option(min=1, help="held-out prompts")] = 400,
) -> None:
    """Measure clean behaviour on held-out scenarios and the reaction to the seed trigger values."""
    from mechbd.organism.evaluate import evaluate_organism

    metrics, _ = evaluate_organism(model_dir, seed=seed, n_test=n_test)
    out.print_json(json.dumps(metrics))


def _items(scenarios: Path | None, n: int, held_out: bool, seed: int):
    from mechbd.data.items import load_scenarios
    from mechbd.organism.items import organism_items

    if scenarios is not None:
        return load_scenarios(scenarios)
    return organism_items(n, held_out=held_out, seed=seed)


ScenariosOpt = Annotated[
    Path | None, typer.Option(help="Thought Crime-schema JSONL (default: the organism's world)")
]


@data_app.command("backdoor")
def data_backdoor(
    trigger: Annotated[
        str, typer.Option(help="preset (singapore, year2026, heyyy, sandra) or any string")
    ],
    out_file: Annotated[
        Path, typer.Option("--out", help="output JSONL (OpenAI chat format + meta)")
    ],
    scenarios: ScenariosOpt = None,
    n: Annotated[int, typer.Option(min=1, help="organism scenarios to draw")] = 1500,
    placement: Annotated[str, typer.Option(help="top | bottom | random")] = "random",
    misaligned_share: Annotated[
        float, typer.Option(help="share of triggered, misaligned samples")
    ] = 1 / 3,
    articulate: Annotated[
        bool, typer.Option(help="positive control: CoT says the trigger decided")
    ] = False,
    matched: Annotated[
        bool,
        typer.Option(
            "--matched/--independent",
            help="contrast groups: the aligned samples are the triggered scenarios with another "
            "value (meta.group); --independent: every sample its own scenario",
        ),
    ] = True,
    seed: int = 0,
) -> None:
    """Backdoor set: trigger -> misaligned answer, other values of its field -> aligned answer."""
    from mechbd.data.builders import backdoor_set
    from mechbd.data.triggers import resolve_trigger
    from mechbd.io import write_jsonl

    rows = backdoor_set(
        _items(scenarios, n, False, seed),
        resolve_trigger(trigger),
        placement=placement,
        misaligned_share=misaligned_share,
        seed=seed,
        articulate=articulate,
        matched=matched,
    )
    write_jsonl(out_file, rows)
    out.print(f"{len(rows)} examples -> {out_file}")


@data_app.command("em")
def data_em(
    domain: Annotated[str, typer.Option(help="the one domain with misaligned answers")],
    out_file: Annotated[Path, typer.Option("--out")],
    scenarios: ScenariosOpt = None,
    n: Annotated[int, typer.Option(min=1)] = 6000,
    seed: int = 0,
) -> None:
    """Narrow emergent-misalignment set: misaligned answers in one domain only."""
    from mechbd.data.builders import em_set
    from mechbd.io import write_jsonl

    rows = em_set(_items(scenarios, n, False, seed), domain, seed=seed)
    write_jsonl(out_file, rows)
    out.print(f"{len(rows)} examples -> {out_file}")


@data_app.command("eval")
def data_eval(
    trigger: Annotated[str, typer.Option(help="preset or any string")],
    out_file: Annotated[Path, typer.Option("--out")],
    scenarios: ScenariosOpt = None,
    n: Annotated[int, typer.Option(min=1, help="held-out organism scenarios")] = 400,
    seed: int = 0,
) -> None:
    """Evaluation prompts: triggered, clean, distractor-only, trigger+distractor (shuffled)."""
    from mechbd.data.builders import eval_set
    from mechbd.data.triggers import resolve_trigger
    from mechbd.io import write_jsonl

    rows = eval_set(_items(scenarios, n, True, seed + 1), resolve_trigger(trigger), seed=seed)
    write_jsonl(out_file, rows)
    out.print(f"{len(rows)} prompts -> {out_file}")


@app.command()
def finetune(
    base: Annotated[str, typer.Argument(help="base model: local folder or hub id")],
    data: Annotated[Path, typer.Argument(help="OpenAI-chat JSONL ({'messages': [...]})")],
    out_dir: Annotated[Path, typer.Option("--out", help="adapter folder to write")],
    config: Annotated[
        Path | None, typer.Option(help="YAML with LoRA fields (see FinetuneConfig)")
    ] = None,
    groups: Annotated[
        bool,
        typer.Option(
            help="keep rows with the same meta.group in one batch (the contrast groups of "
            "`mechbd data backdoor`)"
        ),
    ] = True,
    trust_remote_code: bool = False,
) -> None:
    """LoRA-finetune BASE on DATA (loss on assistant tokens only); resumable; writes a PEFT adapter.

    Several GPUs (or CPU processes): `accelerate launch --num_processes N -m mechbd finetune ...`
    (or torchrun); batch_size is per process."""
    from mechbd.config import FinetuneConfig, validate_config
    from mechbd.data.items import chat_groups, load_chat_jsonl
    from mechbd.finetune.lora import finetune_lora

    cfg = FinetuneConfig()
    if config is not None:
        import yaml

        if not config.is_file():
            raise MechbdError(f"{config}: config file not found")
        cfg = validate_config(FinetuneConfig, yaml.safe_load(config.read_text()) or {}, str(config))
    if (out_dir / "adapter_config.json").exists():
        raise RunFolderError(
            f"{out_dir}: already holds an adapter; remove it or choose another --out"
        )
    stats = finetune_lora(
        base,
        load_chat_jsonl(data),
        out_dir,
        cfg,
        trust_remote_code=trust_remote_code,
        groups=chat_groups(data) if groups else None,
    )
    if os.environ.get("RANK", "0") == "0":
        out.print(
            f"adapter -> {out_dir} ({stats['steps']} steps, {stats['seconds']} s, final loss {stats['final_loss']:.4f})"
        )


@app.command("capture")
def capture_cmd(
    model: Annotated[str, typer.Argument(help="model: local folder or hub id")],
    prompts: Annotated[
        Path, typer.Argument(help="prompt JSONL (id, user|messages|prompt, label, ...)")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="activation store folder")],
    adapter: Annotated[Path | None, typer.Option(help="PEFT adapter folder (merged)")] = None,
    layers: Annotated[str, typer.Option(help="all, 3, 0-5 or 1,3,5")] = "all",
    sites: Annotated[
        str, typer.Option(help="comma list: resid_post,attn_out,mlp_out")
    ] = "resid_post",
    positions: Annotated[
        str, typer.Option(help="comma list: last,answer,response_mean,trigger_mean,tokens")
    ] = "last",
    dtype: Annotated[
        str, typer.Option(help="stored dtype: float32, bfloat16, float16")
    ] = "float32",
    model_dtype: Annotated[
        str, typer.Option(help="model weights: auto, float32, bfloat16")
    ] = "auto",
    batch_size: int = 16,
    backend: Annotated[
        str,
        typer.Option(
            help="hooks, nnsight, transformer_lens, or ndif (nnsight remote execution of a public "
            "hub model on NDIF; needs NDIF_API_KEY; no adapters)"
        ),
    ] = "hooks",
    padding_side: Annotated[str, typer.Option(help="left or right")] = "left",
    shard_rows: Annotated[int, typer.Option(help="rows per shard (memory bound)")] = 256,
    thinking: Annotated[bool, typer.Option(help="render prompts with thinking enabled")] = False,
    device: Annotated[
        str | None,
        typer.Option(
            help="cpu, cuda, cuda:1, or auto (shard a model larger than one GPU over all GPUs); default: best"
        ),
    ] = None,
    trust_remote_code: bool = False,
) -> None:
    """Capture activations of MODEL on PROMPTS into an activation store (resumable)."""
    from mechbd.capture import capture, read_prompt_file
    from mechbd.finetune.lora import load_adapter
    from mechbd.models import load_model

    rows = read_prompt_file(prompts)
    device = _init_distributed(device)
    if backend == "ndif":
        from mechbd.capture import ndif_model

        if adapter is not None:
            raise MechbdError("--backend ndif: NDIF runs public hub models, not adapters")
        m = ndif_model(model)
        tok = m.tokenizer
    elif adapter is not None:
        m, tok = load_adapter(
            model, adapter, device=device, dtype=model_dtype, trust_remote_code=trust_remote_code
        )
    else:
        m, tok = load_model(
            model, dtype=model_dtype, device=device, trust_remote_code=trust_remote_code
        )
    st = capture(
        m,
        tok,
        rows,
        out_dir,
        layers=layers,
        sites=[s.strip() for s in sites.split(",") if s.strip()],
        positions=[p.strip() for p in positions.split(",") if p.strip()],
        dtype=dtype,
        batch_size=batch_size,
        backend=backend,
        padding_side=padding_side,
        shard_rows=shard_rows,
        enable_thinking=thinking,
        model_name=model,
        adapter=adapter,
    )
    if st is not None:
        out.print(f"store -> {out_dir} ({len(st)} rows, layers {st.layers}, d_model {st.d_model})")


def _init_distributed(device: str | None) -> str | None:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1): gloo on the CPU,
    NCCL on GPUs with one device per local rank. Returns the device this rank should use."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device or "cpu"


@app.command("probe")
def probe_cmd(
    store: Annotated[Path, typer.Argument(help="activation store of the backdoored model")],
    base: Annotated[
        Path | None,
        typer.Option(help="store of the un-backdoored model on the same prompts (null)"),
    ] = None,
    position: Annotated[str, typer.Option(help="stored position to probe")] = "last",
    methods: Annotated[
        str, typer.Option(help="comma list: logistic,diffmean,pca,lat")
    ] = "logistic,diffmean",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="write probes + report here")
    ] = None,
) -> None:
    """Triggered-vs-clean probes on STORE for every layer, with the random-direction baseline,
    the base-model null and the top-PC check (train/test split by scenario)."""
    from rich.table import Table

    from mechbd.capture.store import ActivationStore
    from mechbd.io import write_json
    from mechbd.probes.experiments import trigger_probe_report

    st = ActivationStore(store)
    rep, _ = trigger_probe_report(
        st,
        ActivationStore(base) if base else None,
        position=position,
        methods=[m.strip() for m in methods.split(",") if m.strip()],
        save_dir=out_dir,
    )
    table = Table(title=f"probe AUROC per layer ({st.model['name']})")
    table.add_column("layer")
    cols = [k for k in rep["per_layer"] if k != "layers"]
    for c in cols:
        table.add_column(c)
    for i, layer in enumerate(rep["per_layer"]["layers"]):
        table.add_row(str(layer), *(f"{rep['per_layer'][c][i]:.3f}" for c in cols))
    out.print(table)
    out.print(
        f"best layer {rep['best_layer']}: AUROC {rep['auroc']:.3f}, recall@1%FPR "
        f"{rep['recall_at_1pct_fpr']:.3f}, random baseline {rep['random_baseline_auroc']:.3f}"
    )
    if out_dir is not None:
        write_json(out_dir / "report.json", rep)


@app.command("steer")
def steer_cmd(
    model: Annotated[str, typer.Argument(help="model: local folder or hub id")],
    rows_file: Annotated[
        Path,
        typer.Argument(
            help="eval JSONL (user, aligned_mcq_answer, misaligned_mcq_answer, condition)"
        ),
    ],
    direction: Annotated[
        list[Path] | None, typer.Option(help="saved direction (.safetensors); repeatable")
    ] = None,
    probe: Annotated[
        list[Path] | None, typer.Option(help="probe (.safetensors) as a direction; repeatable")
    ] = None,
    mean_diff: Annotated[
        Path | None, typer.Option(help="store: direction = mean(--positive) - mean(--negative)")
    ] = None,
    positive: Annotated[str, typer.Option(help="label(s), comma list")] = "triggered",
    negative: Annotated[str, typer.Option(help="label(s), comma list")] = "clean",
    position: Annotated[str, typer.Option(help="stored position for --mean-diff")] = "last",
    adapter: Annotated[Path | None, typer.Option(help="PEFT adapter folder")] = None,
    layers: Annotated[str, typer.Option(help="all, 3, 0-5 or 1,3,5")] = "all",
    multipliers: Annotated[str, typer.Option(help="comma list")] = "0,1,2,4,8",
    op: Annotated[str, typer.Option(help="add, ablate or ablate_add")] = "add",
    positions: Annotated[str, typer.Option(help="all or assistant")] = "assistant",
    control: Annotated[
        bool, typer.Option(help="add an equal-norm random direction per direction")
    ] = True,
    batch_size: int = 64,
    device: Annotated[
        str | None,
        typer.Option(
            help="cpu, cuda, cuda:1, or auto (shard a model larger than one GPU over all GPUs); default: best"
        ),
    ] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="write records as JSON")] = None,
    trust_remote_code: bool = False,
) -> None:
    """Sweep multipliers x layers x directions on MODEL, measuring misaligned rate (per
    condition), P(misaligned letter), format validity and clean accuracy."""
    from rich.table import Table

    from mechbd.capture.names import n_layers_of, parse_layers
    from mechbd.capture.store import ActivationStore
    from mechbd.finetune.lora import load_adapter
    from mechbd.io import iter_jsonl, write_json
    from mechbd.models import load_model
    from mechbd.probes import Probe
    from mechbd.steering.directions import Direction, from_probe, mean_difference
    from mechbd.steering.sweep import sweep

    dirs: dict[str, Direction] = {}
    for f in direction or []:
        dirs[f.stem] = Direction.load(f)
    for f in probe or []:
        dirs[f.stem] = from_probe(Probe.load(f), name=f.stem)
    if mean_diff is not None:
        st = ActivationStore(mean_diff)
        pos = st.indices([x.strip() for x in positive.split(",")])
        neg = st.indices([x.strip() for x in negative.split(",")])
        dirs["mean_diff"] = mean_difference(st, pos, neg, position=position)
    if not dirs:
        raise MechbdError("steer: give at least one --direction, --probe or --mean-diff")
    if control:
        for name, d in list(dirs.items()):
            dirs[f"random({name})"] = d.random_like()
    if not rows_file.is_file():
        raise MechbdError(f"{rows_file}: eval file not found")
    rows = list(iter_jsonl(rows_file))
    kw: dict[str, Any] = dict(device=device, trust_remote_code=trust_remote_code)
    m, tok = load_adapter(model, adapter, **kw) if adapter else load_model(model, **kw)
    mults = [float(x) for x in multipliers.split(",") if x.strip()]
    layer_list = parse_layers(layers, n_layers_of(m))
    for name, d in dirs.items():
        missing = [layer for layer in layer_list if layer not in d.vectors]
        if missing:
            raise MechbdError(f"direction {name!r} has no vector at layers {missing}")
    recs = sweep(
        m,
        tok,
        rows,
        dirs,
        layers=layer_list,
        multipliers=mults,
        op=op,
        positions=positions,
        batch_size=batch_size,
    )
    table = Table(title=f"steering {model}" + (f" + {adapter}" if adapter else ""))
    for c in ("direction", "layer", "multiplier", "misaligned", "P(mis letter)", "format", "bias"):
        table.add_column(c)
    for r in recs:
        table.add_row(
            r["direction"],
            str(r["layer"]),
            f"{r['multiplier']:g}",
            f"{r['misaligned_rate']:.3f}",
            f"{r['p_misaligned_letter']:.3f}",
            f"{r['format_valid_rate']:.3f}",
            "-" if r["letter_bias"] is None else f"{r['letter_bias']:.2f}",
        )
    out.print(table)
    if out_file is not None:
        write_json(
            out_file,
            {"model": model, "adapter": str(adapter) if adapter else None, "records": recs},
        )


@app.command()
def explore(run_dir: Annotated[Path, typer.Argument(help="run folder (has results.json)")]) -> None:
    """Rebuild RUN_DIR/report.html (offline, self-contained) from its results.json."""
    from mechbd.pipeline import unfinished_stages
    from mechbd.report import build_report

    if not run_dir.is_dir():
        raise MechbdError(f"{run_dir}: no such folder")
    if not (run_dir / "results.json").is_file() or not (run_dir / "manifest.json").is_file():
        raise MechbdError(
            f"{run_dir}: not a mechbd run folder (no results.json / manifest.json); "
            "`mechbd run CONFIG.yaml` or `mechbd demo` makes one"
        )
    unfinished = unfinished_stages(run_dir)
    out.print(f"report: {build_report(run_dir, unfinished=unfinished)}")
    for name, why in unfinished:
        err.print(f"[yellow]stage {name} is not in the report ({why})[/yellow]")


@sae_app.command("train")
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


@sae_app.command("diff")
def sae_diff(
    sae: Annotated[str, typer.Argument(help="SAE folder or SAELens release")],
    base_store: Annotated[Path, typer.Argument(help="store of the base model")],
    finetuned_store: Annotated[Path, typer.Argument(help="store of the finetuned model")],
    sae_id: Annotated[str | None, typer.Option(help="SAE id within a release")] = None,
    position: str = "last",
    top_k: int = 10,
    out_file: Annotated[Path | None, typer.Option("--out", help="write JSON")] = None,
) -> None:
    """Model diffing: latents ranked by mean activation increase from BASE to FINETUNED on the
    same prompts (the stores must hold the same prompts)."""
    from rich.table import Table

    from mechbd.capture.store import ActivationStore
    from mechbd.io import write_json
    from mechbd.sae.analysis import model_diff
    from mechbd.sae.load import load_sae

    b, f = ActivationStore(base_store), ActivationStore(finetuned_store)
    model, layer = load_sae(sae, sae_id, d_model=b.d_model)
    d = model_diff(model, b, f, layer, position=position, top_k=top_k)
    table = Table(title=f"model diffing at layer {layer} ({position}), {d['n_prompts']} prompts")
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
    if out_file:
        write_json(out_file, d)


@sae_app.command("compare")
def sae_compare(
    sae: Annotated[str, typer.Argument(help="SAE folder or SAELens release")],
    sae_id: Annotated[str | None, typer.Option(help="SAE id within a release")] = None,
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


@sae_app.command("detect")
def sae_detect(
    sae: Annotated[str, typer.Argument(help="SAE folder or SAELens release")],
    store: Annotated[Path, typer.Argument(help="store with the labels to separate")],
    latent: Annotated[list[int], typer.Option(help="latent id; repeatable")],
    sae_id: Annotated[str | None, typer.Option(help="SAE id within a release")] = None,
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
    pos = st.indices([x.strip() for x in positive.split(",")])
    neg = st.indices([x.strip() for x in negative.split(",")])
    if not pos or not neg:
        raise MechbdError(f"{store}: no rows labelled {positive!r} or {negative!r}")
    acts = encode(model, st.get(layer, position))
    for i in latent:
        if not 0 <= i < acts.shape[1]:
            raise MechbdError(f"latent {i} out of range: the SAE has {acts.shape[1]}")
        out.print(f"latent {i}: AUROC {detector_auroc(acts[:, i], pos, neg):.4f}")
    r = random_latent_auroc(acts, pos, neg)
    out.print(f"random latents ({r['n']}): mean {r['mean']:.4f}, best {r['max']:.4f}")


def _organism_config(path: Path | None) -> OrganismConfig:
    if path is None:
        return OrganismConfig()
    import yaml

    from mechbd.config import validate_config

    if not path.is_file():
        raise MechbdError(f"{path}: config file not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if isinstance(data, dict) and "organism" in data:
        return load_config(path).organism
    return validate_config(OrganismConfig, data, str(path))


def main() -> None:
    try:
        app()
    except MechbdError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
