"""``mechbd finetune``: LoRA on a chat JSONL, one process or several."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechbd.cli._common import out
from mechbd.errors import RunFolderError


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
    from mechbd.config import load_finetune_config
    from mechbd.data.items import chat_groups, load_chat_jsonl
    from mechbd.distributed import is_main_process
    from mechbd.finetune.lora import finetune_lora

    cfg = load_finetune_config(config)
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
    if is_main_process():
        out.print(
            f"adapter -> {out_dir} ({stats['steps']} steps, {stats['seconds']} s, final loss {stats['final_loss']:.4f})"
        )
