"""What the structured blocks of one forward share, built per forward and handed down.

An encoder or decoder forward builds one :class:`TokenContext` from its input
tokens and makes it current for the duration of the call (:func:`active`);
the structured attention blocks of its layers read it with :func:`current`.
Nothing is left on a module between calls, so a block always sees the tokens
of the forward it runs in, whichever layers LayerDrop keeps.  Rare sets are
computed on first use and shared by every block with the same ``(r, causal)``;
the plan of a full pass or of a decoding step (which keys each query sees) is
shared by every block with the same structure.

Activation checkpointing re-runs a layer during the backward pass, outside the
forward: the structured layers (``structmt.models``) take the context as an
explicit argument there, so the re-run sees the same one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .structure import NEVER_RARE, rare_sets, rarity_keys


@dataclass
class TokenContext:
    """The tokens' side of one encoder or decoder forward.

    Attributes:
        rarity: ``(B, T)`` rarity keys of the tokens at positions ``first_position ...``
            (:func:`~structmt.attention.structure.rarity_keys`), or None when no block
            needs them.
        first_position: position of the first query (a decoding step: the prefix length - 1).
        incremental: a decoding step (one new token against the cache).
    """

    rarity: Tensor | None
    first_position: int = 0
    incremental: bool = False
    _rare_sets: dict[tuple[int, bool], Tensor] = field(default_factory=dict, repr=False)
    _plans: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_tokens(
        cls, tokens: Tensor, counts: Tensor, never_rare: Tensor, *, incremental: bool = False, need_rarity: bool = True
    ) -> TokenContext:
        """The context of a forward over ``tokens`` ``(B, T)``; a decoding step keeps the last token's key only."""
        first = tokens.size(1) - 1 if incremental else 0
        if not need_rarity:
            return cls(rarity=None, first_position=first, incremental=incremental)
        if incremental:
            tokens = tokens[:, -1:]
        keys = rarity_keys(tokens, counts, never_rare, first, check_values=False)  # no device sync per forward
        return cls(keys, first_position=first, incremental=incremental)

    def rarity_or_none(self, batch: int, length: int, device: torch.device) -> Tensor:
        """The rarity keys, or "never rare" for every position when the forward has none."""
        if self.rarity is None:
            return torch.full((batch, length), NEVER_RARE, dtype=torch.long, device=device)
        return self.rarity

    def rare_sets(self, r: int, causal: bool) -> Tensor:
        """``(B, T, r)`` rare set of every query (computed once per forward and ``(r, causal)``)."""
        if self.rarity is None:
            raise RuntimeError("rare-token heads need the rarity keys of the input tokens; none were given")
        if (r, causal) not in self._rare_sets:
            self._rare_sets[r, causal] = rare_sets(self.rarity, r, causal)
        return self._rare_sets[r, causal]

    def shared(self, key: Any, build: Callable[[], Any]) -> Any:
        """``build()`` once per forward and ``key``: a full pass's or a decoding step's plan, shared by
        the layers that attend with the same structure."""
        if key not in self._plans:
            self._plans[key] = build()
        return self._plans[key]


_CURRENT: ContextVar[TokenContext | None] = ContextVar("structmt_token_context", default=None)


@contextlib.contextmanager
def active(context: TokenContext | None) -> Iterator[TokenContext | None]:
    """Make ``context`` current inside the block (None leaves the current one in place)."""
    if context is None:
        yield _CURRENT.get()
        return
    token = _CURRENT.set(context)
    try:
        yield context
    finally:
        _CURRENT.reset(token)


def current() -> TokenContext | None:
    """The context of the forward running now, or None outside every structured forward."""
    return _CURRENT.get()
