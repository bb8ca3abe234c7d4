"""``mechbd capture``: activations of a model on a prompt file into an activation store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mechbd.cli._common import DeviceOpt, load_model_or_adapter, out
from mechbd.config import parse_list
from mechbd.errors import MechbdError


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
    device: DeviceOpt = None,
    trust_remote_code: bool = False,
) -> None:
    """Capture activations of MODEL on PROMPTS into an activation store (resumable)."""
    from mechbd.capture import capture, read_prompt_file
    from mechbd.distributed import init_distributed

    site_list, position_list = parse_list(sites, "--sites"), parse_list(positions, "--positions")
    rows = read_prompt_file(prompts)
    device = init_distributed(device)
    m, tok = _load(model, adapter, backend, device, model_dtype, trust_remote_code)
    st = capture(
        m,
        tok,
        rows,
        out_dir,
        layers=layers,
        sites=site_list,
        positions=position_list,
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


def _load(
    model: str,
    adapter: Path | None,
    backend: str,
    device: str | None,
    dtype: str,
    trust_remote_code: bool,
) -> tuple[Any, Any]:
    """The model and tokenizer the chosen backend captures from."""
    if backend == "ndif":
        from mechbd.capture import ndif_model

        if adapter is not None:
            raise MechbdError("--backend ndif: NDIF runs public hub models, not adapters")
        m = ndif_model(model)
        return m, m.tokenizer
    kw = dict(device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    return load_model_or_adapter(model, adapter, **kw)
