"""Activation capture (three local backends, one result; nnsight remote execution on NDIF) and
the on-disk activation store."""

from mechbd.capture.backends import BACKENDS, ndif_model
from mechbd.capture.capture import capture, pool
from mechbd.capture.names import SITES, hook_name, parse_hook_name, parse_layers, site_path
from mechbd.capture.prompts import POSITIONS, PromptRow, encode_rows, read_prompt_file
from mechbd.capture.store import ActivationStore, StoreError

__all__ = [
    "BACKENDS",
    "POSITIONS",
    "SITES",
    "ActivationStore",
    "PromptRow",
    "StoreError",
    "capture",
    "encode_rows",
    "hook_name",
    "ndif_model",
    "parse_hook_name",
    "parse_layers",
    "pool",
    "read_prompt_file",
    "site_path",
]
