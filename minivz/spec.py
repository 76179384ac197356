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


def coerce_option(value: Any, annotation: Any, default: Any, key: str, none: bool = False) -> Any:
    """One spec option's text as its parameter asks: the scalar types of ``annotation`` (``int``,
    ``int | None``: "none"/"null"/"" is None where None is allowed, is the default, or ``none`` says any option may be None), else the type of
    ``default``; text otherwise. The one coercion path of the reasoner and verbalizer registries.
    Raises ValueError naming the option and the type it must be."""
    import types
    import typing

    if not isinstance(value, str):
        return value
    origin = typing.get_origin(annotation)
    options = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    scalars = [t for t in options if t in (bool, int, float, str)]
    if (none or type(None) in options or default is None) and value.lower() in ("none", "null", ""):
        return None
    if not scalars:  # no usable annotation: the default's type
        scalars = [next((t for t in (bool, int, float) if isinstance(default, t)), str)]
    for typ in scalars:
        try:
            return parse_value(value, typ)
        except ValueError:
            pass
    kind = " or ".join("true or false" if t is bool else f"a {t.__name__}" for t in scalars)
    raise ValueError(f"option {key}={value!r} must be {kind}")
