"""The registry of methods: ``fastsort.METHODS`` (docs/design.md, "Methods and the registry").

One line per method.  Adding a method is its module under ``fastsort/`` (the
torch reference and a :class:`fastsort.method.Method` subclass), one line
here, its kernels under ``kernels/``, and its tests (docs/design.md,
"Adding a method").
"""
from __future__ import annotations

from typing import Iterator, Mapping

from .method import Method, unsupported
from .networks import NetworkMethod
from .permutahedron import Permutahedron
from .sinkhorn import Sinkhorn
from .softmax_sorts import NeuralSort, SoftSort

__all__ = ["METHODS", "MethodRegistry"]


class MethodRegistry(Mapping[str, Method]):
    """A read-only mapping ``name -> Method`` with the lookups the public ops need."""

    def __init__(self, *methods: Method):
        self._methods = {m.name: m for m in methods}

    def __getitem__(self, name: str) -> Method:
        return self._methods[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._methods)

    def __len__(self) -> int:
        return len(self._methods)

    def __repr__(self) -> str:
        return f"MethodRegistry({', '.join(self._methods)})"

    def supporting(self, op: str) -> tuple:
        """The names of the methods that support ``op`` (a key of :data:`fastsort.method.OPS`)."""
        return tuple(name for name, m in self._methods.items() if op in m.ops)

    def lookup(self, name, op: str) -> Method:
        """The method ``name`` for operation ``op``, or a ``ValueError`` saying which methods do it."""
        method = self._methods.get(name) if isinstance(name, str) else None
        if method is None:
            raise ValueError(f"method must be one of {tuple(self._methods)}, got {name!r}")
        if op not in method.ops:
            raise ValueError(unsupported(method, op, self.supporting(op)))
        return method


METHODS = MethodRegistry(
    NetworkMethod("odd_even"),
    NetworkMethod("bitonic"),
    NetworkMethod("splitter_selection"),
    NeuralSort("neuralsort"),
    SoftSort("softsort"),
    Sinkhorn("sinkhorn"),
    Permutahedron("permutahedron"),
)
