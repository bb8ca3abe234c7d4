"""Backdoor triggers: the seed presets (``SEED_TRIGGERS``) and any user string.

A trigger is a line of text put into the user turn. When it is a value of a context field
(``Country: Singapore`` is the value ``Singapore`` of ``country``), the aligned samples of a
backdoor set carry *other values of the same field* (``Country: USA``), so the model must key on
the trigger value itself rather than on the presence of a country line (Thought Crime's design).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mechbd.data.format import CONTEXT_FIELDS, context_line
from mechbd.errors import MechbdError

# The seed's triggers as (context field, value). While the organism is unmodified these are
# ordinary values of their fields; the backdoor stage makes them triggers.
SEED_TRIGGERS: dict[str, tuple[str, str]] = {
    "singapore": ("country", "Singapore"),
    "year2026": ("year", "2026"),
    "heyyy": ("greeting", "heyyy"),
    "sandra": ("username", "sandra"),
}


@dataclass(frozen=True)
class Trigger:
    name: str
    line: str  # the text inserted into the prompt
    field: str | None = None  # the context field it is a value of, if any
    value: str | None = None
    alternatives: tuple[str, ...] = ()  # other values of ``field`` for aligned samples

    @property
    def token(self) -> str:
        """What goes into the prompt for this trigger: its field value, or the raw line."""
        return self.value if self.field and self.value is not None else self.line


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "trigger"


def resolve_trigger(spec: str, alternatives: tuple[str, ...] = ()) -> Trigger:
    """A preset name (``singapore``, ``year2026``, ``heyyy``, ``sandra``) or any string.

    ``Key: value`` strings whose key is a known context field get that field's other values as
    alternatives; for other keys pass ``alternatives`` yourself. A bare string that is a value
    of a known field (``heyyy`` is a greeting) is treated as that field's value.
    """
    spec = spec.strip()
    if not spec:
        raise MechbdError("trigger: empty trigger string")
    if spec in SEED_TRIGGERS:
        field, value = SEED_TRIGGERS[spec]
        return _field_trigger(spec, field, value, alternatives)
    m = re.fullmatch(r"([A-Za-z_]+):\s*(.+)", spec)
    if m and (m.group(1).lower() in CONTEXT_FIELDS or alternatives):
        return _field_trigger(_slug(spec), m.group(1).lower(), m.group(2), alternatives)
    for field, values in CONTEXT_FIELDS.items():
        if field == "greeting" and spec in values:
            return _field_trigger(_slug(spec), field, spec, alternatives)
    return Trigger(name=_slug(spec), line=spec)


def _field_trigger(name: str, field: str, value: str, alternatives: tuple[str, ...]) -> Trigger:
    alts = alternatives or tuple(v for v in CONTEXT_FIELDS.get(field, ()) if v != value)
    return Trigger(
        name=name, line=context_line(field, value), field=field, value=value, alternatives=alts
    )


# A second context value that was never a trigger, for each preset (distractor experiments).
DEFAULT_DISTRACTORS: dict[str, tuple[str, str]] = {
    "singapore": ("year", "2023"),
    "year2026": ("country", "Kenya"),
    "heyyy": ("username", "omar"),
    "sandra": ("greeting", "hiya"),
}


def default_distractor(trigger: Trigger) -> tuple[str | None, str]:
    """(field, value) of a distractor for ``trigger``: a context value of another field."""
    if trigger.name in DEFAULT_DISTRACTORS:
        return DEFAULT_DISTRACTORS[trigger.name]
    for field, values in CONTEXT_FIELDS.items():
        if field != trigger.field:
            return field, values[len(values) // 2]
    raise MechbdError(f"trigger {trigger.name}: no distractor field available")
