"""Settings: one pydantic model per stage, loadable from YAML, with `key.sub=value` overrides from the CLI.

Precedence, lowest first: model defaults < YAML file (the stage's section, or the whole file) <
explicit CLI options < `--set` overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class Settings(BaseModel):
    """Base for every stage's settings: unknown keys are refused, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


S = TypeVar("S", bound=Settings)


class SettingsError(ValueError):
    pass


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=1` → (["a", "b"], 1); the value is read as YAML, so `x=[1, 2]` and `flag=true` work."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SettingsError(f"override {text!r} must look like key=value (e.g. toyworld.seed=3)")
    parsed = yaml.safe_load(value)
    # "Answer: {text}" reads as a YAML mapping; only a value written as {…} is meant to be one.
    if isinstance(parsed, dict) and not value.lstrip().startswith("{"):
        parsed = value
    return key.strip().split("."), parsed


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SettingsError(f"cannot set {'.'.join(path)}: {part!r} is not a section")
    node[path[-1]] = value


def with_section_defaults(cls: type[BaseModel], tree: dict[str, Any]) -> dict[str, Any]:
    """A partly given section keeps the values its default carries: `params.max_new_tokens=24` must not
    reset the temperature that a stage's default `params` sets."""
    merged = dict(tree)
    for name, field in cls.model_fields.items():
        if not isinstance(tree.get(name), dict):
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            nested = with_section_defaults(type(default), tree[name])
            merged[name] = {**default.model_dump(exclude_unset=True), **nested}
    return merged


def load_settings(
    cls: type[S],
    *,
    yaml_path: str | Path | None = None,
    section: str | None = None,
    options: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> S:
    tree: dict[str, Any] = {}
    if yaml_path is not None:
        loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise SettingsError(f"{yaml_path}: the top level must be a mapping")
        if section is not None and section in loaded:
            loaded = loaded[section]
        tree.update(loaded)
    for key, value in (options or {}).items():
        if value is not None:
            tree[key] = value
    for text in overrides or []:
        path, value = parse_override(text)
        if section is not None and path[0] == section and len(path) > 1:
            path = path[1:]
        _set_path(tree, path, value)
    try:
        return cls.model_validate(with_section_defaults(cls, tree))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid {cls.__name__}: {problems}") from exc
