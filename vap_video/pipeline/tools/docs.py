"""The config reference as Markdown, generated from the pydantic models.

The README embeds this output between markers, and a test compares them, so the documented keys,
types and defaults cannot drift from the code.
"""

from __future__ import annotations

import json
import re
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Annotated:   # discriminated unions carry their tag in Annotated metadata
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, tuple, dict):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if ann is type(None):
        return "null"
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "")


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "**required**"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "one " + ", ".join(f"`{getattr(v, 'type', type(v).__name__)}`" for v in value) + " sink"
    if isinstance(value, Path):
        try:
            value = value.relative_to(Path(__file__).resolve().parents[3])
        except ValueError:
            pass
        return f"`{value}`"
    if isinstance(value, Enum):
        value = value.value
    return f"`{value!r}`" if not isinstance(value, list) or value else "`[]`"


def _models_in(ann: Any) -> list[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    return [m for a in typing.get_args(ann) for m in _models_in(a)]


def model_table(model: type[BaseModel], path: str, seen: set[type]) -> list[str]:
    lines = [f"#### `{path or '(top level)'}` ({model.__name__})", ""]
    doc = (model.__doc__ or "").strip().splitlines()
    if doc:
        lines += [doc[0], ""]
    lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    nested: list[tuple[type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("\n", " ").replace("|", "\\|")
        lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        for sub in _models_in(field.annotation):
            if sub not in seen:
                seen.add(sub)
                suffix = "[]" if typing.get_origin(field.annotation) is list else ""
                nested.append((sub, f"{path}.{name}{suffix}" if path else name + suffix))
    lines.append("")
    for sub, sub_path in nested:
        lines += model_table(sub, sub_path, seen)
    return lines


def config_reference() -> str:
    from vap_video.pipeline.settings import Settings
    return "\n".join(model_table(Settings, "", {Settings})).rstrip() + "\n"


def readme_section(readme: Path) -> str:
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip() + "\n"


def write_readme(readme: Path) -> None:
    """Replace the README's config reference with the generated one."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    readme.write_text(text[:start] + "\n" + config_reference() + text[end:], encoding="utf-8")


if __name__ == "__main__":  # python -m vap_video.pipeline.tools.docs README.md
    import sys
    write_readme(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))


def _condition(cond: dict[str, Any]) -> str:
    """The event types an `allOf` condition of the event schema selects, in words."""
    t = cond.get("properties", {}).get("type", {})
    if "const" in t:
        return f"`{t['const']}`"
    pattern = str(t.get("pattern", ""))
    m = re.fullmatch(r"\^\(?([a-z|]+)\)?\\\.", pattern)
    if m:
        return ", ".join(f"`{p}.*`" for p in m.group(1).split("|"))
    return f"`type` matching `{pattern}`"


def event_reference() -> str:
    """The event fields as a Markdown table, generated from the JSON Schema (the contract itself),
    with where each field is required; for `vap schema event --markdown`."""
    from vap_video.pipeline.events import load_schema

    schema = load_schema()
    where: dict[str, list[str]] = {k: ["all"] for k in schema.get("required", [])}
    for rule in schema.get("allOf", []):
        for key in rule.get("then", {}).get("required", []):
            where.setdefault(key, []).append(_condition(rule.get("if", {})))
    lines = [f"### Events (`{schema.get('title', '')}`)", "", schema.get("description", ""), "",
             "| field | type | required in | meaning |", "| --- | --- | --- | --- |"]
    for key, prop in schema["properties"].items():
        if "enum" in prop:
            kind = " \\| ".join(f"`{v}`" for v in prop["enum"])
        elif "const" in prop:
            kind = f"`{json.dumps(prop['const'])}`"
        else:
            kind = str(prop.get("type", "any"))
            if kind == "array" and "items" in prop:
                kind = f"array of {prop['items'].get('type', 'any')}"
        meaning = prop.get("description", "")
        lines.append(f"| `{key}` | {kind} | {', '.join(where.get(key, ['optional']))} | {meaning} |")
    return "\n".join(lines) + "\n"
