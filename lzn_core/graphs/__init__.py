"""Task graphs over one latent space: ``compose("image -> label", model=model)`` -> a callable.

* :mod:`~lzn_core.graphs.compose`: parsing a graph (strings, edges, recipe task models),
  planning each edge against a model, chains and fan-outs;
* :mod:`~lzn_core.graphs.edges`: the single-edge callables (Represent, Classify, Generate, Decode).
"""

from __future__ import annotations

from .compose import Chain, Edge, FanOut, compose, parse_graph, possible_edges
from .edges import LATENT, Classify, Decode, Generate, Graph, Prediction, Represent

__all__ = [
    "LATENT",
    "Chain",
    "Classify",
    "Decode",
    "Edge",
    "FanOut",
    "Generate",
    "Graph",
    "Prediction",
    "Represent",
    "compose",
    "parse_graph",
    "possible_edges",
]
