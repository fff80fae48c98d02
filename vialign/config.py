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


def read_yaml_section(path: str | Path, section: str | None) -> dict[str, Any]:
    """The stage's section of a YAML file (or the whole file); every problem names the file."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the settings file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not UTF-8 text (byte {exc.start}); save the settings as UTF-8") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SettingsError(f"{path}: YAML syntax error{where}: {problem}") from exc
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise SettingsError(f"{path}: the top level must be a mapping, not {type(loaded).__name__}")
    if section is not None and section in loaded:
        loaded = loaded[section]
        if loaded is None:  # `toyworld:` with nothing under it
            return {}
        if not isinstance(loaded, dict):
            raise SettingsError(f"{path}: section {section!r} must be a mapping, not {type(loaded).__name__}")
    return loaded


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
        tree.update(read_yaml_section(yaml_path, section))
    for key, value in (options or {}).items():
        if value is not None:
            _set_path(tree, key.split("."), value)
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
