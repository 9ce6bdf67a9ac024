"""Problem lines for recipes: pydantic errors as ``path: message``, plugin configs, references, overrides.

Internal helpers of :mod:`lzn_core.recipe`. Every function returns problem lines
(``"modalities.image.config.widht: extra field; did you mean 'width'?"``) instead of
raising, so that a recipe's problems are all reported together.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .errors import PluginLoadError, RecipeError, UnknownModalityError, did_you_mean

_PARTS = ("encoder", "decoder")


def recipe_error(path: Path | str | None, problems: list[str]) -> RecipeError:
    """A :class:`RecipeError` whose message lists ``problems``; the list is kept as ``.problems``."""
    error = RecipeError(format_problems(path, problems))
    error.problems = list(problems)  # type: ignore[attr-defined]
    return error


def format_problems(path: Path | str | None, problems: list[str]) -> str:
    """``recipe PATH has N problems:`` followed by one ``  - line`` per problem."""
    what = f"recipe {path}" if path is not None else "recipe"
    count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
    return f"{what} has {count}:\n" + "\n".join(f"  - {p}" for p in problems)


# ---------------------------------------------------------------- walking the schema by location


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated`` and ``| None`` from an annotation."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return tp


def _members(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [_unwrap(a) for a in get_args(tp) if a is not type(None)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def field_names(tp: Any) -> list[str]:
    """Field names of the model(s) at an annotation (all members of a union)."""
    return [name for m in _members(tp) if _is_model(m) for name in m.model_fields]


def _tag_member(tp: Any, tag: Any) -> Any | None:
    """The member of a discriminated union whose ``kind`` literal is ``tag``."""
    for m in _members(tp):
        if _is_model(m) and "kind" in m.model_fields and tag in get_args(m.model_fields["kind"].annotation):
            return m
    return None


def step(tp: Any, key: Any) -> Any:
    """The annotation one location element below ``tp`` (None when unknown)."""
    members = _members(tp)
    if len(members) > 1:
        picked = [_step_one(m, key) for m in members]
        picked = [p for p in picked if p is not None]
        return Union[tuple(picked)] if len(picked) > 1 else (picked[0] if picked else None)  # noqa: UP007
    return _step_one(members[0], key)


def _step_one(tp: Any, key: Any) -> Any:
    if _is_model(tp):
        field = tp.model_fields.get(key) if isinstance(key, str) else None
        return field.annotation if field is not None else None
    origin, args = get_origin(tp), get_args(tp)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin in (list, tuple) and args:
        return args[0]
    return None


def _walk(root: Any, loc: tuple[Any, ...]) -> tuple[list[str], Any]:
    """Follow a pydantic ``loc`` from ``root``: (printable path parts, annotation reached).

    Union tags that pydantic inserts (``tasks.1.align.steps``, ``deepspeed.str``) are dropped.
    """
    parts: list[str] = []
    tp = root
    for key in loc:
        if len(_members(tp)) > 1 and isinstance(key, str):
            member = _tag_member(tp, key)
            if member is not None:
                tp = member
                continue
            if not field_names(tp) and key not in ("kind",):  # a smart-union tag like 'str', 'dict[str,any]'
                continue
        parts.append(str(key))
        tp = step(tp, key) if tp is not None else None
    return parts, tp


# ---------------------------------------------------------------- pydantic errors -> lines


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def translate_errors(exc: ValidationError, root: Any, prefix: tuple[Any, ...] = ()) -> list[str]:
    """One ``path: message`` line per pydantic error of ``root`` (a model class), paths under ``prefix``."""
    lines: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        parts, tp = _walk(root, loc)
        path = ".".join([str(p) for p in prefix] + parts) or "recipe"
        lines.setdefault(path, []).append(_message(dict(err), root, loc, tp))
    out = []
    for path, messages in lines.items():
        messages = list(dict.fromkeys(messages))
        got = re.search(r" \(got .*\)$", messages[-1])
        if len(messages) > 1 and got:  # a union: say the value once, at the end
            messages = [m.removesuffix(got.group(0)) for m in messages[:-1]] + [messages[-1]]
        out.append(f"{path}: " + " or ".join(messages))
    return out


def _message(err: dict[str, Any], root: Any, loc: tuple[Any, ...], tp: Any) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        _, parent = _walk(root, loc[:-1])
        return "extra field" + did_you_mean(str(loc[-1]), field_names(parent))
    if kind == "missing":
        return "missing required field"
    if kind == "literal_error":
        allowed = [repr(a) for m in _members(tp) if get_origin(m) is Literal for a in get_args(m)]
        choices = ", ".join(allowed) if allowed else ctx.get("expected", "")
        return f"{value!r} is not one of {choices}" + did_you_mean(
            str(value), [a.strip("'") for a in allowed]
        )
    if kind == "union_tag_invalid":
        tags = ctx.get("expected_tags", "")
        names = re.findall(r"'([^']*)'", str(tags))
        return f"unknown kind {ctx.get('tag')!r}{did_you_mean(str(ctx.get('tag')), names)} (one of {tags})"
    if kind == "union_tag_not_found":
        return f"missing {ctx.get('discriminator', 'kind')} (one of {', '.join(field_tags(tp))})"
    message = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if _scalar(value) and kind not in ("value_error", "assertion_error"):
        message += f" (got {value!r})"
    return message


def field_tags(tp: Any) -> list[str]:
    """The ``kind`` tags of a discriminated union annotation."""
    return [
        repr(a)
        for m in _members(tp)
        if _is_model(m) and "kind" in m.model_fields
        for a in get_args(m.model_fields["kind"].annotation)
    ]


# ---------------------------------------------------------------- plugins and references


def _get_modality(name: str) -> Any:
    from .plugins import get_modality

    return get_modality(name)


def _available(exc: Exception) -> list[str]:
    match = re.search(r"(?:^|;)\s*available:\s*(.*)$", str(exc))
    return [n.strip(" '\"[]") for n in match.group(1).split(",")] if match else []


def resolve_plugin_configs(modalities: Any) -> tuple[dict[str, BaseModel], list[str]]:
    """Validate each ``modalities.<m>.config`` with its plugin's model: (configs, problem lines)."""
    configs: dict[str, BaseModel] = {}
    problems: list[str] = []
    if not isinstance(modalities, dict):
        return configs, problems
    for name, entry in modalities.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("plugin"), str):
            continue
        plugin, config = entry["plugin"], entry.get("config", {})
        try:
            spec = _get_modality(plugin)
        except UnknownModalityError as exc:
            if "unavailable" in str(exc):  # registered by a plugin that failed or is disabled
                problems.append(f"modalities.{name}.plugin: {exc}")
                continue
            names = _available(exc)
            listing = f" (available: {', '.join(names)})" if names else ""
            problems.append(
                f"modalities.{name}.plugin: unknown plugin {plugin!r}{did_you_mean(plugin, names)}{listing}"
            )
            continue
        except PluginLoadError as exc:
            problems.append(f"modalities.{name}.plugin: plugin {plugin!r} failed to load: {exc}")
            continue
        if isinstance(config, spec.config):
            configs[name] = config
            continue
        if isinstance(config, BaseModel):
            config = config.model_dump()
        if config is None:
            config = {}
        if not isinstance(config, dict):
            continue  # reported by the structural validation
        try:
            configs[name] = spec.config.model_validate(config)
        except ValidationError as exc:
            problems += translate_errors(exc, spec.config, ("modalities", name, "config"))
    return configs, problems


def module_keys(modalities: list[str]) -> list[str]:
    """Keys naming modules: ``<m>``, ``<m>.encoder``, ``<m>.decoder`` for every modality."""
    return [k for m in modalities for k in (m, f"{m}.encoder", f"{m}.decoder")]


def reference_problems(data: dict[str, Any]) -> list[str]:
    """Cross-field checks: modality names, task references, lr and freeze keys."""
    modalities = data.get("modalities")
    if not isinstance(modalities, dict):
        return []
    names = [str(n) for n in modalities]
    problems = [
        f"modalities.{n}: a modality name must be an identifier (letters, digits, _), got {n!r}"
        for n in names
        if not n.isidentifier()
    ]
    tasks = data.get("tasks")
    for i, task in enumerate(tasks if isinstance(tasks, list) else []):
        if not isinstance(task, dict):
            continue
        for field in ("source", "target", "condition"):
            ref = task.get(field)
            if isinstance(ref, str) and ref not in names:
                problems.append(
                    f"tasks.{i}.{field}: unknown modality {ref!r}{did_you_mean(ref, names)} "
                    f"(the recipe has: {', '.join(names)})"
                )
        if (
            task.get("kind") == "generate"
            and task.get("condition") is not None
            and task.get("condition") == task.get("target")
        ):
            problems.append(
                f"tasks.{i}.condition: a decoder cannot be conditioned on its own modality {task['target']!r}"
            )
    train = data.get("train")
    if isinstance(train, dict):
        problems += _module_key_problems(train, names)
    return problems


def condition_problems(configs: dict[str, BaseModel], tasks: Any) -> list[str]:
    """A conditioned ``generate`` task needs a target config with room for the vector (``cond_dim`` > 0)."""
    problems = []
    for i, task in enumerate(tasks if isinstance(tasks, list) else []):
        if not isinstance(task, dict) or task.get("kind") != "generate" or not task.get("condition"):
            continue
        config = configs.get(str(task.get("target")))
        if config is not None and getattr(config, "cond_dim", None) == 0:
            problems.append(
                f"tasks.{i}.condition: {task['target']!r} is conditioned on {task['condition']!r} "
                f"but modalities.{task['target']}.config.cond_dim is 0 (set it to the size of "
                f"{task['condition']!r}'s condition vector, e.g. num_classes)"
            )
    return problems


def _module_key_problems(train: dict[str, Any], names: list[str]) -> list[str]:
    problems = []
    modules = module_keys(names)
    hint = "'default', a modality or '<modality>.encoder' / '<modality>.decoder'"
    lr = train.get("lr")
    if isinstance(lr, dict):
        for key in lr:
            if key != "default" and key not in modules:
                problems.append(
                    f"train.lr.{key}: no module {key!r}{did_you_mean(str(key), ['default', *modules])}"
                    f" (keys are {hint})"
                )
        if "default" not in lr:
            for m in names:
                for part in _PARTS:
                    if f"{m}.{part}" not in lr and m not in lr:
                        problems.append(
                            f"train.lr: no learning rate for {m}.{part} "
                            f"(add 'default', {m!r} or '{m}.{part}')"
                        )
    freeze = train.get("freeze")
    if isinstance(freeze, dict):
        for key in freeze:
            if key not in modules:
                problems.append(
                    f"train.freeze.{key}: no module {key!r}{did_you_mean(str(key), modules)}"
                    f" (keys are a modality or '<modality>.encoder' / '<modality>.decoder')"
                )
    return problems


# ---------------------------------------------------------------- overrides


def _flat_dict(tp: Any) -> bool:
    """A ``dict[str, scalar]`` (lr, freeze), whose keys may contain dots."""
    tp = _unwrap(tp)
    if get_origin(tp) is not dict:
        return False
    value = _unwrap(get_args(tp)[1])
    return value in (int, float, str, bool)


def apply_override(data: dict[str, Any], item: str, root: Any) -> str | None:
    """Apply one ``dotted.key=value`` override to ``data`` in place; a problem line or None.

    The value is parsed as a YAML scalar (``64``, ``1.0e-3``, ``dpm``, ``null``, ``[1, 2]``).
    List elements are addressed by index (``tasks.1.steps``). A missing intermediate key
    is created only where the schema has that field; the last key is set as given
    (validation then reports an unknown one as an extra field).
    """
    import yaml

    key, sep, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or "" in parts:
        return f"override {item!r}: expected key=value with a dotted key, e.g. train.batch_size=64"
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return f"override {key}: cannot parse value {text!r} as YAML: {getattr(exc, 'problem', exc)}"
    node: Any = data
    tp = root
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth]) or "the recipe"
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return f"override {key}: {here} is a list of {len(node)}; {part!r} is not an index 0..{len(node) - 1}"
            index = int(part)
            if last:
                node[index] = value
                return None
            node, tp = node[index], step(tp, index)
            continue
        if not isinstance(node, dict):
            return f"override {key}: {here} is a {type(node).__name__}, not a mapping"
        if _flat_dict(tp):  # keys may hold dots: train.lr.image.decoder=1e-3
            part, last = ".".join(parts[depth:]), True
        if last:
            node[part] = value
            return None
        if part not in node:
            fields = field_names(tp)
            if part not in fields:
                choices = list(dict.fromkeys([*map(str, node), *fields]))
                return f"override {key}: unknown key {'.'.join(parts[: depth + 1])!r}{did_you_mean(part, choices)}"
            node[part] = {}
        node, tp = node[part], step(tp, part)
    return None
