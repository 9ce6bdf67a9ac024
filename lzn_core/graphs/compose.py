"""Task graphs over one latent space: ``compose("image -> label", model=model)`` -> a callable.

A graph is an edge ``"source -> target"`` between modality names of the model and
``latent`` (the shared Gaussian latent space), a chain ``"text -> image -> label"``, a
list of such edges, or the recipe's own task models (one schema for both):
``AlignTask(source="image", target="label")`` is ``"image -> label"``,
``GenerateTask(target="image")`` is ``"latent -> image"`` and
``GenerateTask(target="image", condition="label")`` is ``"label -> image"``.

What an edge does depends on its ends (see :func:`possible_edges` for a model):

=====================  ==========================================================  ===========
edge                   computation                                                 callable
=====================  ==========================================================  ===========
``X -> latent``        latents of X (zoned with X's anchor bank), anchors or        :class:`Represent`
                       backbone features
``latent -> X``        z ~ N(0, I) -> X's generative decoder                        :class:`Generate`
``X -> Y`` (Y zonal)   latents of X -> reverse flow over Y's anchors, nearest        :class:`Classify`
                       anchor (``image -> label``: classification)
``X -> Y`` (Y gen.)    latents of X -> Y's decoder (``label -> image``,              :class:`Decode`
                       ``text -> image``, ``image -> text``; ``X -> X``: reconstruction)
=====================  ==========================================================  ===========

Latents of a request (docs/method.md §2, docs/method.md §6): zones are defined relative to other anchors,
so a request's anchors are zoned *together with* the modality's anchor bank (M stored
training anchors; ``bank_size`` of them) and only the request's rows are kept; one image
is classified like a large batch. By default each item is zoned with the bank alone, so its
answer is the same whatever else the request holds (``lzn_core.model.INDEPENDENT``, chosen by
``benchmarks/results/batch_dependence.md``); ``independent=False`` zones a request's items
together (with the bank and each other), one flow for the whole request. ``bank_size=0`` zones each inference batch alone (the
paper's minibatch evaluation, where accuracy grows with ``batch_size`` and as α -> 0,
docs/method.md §5). A modality with a fixed bank (label classes) gives class-zone latents: IFM over
the bank started at the item's own anchor (docs/method.md §4: Euler, 100 steps, α = 1).

    classify = lzn_core.compose("image -> label", model=model, alpha=0.0)
    labels, confidence = classify(images)                # (B,), (B,)
    sample = lzn_core.compose("label -> image", model=model)
    imgs = sample(torch.tensor([3, 7]), seed=0)          # (2, C, H, W) in [-1, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..errors import ComposeError, did_you_mean
from ..model import LZNModel
from ..recipe import AlignTask, GenerateTask, Task
from .edges import LATENT, Classify, Decode, Generate, Graph, Prediction, Represent, make_generator

__all__ = [
    "compose",
    "parse_graph",
    "possible_edges",
    "Edge",
    "Chain",
    "FanOut",
    "Graph",
    "Represent",
    "Generate",
    "Classify",
    "Decode",
    "Prediction",
    "LATENT",
]


@dataclass(frozen=True)
class Edge:
    """One edge ``source -> target`` of a task graph (modality names or ``"latent"``)."""

    source: str
    target: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}"


# ----------------------------------------------------------------------------- parsing


def _parse_string(text: str) -> list[Edge]:
    nodes = [part.strip() for part in text.split("->")]
    if len(nodes) < 2 or any(not n for n in nodes):
        raise ComposeError(
            f"cannot parse task graph {text!r}: expected 'source -> target' (or a chain "
            "'a -> b -> c') over modality names and 'latent'"
        )
    return [Edge(a, b) for a, b in zip(nodes, nodes[1:], strict=False)]


def _parse_task(task: Any) -> list[Edge]:
    if isinstance(task, AlignTask):
        return [Edge(task.source, task.target)]
    if isinstance(task, GenerateTask):
        return [Edge(task.condition or LATENT, task.target)]
    raise ComposeError(f"cannot compose a {type(task).__name__}: expected an AlignTask or a GenerateTask")


def parse_graph(graph: Any) -> list[Edge]:
    """Edges of a task graph.

    Args:
        graph: ``"a -> b"`` or a chain ``"a -> b -> c"``; an :class:`Edge`; a recipe task model
            (``AlignTask``, ``GenerateTask``) or its dict form (``{"kind": "align", ...}``);
            or a list of any of these.

    Returns:
        The edges, in order.

    Raises:
        ComposeError: for an unparsable string, an unknown task kind or an empty list.
    """
    if isinstance(graph, Edge):
        return [graph]
    if isinstance(graph, str):
        return _parse_string(graph)
    if isinstance(graph, BaseModel):
        return _parse_task(graph)
    if isinstance(graph, dict):
        try:
            return _parse_task(TypeAdapter(Task).validate_python(graph))
        except ValidationError as exc:
            raise ComposeError(f"invalid task {graph!r}: {exc.errors()[0]['msg']}") from exc
    if isinstance(graph, Sequence) and not isinstance(graph, (bytes, bytearray)):
        if not graph:
            raise ComposeError("empty task graph: give at least one edge like 'image -> label'")
        return [e for item in graph for e in parse_graph(item)]
    raise ComposeError(
        f"cannot compose a {type(graph).__name__}: give 'source -> target', a list of edges, "
        "or recipe task models (AlignTask / GenerateTask)"
    )


# ----------------------------------------------------------------------------- planning


def _plan(model: LZNModel, edge: Edge) -> type[Graph]:
    """The :class:`Graph` subclass that runs ``edge`` on ``model``; raises ``ComposeError`` if none."""
    src, dst = edge.source, edge.target
    for node in (src, dst):
        if node != LATENT and node not in model.names:
            raise ComposeError(f"modality {node!r} is not in this model{did_you_mean(node, model.names)}")
    if src == dst == LATENT:
        raise ComposeError("'latent -> latent' does nothing")
    if dst == LATENT:
        return Represent
    kind = model.decoder_kind(dst)
    if kind == "zonal":
        if src == dst:
            raise ComposeError(f"{dst!r} is zonal: '{dst} -> {dst}' is the identity")
        return Classify
    if kind != "generative":
        raise ComposeError(f"the {dst!r} modality has no decoder (kind {kind!r}): it cannot be a target")
    if not model.trains_decoder(dst):
        raise ComposeError(
            f"the {dst!r} decoder is not trained by this model's recipe (no generate task with "
            f"target {dst!r}), so it cannot decode"
        )
    cond = model.condition_source(dst)
    if cond is not None and cond != src and model.decoder_kind(cond) != "zonal":
        raise ComposeError(
            f"the {dst!r} decoder is conditioned on {cond!r}, which cannot be read from a latent "
            f"(its decoder is not zonal); use '{cond} -> {dst}'"
        )
    return Generate if src == LATENT else Decode


def possible_edges(model: LZNModel) -> list[str]:
    """Every single edge ``compose`` can build for ``model`` (e.g. ``["image -> latent", ...]``)."""
    nodes = (*model.names, LATENT)
    out = []
    for src in nodes:
        for dst in nodes:
            try:
                _plan(model, Edge(src, dst))
            except ComposeError:
                continue
            out.append(f"{src} -> {dst}")
    return out


def _build(model: LZNModel, edge: Edge, options: dict[str, Any]) -> Graph:
    try:
        cls = _plan(model, edge)
    except ComposeError as exc:
        raise ComposeError(
            f"cannot compose '{edge}': {exc} (modalities: {', '.join(model.names)}, and 'latent'; "
            f"possible edges: {', '.join(possible_edges(model))})"
        ) from None
    return cls(model, edge.source, edge.target, **options)


# ----------------------------------------------------------------------------- multi-edge graphs


class Chain:
    """Edges run one after the other: ``"text -> image -> label"``.

    ``chain(x, seed=..., generator=...)`` feeds each step's output to the next (a
    :class:`Prediction` passes on its ``labels``) and returns the last step's output.
    ``chain.steps`` holds the single-edge callables.
    """

    def __init__(self, steps: list[Graph]) -> None:
        self.steps = steps
        self.edge = " -> ".join([steps[0].source, *(s.target for s in steps)])

    def __call__(self, batch: Any = None, *, seed: int | None = None, generator: Any = None) -> Any:
        gen = make_generator(seed, generator)
        out = batch
        for step in self.steps:
            out = step(out, generator=gen)
            if isinstance(out, Prediction):
                out = out.labels
        return out

    def __repr__(self) -> str:
        return f"Chain({self.edge!r}: {' | '.join(repr(s) for s in self.steps)})"


class FanOut:
    """Edges from one source run on the same input: ``["image -> label", "image -> latent"]``.

    ``fan(x, seed=..., generator=...)`` returns ``{edge string: output}``.
    """

    def __init__(self, steps: list[Graph]) -> None:
        self.steps = steps
        self.edge = ", ".join(s.edge for s in steps)

    def __call__(
        self, batch: Any = None, *, seed: int | None = None, generator: Any = None
    ) -> dict[str, Any]:
        gen = make_generator(seed, generator)
        return {step.edge: step(batch, generator=gen) for step in self.steps}

    def __repr__(self) -> str:
        return f"FanOut({' | '.join(repr(s) for s in self.steps)})"


def compose(graph: Any, *, model: LZNModel, **options: Any) -> Graph | Chain | FanOut:
    """Build the callable of a task graph on ``model``.

    Args:
        graph: ``"image -> label"``, a chain ``"text -> image -> label"``, a list of edges
            (a chain, or edges sharing one source), or recipe task models (``AlignTask``,
            ``GenerateTask``; see :func:`parse_graph`).
        model: an :class:`~lzn_core.model.LZNModel` (e.g. from :func:`lzn_core.load`).
        **options: defaults of the callable's keyword arguments (e.g. ``alpha=0.0``,
            ``batch_size=2000``, ``bank_size=0``, ``steps=100``); a single-edge graph only.

    Returns:
        A :class:`Represent`, :class:`Generate`, :class:`Classify` or :class:`Decode` for one
        edge; a :class:`Chain` or :class:`FanOut` for several.

    Raises:
        ComposeError: an edge the model cannot run (the message lists the possible edges), an
            unknown option, or edges that form neither a chain nor a fan-out.
    """
    edges = parse_graph(graph)
    if len(edges) == 1:
        return _build(model, edges[0], options)
    if options:
        raise ComposeError(
            f"options ({', '.join(options)}) apply to single-edge graphs; pass them when calling a step"
        )
    steps = [_build(model, e, {}) for e in edges]
    if all(a.target == b.source for a, b in zip(edges, edges[1:], strict=False)):
        return Chain(steps)
    if len({e.source for e in edges}) == 1:
        return FanOut(steps)
    raise ComposeError(
        f"edges {', '.join(map(str, edges))} form neither a chain (each target is the next source) "
        "nor a fan-out (one shared source)"
    )
