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

from ..errors import PluginLoadError, RecipeError, UnknownModalityError, did_you_mean
from ..modality import ModalitySpec
from ..plugins import get_modality

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


def flat_dict(tp: Any) -> bool:
    """A ``dict[str, scalar]`` (lr, freeze), whose keys may contain dots."""
    tp = _unwrap(tp)
    if get_origin(tp) is not dict:
        return False
    value = _unwrap(get_args(tp)[1])
    return value in (int, float, str, bool)


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
    inputs: dict[str, Any] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        parts, tp = _walk(root, loc)
        path = ".".join([str(p) for p in prefix] + parts) or "recipe"
        lines.setdefault(path, []).append(_message(dict(err), root, loc, tp))
        inputs.setdefault(path, err.get("input"))
    out = []
    for path, messages in lines.items():
        messages = list(dict.fromkeys(messages))
        value = inputs[path]
        if len(messages) > 1 and _scalar(value):  # a union: each way it failed, the value once at the end
            got = f" (got {value!r})"
            messages = [m.removesuffix(got).replace(f"{value!r} is not one of ", "one of ") for m in messages]
            messages[-1] += got
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


def _available(exc: Exception) -> list[str]:
    match = re.search(r"(?:^|;)\s*available:\s*(.*)$", str(exc))
    return [n.strip(" '\"[]") for n in match.group(1).split(",")] if match else []


def resolve_plugins(modalities: Any) -> tuple[dict[str, ModalitySpec], dict[str, BaseModel], list[str]]:
    """The plugin spec of each ``modalities.<m>`` and its config validated by the plugin's model:
    (specs, configs, problem lines)."""
    specs: dict[str, ModalitySpec] = {}
    configs: dict[str, BaseModel] = {}
    problems: list[str] = []
    if not isinstance(modalities, dict):
        return specs, configs, problems
    for name, entry in modalities.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("plugin"), str):
            continue
        plugin, config = entry["plugin"], entry.get("config", {})
        try:
            spec = get_modality(plugin)
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
        specs[name] = spec
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
    return specs, configs, problems


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
    problems += _probe_problems(data.get("eval"), train if isinstance(train, dict) else {}, names)
    return problems


def _probe_problems(ev: Any, train: dict[str, Any], names: list[str]) -> list[str]:
    """``eval.probe`` / ``eval.knn``: modalities the recipe has, a period that evaluation reaches."""
    problems = []
    for what in ("probe", "knn"):
        probe = ev.get(what) if isinstance(ev, dict) else None
        if not isinstance(probe, dict):
            continue
        for field in ("features", "labels"):
            ref = probe.get(field)
            if isinstance(ref, str) and ref not in names:
                problems.append(
                    f"eval.{what}.{field}: unknown modality {ref!r}{did_you_mean(ref, names)} "
                    f"(the recipe has: {', '.join(names)})"
                )
        every, period = probe.get("every"), train.get("eval_every")
        if isinstance(every, int) and every and isinstance(period, int) and period and every % period:
            problems.append(
                f"eval.{what}.every: {every} is not a multiple of train.eval_every = {period} "
                "(evaluation runs only every train.eval_every iterations)"
            )
    return problems


def condition_problems(specs: dict[str, ModalitySpec], tasks: Any) -> list[str]:
    """``generate`` tasks: a ``condition:`` source must declare a condition vector
    (``ModalitySpec.condition_dim``), its target's decoder must accept one
    (``ModalitySpec.accepts_condition``), and a decoder is trained by one generate task."""
    problems = []
    seen: dict[str, int] = {}
    for i, task in enumerate(tasks if isinstance(tasks, list) else []):
        if not isinstance(task, dict) or task.get("kind") != "generate":
            continue
        target, source = str(task.get("target")), task.get("condition")
        if target in seen:
            problems.append(
                f"tasks.{i}: the {target!r} decoder is already trained by tasks.{seen[target]}; "
                "give each decoder one generate task"
            )
        seen.setdefault(target, i)
        if not source or source == target:  # a decoder conditioned on itself: reference_problems says so
            continue
        if source in specs and specs[source].condition_dim is None:
            problems.append(
                f"tasks.{i}.condition: modality {source!r} (plugin {specs[source].name!r}) cannot condition "
                "a decoder: it declares no condition vector"
            )
        if target in specs and not specs[target].accepts_condition:
            problems.append(
                f"tasks.{i}.condition: the {target!r} decoder (plugin {specs[target].name!r}) takes no "
                f"conditioning vector; remove condition: {source}"
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
