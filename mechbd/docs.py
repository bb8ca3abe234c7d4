"""Generated references: ``docs/cli.md`` from the Typer app, ``docs/config.md`` from the pydantic
config models.

The render functions are pure (they return markdown strings); ``main()`` writes the files.
``tests/test_docs.py`` fails when the committed files differ from what these functions give; then
run ``python -m mechbd.docs``.

The output must not depend on the machine: it is built from the click command tree (names,
parameters, help strings, defaults) and the command functions' annotations, never from Typer's
help formatter (which wraps to the terminal's width and changes between Typer versions).
"""

from __future__ import annotations

import inspect
import json
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path, PurePath
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mechbd.io import atomic_write_text

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"
REGENERATE = "python -m mechbd.docs"


# --- shared helpers ---------------------------------------------------------------------------


def _oneline(text: str) -> str:
    """Text for one markdown table cell: whitespace collapsed, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _paragraphs(text: str | None) -> list[str]:
    """A docstring or help string as paragraphs, each on one line (so the source's line wrapping
    does not show), RST double backticks turned into markdown code spans."""
    text = inspect.cleandoc((text or "").split("\f")[0])  # click: \f ends the help text
    paras = [" ".join(p.split()) for p in text.split("\n\n")]
    return [p.replace("``", "`") for p in paras if p]


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, spaces to dashes, punctuation dropped."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def _type_name(tp: Any, link_models: bool = False) -> str:
    """A readable name for a type annotation: ``Path``, ``int | None``, ``list of str``,
    ``"top" | "bottom"``; pydantic models as links to their table when ``link_models``."""
    if tp is type(None):
        return "None"
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Literal:
        return " | ".join(json.dumps(a) if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a, link_models) for a in args)
    if origin in (list, tuple, set, frozenset, Sequence):
        inner = [a for a in args if a is not Ellipsis]
        if len(inner) == 1:
            return f"list of {_type_name(inner[0], link_models)}"
        return "list"
    if isinstance(tp, type):
        if link_models and issubclass(tp, BaseModel):
            return f"[{tp.__name__}](#{_anchor(tp.__name__)})"
        return tp.__name__
    return str(tp).replace("typing.", "")


def _without_none(tp: Any) -> Any:
    """``X | None`` -> ``X`` (a command-line option that may be left out)."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _plain(v: Any) -> Any:
    """A value as YAML or JSON would hold it: enums by value, paths as strings, tuples as lists."""
    if isinstance(v, Enum):
        return _plain(v.value)
    if isinstance(v, PurePath):
        return v.as_posix()
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


def _value(v: Any) -> str:
    """A default value as it is written in YAML or on the command line: strings bare, everything
    else as JSON (which YAML reads too)."""
    v = _plain(v)
    return v if isinstance(v, str) else json.dumps(v)


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


# --- docs/cli.md ------------------------------------------------------------------------------


def _walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every visible command and group below ``command``, depth first, in the order
    ``--help`` lists them (registration order)."""
    yield path, command
    for name, sub in (getattr(command, "commands", None) or {}).items():
        if not getattr(sub, "hidden", False):
            yield from _walk(sub, (*path, name))


def _annotations(command: Any) -> dict[str, Any]:
    """Parameter annotations of the function behind a command (Annotated extras dropped)."""
    fn = getattr(command, "callback", None)
    if fn is None:
        return {}
    try:
        return typing.get_type_hints(inspect.unwrap(fn))
    except Exception:  # an annotation that cannot be resolved: fall back to no types
        return {}


def _is_group(command: Any) -> bool:
    return getattr(command, "commands", None) is not None


def _bound(param: Any, which: str) -> Any:
    """An option's ``min`` / ``max``: on the parameter (Typer's own click), or on its click
    ``IntRange`` / ``FloatRange`` type (Typer on the click package)."""
    value = getattr(param, which, None)
    return value if value is not None else getattr(getattr(param, "type", None), which, None)


def _param_type(param: Any, hints: dict[str, Any]) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    tp = _without_none(hints.get(param.name or "", type(None)))
    repeated = getattr(param, "multiple", False) or getattr(param, "nargs", 1) == -1
    if repeated and get_origin(tp) in (list, tuple, Sequence):
        tp = _without_none(get_args(tp)[0])
    name = "" if tp is type(None) else _type_name(tp)
    lo, hi = _bound(param, "min"), _bound(param, "max")
    if lo is not None:
        name += f" ≥ {lo}"
    if hi is not None:
        name += f" ≤ {hi}"
    if repeated:
        name += " (repeatable)" if getattr(param, "multiple", False) else " (one or more)"
    return name.strip()


def _param_default(param: Any) -> str:
    if getattr(param, "required", False):
        return "required"
    shown = getattr(param, "show_default", None)
    if isinstance(shown, str):
        return shown
    d = param.default
    if callable(d):
        return "(computed)"
    if d is None or d == () or d == []:
        return ""
    if isinstance(d, bool):
        opts = list(param.opts) if d else list(getattr(param, "secondary_opts", []))
        return _code(opts[0]) if opts else ("on" if d else "off")
    return _code(_value(d))


def _metavar(param: Any) -> str:
    name = param.metavar or (param.name or "").upper()
    if getattr(param, "nargs", 1) == -1:
        name += "..."
    return name if param.required else f"[{name}]"


def _usage(path: tuple[str, ...], command: Any) -> str:
    parts = [*path]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if any(p.param_type_name == "option" for p in params):
        parts.append("[OPTIONS]")
    if _is_group(command):
        parts.append("COMMAND [ARGS]...")
    parts += [_metavar(p) for p in params if p.param_type_name == "argument"]
    return " ".join(parts)


def _command_section(path: tuple[str, ...], command: Any) -> list[str]:
    title = " ".join(path)
    lines = [f"## `{title}`", ""]
    for para in _paragraphs(command.help):
        lines += [para, ""]
    lines += ["```", _usage(path, command), "```", ""]
    hints = _annotations(command)
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    args = [p for p in params if p.param_type_name == "argument"]
    opts = [p for p in params if p.param_type_name == "option"]
    if args:
        lines += ["| argument | type | default | help |", "| --- | --- | --- | --- |"]
        for p in args:
            cells = [
                _code(_metavar(p).strip("[]")),
                _param_type(p, hints),
                _param_default(p),
                getattr(p, "help", None) or "",
            ]
            lines.append("| " + " | ".join(_oneline(c) for c in cells) + " |")
        lines.append("")
    if opts:
        lines += ["| option | type | default | help |", "| --- | --- | --- | --- |"]
        for p in opts:
            names = " / ".join(_code(o) for o in [*p.opts, *getattr(p, "secondary_opts", [])])
            cells = [names, _param_type(p, hints), _param_default(p), p.help or ""]
            lines.append("| " + " | ".join(_oneline(c) for c in cells) + " |")
        lines.append("")
    if _is_group(command):
        lines += ["| command | what it does |", "| --- | --- |"]
        for name, sub in command.commands.items():
            if getattr(sub, "hidden", False):
                continue
            sub_title = f"{title} {name}"
            first = (_paragraphs(sub.help) or [""])[0]
            link = f"[`{sub_title}`](#{_anchor(sub_title)})"
            lines.append(f"| {link} | {_oneline(first)} |")
        lines.append("")
    return lines


def cli_markdown(app: Any = None, prog: str = "mechbd") -> str:
    """``docs/cli.md``: every command of the Typer app with its help, usage, arguments and
    options (type, default, help)."""
    import typer

    if app is None:
        from mechbd.cli import app
    root = typer.main.get_command(app)
    lines = [
        "# Command-line reference",
        "",
        f"<!-- Generated from the Typer app (mechbd.cli.app) by `{REGENERATE}`; "
        "do not edit by hand. -->",
        "",
        f"`{prog} COMMAND --help` prints the same help in the terminal. Inputs and outputs (prompt "
        "files, trigger names, activation stores, SAE sources, exit status) are described in "
        "[formats.md](formats.md); run configs in [config.md](config.md).",
        "",
    ]
    for para in _paragraphs(root.help):
        lines += [para, ""]
    lines += ["| command | what it does |", "| --- | --- |"]
    entries = list(_walk(root, (prog,)))[1:]
    for path, command in entries:
        title = " ".join(path)
        first = (_paragraphs(command.help) or [""])[0]
        lines.append(f"| [`{title}`](#{_anchor(title)}) | {_oneline(first)} |")
    lines.append("")
    for path, command in entries:
        lines += _command_section(path, command)
    return "\n".join(lines).rstrip("\n") + "\n"


# --- docs/config.md ---------------------------------------------------------------------------


def _models_in(tp: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models named anywhere in a type annotation."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        yield tp
    for arg in get_args(tp):
        yield from _models_in(arg)


def config_models(root: type[BaseModel]) -> list[tuple[type[BaseModel], list[str]]]:
    """Every model reachable from ``root``, depth first in field order, each with the YAML
    paths where it sits (``[]`` for the root)."""
    order: list[type[BaseModel]] = []
    where: dict[type[BaseModel], list[str]] = {}

    def visit(model: type[BaseModel], path: str | None) -> None:
        if model in where:
            if path is not None:
                where[model].append(path)
            return
        order.append(model)
        where[model] = [] if path is None else [path]
        for name, field in model.model_fields.items():
            for sub in _models_in(field.annotation):
                visit(sub, name if path is None else f"{path}.{name}")

    visit(root, None)
    return [(m, where[m]) for m in order]


_BOUNDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "length ≥"}


def _constraints(field: Any) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sign in _BOUNDS.items():
            bound = getattr(meta, attr, None)
            if bound is not None:
                parts.append(f"{sign} {_value(bound)}")
        pattern = getattr(meta, "pattern", None)
        if pattern is not None:
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def _model_changes(value: BaseModel) -> str:
    """How a model instance differs from its class's defaults, as ``field value`` pairs."""
    base = type(value)()
    changed = [
        f"{name} {_value(getattr(value, name))}"
        for name in type(value).model_fields
        if getattr(value, name) != getattr(base, name)
    ]
    return ", ".join(changed)


def _config_default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()
        name = getattr(field.default_factory, "__name__", "factory")
        if isinstance(value, BaseModel):
            changes = _model_changes(value)
            return f"`{name}()`" + (f": {changes}" if changes else "")
        return _code(_value(value))
    if field.default is PydanticUndefined:
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        changes = _model_changes(value)
        cls = type(value).__name__
        return f"[{cls}](#{_anchor(cls)}) defaults" + (f", except {changes}" if changes else "")
    if value is None:
        return "`null`"
    text = _value(value)
    return _code(text) if text else '`""`'


def config_markdown(root: type[BaseModel] | None = None) -> str:
    """``docs/config.md``: one table per config model reachable from ``RunConfig`` (field, type,
    default, description), from the models' field descriptions."""
    if root is None:
        from mechbd.config import RunConfig

        root = RunConfig
    lines = [
        "# Run config reference",
        "",
        f"<!-- Generated from the pydantic models in mechbd/config.py by `{REGENERATE}`; "
        "do not edit by hand. -->",
        "",
        "A run config is a YAML file validated by these frozen pydantic models: an unknown "
        "field or a value out of range is an error that names the file and the field. A field "
        "left out keeps its default. `configs/organism.yaml` is exactly `mechbd demo`'s config; "
        "`configs/qwen3-*.yaml` run the same stages on Qwen3 0.6B to 32B.",
        "",
    ]
    models = config_models(root)
    for model, paths in models:
        title = model.__name__
        lines.append(f"- [{title}](#{_anchor(title)}): " + _where(paths))
    lines.append("")
    for model, paths in models:
        lines += [f"## {model.__name__}", ""]
        lines += [f"YAML: {_where(paths)}.", ""]
        for para in _paragraphs(model.__doc__):
            lines += [para, ""]
        lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            typ = _type_name(field.annotation, link_models=True)
            bounds = _constraints(field)
            cells = [
                f"`{name}`",
                typ + (f", {bounds}" if bounds else ""),
                _config_default(field),
                field.description or "",
            ]
            lines.append("| " + " | ".join(_oneline(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _where(paths: list[str]) -> str:
    return ", ".join(f"`{p}`" for p in paths) if paths else "the top level of the file"


# --- files ------------------------------------------------------------------------------------


def generated() -> dict[str, str]:
    """File name under ``docs/`` -> its generated text."""
    return {"cli.md": cli_markdown(), "config.md": config_markdown()}


def main(argv: list[str] | None = None) -> int:
    """``python -m mechbd.docs [DOCS_DIR]``: write the generated references (default: the
    repository's ``docs/``)."""
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else DOCS_DIR
    for name, text in generated().items():
        path = atomic_write_text(out / name, text)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
