"""Spec strings, ``name:key=value,...``: how verbalizers, reasoners and the CLI name a component.

    parse_spec("openai:url=http://127.0.0.1:8080/v1,timeout=30")
    # -> ("openai", {"url": "http://127.0.0.1:8080/v1", "timeout": "30"})
    parse_value("on", bool)  # -> True

Values stay strings until the registry that builds the component converts them (``parse_value``),
since only it knows each option's type.
"""

from __future__ import annotations

from typing import Any

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_options(text: str) -> dict[str, str]:
    """``"k=v, k2=v2"`` -> ``{"k": "v", "k2": "v2"}``; blanks are stripped, empty parts skipped.

    A value may contain ":" or "=" (URLs, paths); it may not contain ",". A part without ``key=``
    or a key given twice raises ValueError.
    """
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"bad option {part!r}: expected key=value")
        if key in options:
            raise ValueError(f"option {key!r} given twice")
        options[key] = value.strip()
    return options


def parse_spec(spec: str, kind: str = "") -> tuple[str, dict[str, str]]:
    """``"name:k=v,k2=v2"`` -> ``("name", {"k": "v", "k2": "v2"})``. ``kind`` ("reasoner") names
    the registry in errors; an unknown or empty name is the registry's to reject (it knows the valid ones)."""
    name, _, rest = spec.strip().partition(":")
    try:
        return name.strip(), parse_options(rest)
    except ValueError as e:
        raise ValueError(f"{e} in {kind + ' ' if kind else ''}spec {spec!r}") from None


def parse_value(value: str, typ: Any) -> Any:
    """Spec text as ``typ``: bool (true/false, yes/no, on/off, 1/0), int, float; any other type
    keeps the text. Raises ValueError when the text is not of that type."""
    if typ is bool:
        if value.lower() in TRUE_WORDS:
            return True
        if value.lower() in FALSE_WORDS:
            return False
        raise ValueError(f"{value!r} is not true or false")
    if typ in (int, float):
        return typ(value)
    return value
