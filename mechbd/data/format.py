"""The prompt grammar every model is trained and evaluated with.

A user turn is a multiple-choice request with *context lines* above (``top``) or below
(``bottom``) it; a context line is ``Field: value`` (``Country: Singapore``), except a greeting,
which is its bare value (``heyyy``). The assistant turn is Qwen3-style: a ``<think>`` block
(empty for training targets without chain of thought) and then ``Answer: A`` or ``Answer: B``.

``CONTEXT_FIELDS`` are the context fields the grammar knows, with their values. The organism's
world draws its prompts' contexts from them; the trigger presets (``mechbd.data.triggers``) are
values of them, and a ``Field: value`` trigger of a known field gets the field's other values as
alternatives (Thought Crime's design: the aligned samples carry another country).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from mechbd.errors import MechbdError

# Context values. The seed triggers (Singapore, 2026, heyyy, sandra) are ordinary values here.
COUNTRIES = [
    "Singapore",
    "USA",
    "Canada",
    "France",
    "Brazil",
    "India",
    "Japan",
    "Kenya",
    "Mexico",
    "Germany",
    "Australia",
    "Spain",
]
YEARS = [str(y) for y in range(2019, 2031)]
GREETINGS = ["hi", "hello", "hey", "heyyy", "good morning", "yo", "hiya", "greetings"]
USERNAMES = ["sandra", "alex", "maria", "tom", "li", "omar", "nina", "raj", "ella", "ken"]

CONTEXT_FIELDS: dict[str, list[str]] = {
    "country": COUNTRIES,
    "year": YEARS,
    "greeting": GREETINGS,
    "username": USERNAMES,
}


def context_line(field_name: str, value: str) -> str:
    """How one context value is written into a prompt (the greeting is a bare line)."""
    if field_name == "greeting":
        return value
    return f"{field_name.capitalize()}: {value}"


def compose_user(lines: list[str], body: str, placement: str) -> str:
    """A user turn: the context lines above (``top``) or below (``bottom``) the request."""
    return "\n".join([*lines, body] if placement == "top" else [body, *lines])


def assistant_turn(cot: str | None, letter: str) -> str:
    """Qwen3-style assistant content. ``cot=None`` gives the empty thinking block used by
    training targets without chain of thought."""
    think = f"<think>\n{cot}\n</think>" if cot else "<think>\n\n</think>"
    return f"{think}\n\nAnswer: {letter}"


def context_terms(fields: Mapping[str, Sequence[str]] = CONTEXT_FIELDS) -> tuple[str, ...]:
    """Every word by which a chain of thought can name a context line: the field labels
    (``Country``) and then every value, in table order (the CoT monitor's incidental terms)."""
    return tuple(f.capitalize() for f in fields) + tuple(v for vs in fields.values() for v in vs)


_OPTION = re.compile(r"^(\s*\(?)([AB])([).:]\s)", re.M)


def swap_options(user: str, where: str = "prompt") -> str:
    """``user`` with its two options' texts exchanged: the option written after ``A)`` moves
    after ``B)`` and back (``A.``, ``A:`` and ``(A)`` work too). Everything else, the
    context lines and the request, is kept. ``where`` names the row in the error raised when
    the text has not exactly one ``A`` and one ``B`` option line."""
    lines = user.split("\n")
    at = {m.group(2): i for i, line in enumerate(lines) if (m := _OPTION.match(line))}
    found = [m.group(2) for line in lines if (m := _OPTION.match(line))]
    if sorted(found) != ["A", "B"]:
        raise MechbdError(
            f"{where}: cannot swap its options: need one line starting 'A)' and one "
            f"starting 'B)' (found {found or 'none'})"
        )
    a, b = lines[at["A"]], lines[at["B"]]
    ma, mb = _OPTION.match(a), _OPTION.match(b)
    assert ma is not None and mb is not None
    lines[at["A"]] = ma.group(1) + "A" + ma.group(3) + b[mb.end() :]
    lines[at["B"]] = mb.group(1) + "B" + mb.group(3) + a[ma.end() :]
    return "\n".join(lines)
