"""The one definition of the attention structure (docs/design.md §1-2).

A head's *support* is a predicate over ``(b, h, q, kv)`` index tensors, in the
style of FlexAttention's ``mask_mod``: the same predicates build the dense
boolean mask of the reference path, mask the gathered candidate keys of the
efficient path, and drive incremental decoding, analysis and figures.

Groups of keys a query may see:

* **band**: ``|q - kv| <= window[h]`` (positional heads use a small window,
  syntactic and rare heads the syntactic one);
* **rare**: ``kv`` is one of the ``r`` rarest tokens (of the prefix ``<= q``
  when causal), for heads with ``rare_heads[h]``; a rare key already inside the
  band counts once, in the band;
* **sink** (the error term Ẽ): the first ``sinks`` non-padding keys, each with a
  weight bounded by ``sink_eps``; only where the key is not already in the
  support.

All groups are intersected with causality (``kv <= q``) and key padding.

Cross-attention is dense by default.  The optional structured cross-attention
(:class:`CrossBand`) gives target position ``i`` the source band
``|j - c(i)| <= window`` around the aligned position ``c(i) = round(slope * i)``
(counted from the first real source token, clamped to the last one).  The
slope is a fixed ratio ``|src| / |tgt|``, not the pair's own, because the
target length is unknown while decoding: teacher forcing and incremental
decoding then see the same keys.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

Predicate = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]

#: rarity keys are ``count * POSITION_SPAN + position``: lower is rarer, ties
#: break by position; special symbols and padding get ``NEVER_RARE``.
POSITION_SPAN = 1 << 20
NEVER_RARE = torch.iinfo(torch.int64).max

ROLES = ("positional", "syntactic", "rare")
#: each role's short name, as ``--struct-heads`` and the roles files write it
SHORT_ROLES = {"positional": "pos", "syntactic": "syn", "rare": "rare"}
ROLE_ALIASES = {**{short: role for role, short in SHORT_ROLES.items()}, **{role: role for role in ROLES}}


@dataclass(frozen=True)
class Structure:
    """Per-head structure of one attention block.

    Attributes:
        window: band half-width of each head.
        rare_heads: whether each head also sees the rare-token columns.
        rare: number of rare tokens ``r``.
        causal: restrict every support to ``kv <= q`` (decoder self-attention).
        sinks: number of error-term keys (first non-padding positions).
        sink_eps: bound on the weight of each error-term key.
    """

    window: tuple[int, ...]
    rare_heads: tuple[bool, ...]
    rare: int = 0
    causal: bool = False
    sinks: int = 0
    sink_eps: float = 0.0

    def __post_init__(self) -> None:
        if not self.window:
            raise ValueError("a structure needs at least one head (window has no entries)")
        if len(self.window) != len(self.rare_heads):
            raise ValueError("window and rare_heads need one entry per head")
        if not all(isinstance(w, int) for w in self.window):
            raise TypeError(f"band windows must be integers, got {self.window}")
        if not all(isinstance(x, bool) for x in self.rare_heads):
            raise TypeError(f"rare_heads must be True/False per head, got {self.rare_heads}")
        for name, value in (("rare", self.rare), ("sinks", self.sinks)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        if not isinstance(self.causal, bool):
            raise TypeError(f"causal must be True or False, got {self.causal!r}")
        if not (isinstance(self.sink_eps, int | float) and math.isfinite(self.sink_eps) and self.sink_eps >= 0):
            raise ValueError(f"sink_eps must be a finite number >= 0, got {self.sink_eps!r}")
        if any(w < 0 for w in self.window):
            raise ValueError(f"band windows must be >= 0, got {self.window}")
        if self.rare < 0:
            raise ValueError(f"the rare-token count r must be >= 0, got {self.rare}")
        if self.sinks < 0:
            raise ValueError(f"the error-term key count must be >= 0, got {self.sinks}")
        if self.sinks and not 0.0 < self.sink_eps * self.sinks < 1.0:
            raise ValueError(f"error term: sinks * eps must lie in (0, 1), got {self.sinks} * {self.sink_eps}")

    @property
    def num_heads(self) -> int:
        return len(self.window)

    @property
    def max_window(self) -> int:
        return max(self.window)

    @property
    def uses_rare(self) -> bool:
        return self.rare > 0 and any(self.rare_heads)

    @property
    def keys_per_query(self) -> int:
        """Candidate keys per query of the efficient path: band + rare + sinks."""
        return CandidateLayout.of(self).size

    @classmethod
    def from_roles(
        cls,
        roles: list[str],
        *,
        window: int,
        pos_window: int = 1,
        rare: int = 0,
        causal: bool = False,
        sinks: int = 0,
        sink_eps: float = 0.0,
    ) -> Structure:
        """Build a structure from head roles (``positional|syntactic|rare``)."""
        widths = []
        for role in roles:
            if role not in ROLES:
                raise ValueError(f"unknown head role {role!r}; choose from {', '.join(ROLES)}")
            widths.append(pos_window if role == "positional" else window)
        return cls(
            window=tuple(widths),
            rare_heads=tuple(role == "rare" for role in roles),
            rare=rare,
            causal=causal,
            sinks=sinks,
            sink_eps=sink_eps,
        )


@dataclass(frozen=True)
class CrossBand:
    """Structured cross-attention: every head of target position ``i`` sees the source
    positions ``j`` with ``|j - c(i)| <= window``, ``c(i) = min(round(slope * i), n_src - 1)``."""

    window: int
    slope: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"the cross-attention band half-width must be an integer >= 0, got {self.window!r}")
        if not (math.isfinite(self.slope) and self.slope > 0):
            raise ValueError(f"the cross-attention slope |src|/|tgt| must be finite and > 0, got {self.slope!r}")

    @property
    def keys_per_query(self) -> int:
        return CandidateLayout.of(self).size


def parse_role_spec(mix: str) -> list[str]:
    """The head roles of one role mix such as ``pos:1,syn:2,rare:1`` (checks the syntax only)."""
    roles: list[str] = []
    for item in mix.split(","):
        name, _, count = item.partition(":")
        name = name.strip()
        if name not in ROLE_ALIASES:
            raise ValueError(f"unknown head role {name!r}; use pos/positional, syn/syntactic or rare")
        try:
            n = int(count) if count else 1
        except ValueError:
            raise ValueError(f"head count {count!r} is not an integer") from None
        if n < 0:
            raise ValueError(f"head count for {name} must be >= 0")
        roles += [ROLE_ALIASES[name]] * n
    return roles


def role_mix_text(mix: str) -> str:
    """The one spelling of the role mix ``mix`` (``--struct-heads`` syntax; raises as :func:`parse_role_spec`):
    short names, the consecutive heads of one role counted together, roles of no head left out, and one mix where
    every layer has the same (``syntactic:1,syn:1,rare:2,pos:0`` and ``syn:2,rare:2;syn:2,rare:2`` are
    ``syn:2,rare:2``). The order of the heads stays: ``rare:2,syn:2`` is another model."""
    layers = []
    for layer in (part for part in mix.split(";") if part.strip()):
        runs = [(role, len(list(heads))) for role, heads in itertools.groupby(parse_role_spec(layer))]
        layers.append(",".join(f"{SHORT_ROLES[role]}:{count}" for role, count in runs))
    return layers[0] if len(set(layers)) == 1 else ";".join(layers)


def parse_role_mix(
    spec: str, num_heads: int, num_layers: int | None, option: str = "--struct-heads"
) -> list[list[str]]:
    """Parse ``pos:1,syn:2,rare:1`` (all layers) or ``;``-separated per-layer mixes.

    Returns one list of ``num_heads`` role names per layer; with ``num_layers=None``
    (a pruned stack), one per mix given, unexpanded.
    """
    layer_specs = [s for s in spec.split(";") if s.strip()]
    if not layer_specs or (num_layers is not None and len(layer_specs) not in (1, num_layers)):
        raise ValueError(
            f"{option} {spec!r}: give one role mix for all layers or one per layer "
            f"({num_layers} layers), separated by ';'"
        )
    layers = []
    for layer_spec in layer_specs:
        try:
            roles = parse_role_spec(layer_spec)
        except ValueError as err:
            raise ValueError(f"{option} {spec!r}: {err}") from None
        if len(roles) != num_heads:
            raise ValueError(
                f"{option} {spec!r}: the role mix {layer_spec!r} gives {len(roles)} heads but the layer has {num_heads}"
            )
        layers.append(roles)
    return layers * num_layers if len(layers) == 1 and num_layers is not None else layers


def roles_from_file(path: str | Path, block: str, option: str = "--struct-heads-from") -> list[str]:
    """Per-layer role mixes of ``block`` (encoder/decoder) from a roles JSON file
    (``structmt-analyze`` writes one: ``{"encoder": ["rare:1,syn:3", ...], "decoder": [...]}``), or
    from the JSON object itself when ``path`` starts with ``{`` (how a model keeps them: :func:`roles_json`)."""
    mixes = _roles_object(path, option).get(block)
    if not isinstance(mixes, list) or not mixes or not all(isinstance(m, str) for m in mixes):
        raise ValueError(f"{option} {path}: needs a non-empty list of role mixes under {block!r}")
    return mixes


def roles_json(path: str | Path, option: str = "--struct-heads-from") -> str:
    """The role mixes of a roles file as one line of JSON, for a model to keep in its arguments: a
    checkpoint then holds the roles it was trained with, not the path of a file that may change."""
    roles = _roles_object(path, option)
    kept = {block: roles[block] for block in ("encoder", "decoder") if block in roles}
    return json.dumps(kept, separators=(",", ":"))


def _roles_object(path: str | Path, option: str) -> dict:
    if isinstance(path, str) and path.lstrip().startswith("{"):
        text = path
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"{option} {path}: no such file (structmt-analyze writes results/roles.json)")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{option} {path}: not a JSON object of role mixes ({err})") from None
    try:
        roles = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{option} {path}: not a JSON object of role mixes ({err})") from None
    if not isinstance(roles, dict):
        raise ValueError(f"{option} {path}: not a JSON object of role mixes")
    return roles


# --------------------------------------------------------------------------
# Candidate keys: the layout every efficient path shares


class Kind(IntEnum):
    """What a candidate key is to its query (int8 in every kernel; ``csrc/candidates.cpp`` names the same values)."""

    NOT_ALLOWED = 0  # masked out: padding, the future, outside every group, or a duplicate
    SUPPORT = 1  # in the structured support: shares the softmax
    ERROR = 2  # an error-term key: weight ``sink_eps * sigmoid(score)``


@dataclass(frozen=True)
class CandidateLayout:
    """The candidate keys of a query, in slots ``[band | rare | error]``.

    The efficient paths gather, for every query, ``band`` keys around it (or
    around its aligned source position), its ``rare`` set and the ``error``
    keys, in that order; :meth:`kinds` says what each one is to the query.
    """

    band: int
    rare: int = 0
    error: int = 0

    @classmethod
    def of(cls, structure: Structure | CrossBand, num_keys: int | None = None) -> CandidateLayout:
        """The layout of a full pass (training, scoring) with ``structure``, over ``num_keys`` keys
        when given: every band center is a key, so a half-width past ``num_keys - 1`` reaches no
        further key and the band is cut there (a ``window`` of 10⁶ costs what ``T - 1`` does)."""
        w = structure.window if isinstance(structure, CrossBand) else structure.max_window
        if num_keys is not None:
            w = min(w, max(num_keys - 1, 0))
        if isinstance(structure, CrossBand):
            return cls(band=2 * w + 1)
        return cls(
            band=w + 1 if structure.causal else 2 * w + 1,
            rare=structure.rare if structure.uses_rare else 0,
            error=structure.sinks,
        )

    @property
    def size(self) -> int:
        return self.band + self.rare + self.error

    def band_offsets(self, causal: bool, device: torch.device | None = None) -> Tensor:
        """Key position minus the band's centre (the query, or its aligned source position) for each band
        slot: ``-w … w``, or ``-w … 0`` when causal."""
        reach = self.band - 1 if causal else (self.band - 1) // 2
        return torch.arange(-reach, self.band - reach, device=device)

    def segments(self) -> list[tuple[str, int]]:
        """``(group, size)`` of the non-empty segments, in slot order; the group names a :class:`Supports` field."""
        return [(name, n) for name, n in (("band", self.band), ("rare", self.rare), ("error", self.error)) if n]

    def assemble(self, band: Tensor, rare: Tensor | None = None, error: Tensor | None = None) -> Tensor:
        """Concatenate per-segment tensors ``(..., n)`` (key positions or cache slots) into ``(..., size)``."""
        parts = {"band": band, "rare": rare, "error": error}
        for name, n in (("band", self.band), ("rare", self.rare), ("error", self.error)):
            got = 0 if parts[name] is None else parts[name].size(-1)  # type: ignore[union-attr]
            if got != n:
                raise ValueError(f"candidate layout: the {name} segment has {got} slots, the layout {n}")
        return torch.cat([parts[name] for name, _ in self.segments()], dim=-1)  # type: ignore[misc]

    def kinds(self, positions: Tensor, supports: Supports, q_pos: Tensor, num_heads: int) -> Tensor:
        """What each candidate is to its query: ``(B, H, Tq, C)`` int8 :class:`Kind` codes.

        Args:
            positions: ``(B, Tq, C)`` key position of each candidate (any value outside
                the keys is simply not allowed).
            q_pos: ``(Tq,)`` positions of the queries.
        """
        B, Tq, _ = positions.shape
        b = torch.arange(B, device=positions.device).view(B, 1, 1, 1)
        h = torch.arange(num_heads, device=positions.device).view(1, num_heads, 1, 1)
        qi = q_pos.view(1, 1, -1, 1)
        kv = positions.unsqueeze(1)  # (B, 1, Tq, C)
        parts, start = [], 0
        for name, n in self.segments():
            allowed = getattr(supports, name)(b, h, qi, kv[..., start : start + n])
            code = Kind.ERROR if name == "error" else Kind.SUPPORT
            parts.append((allowed.to(torch.int8) * int(code)).expand(B, num_heads, Tq, n))
            start += n
        return torch.cat(parts, -1)


# --------------------------------------------------------------------------
# Predicates (mask_mod style), composed per group


def band(window: Tensor) -> Predicate:
    """``|q - kv| <= window[h]``."""
    return lambda b, h, q, kv: (q - kv).abs() <= window[h]


def causal(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
    """``kv <= q``."""
    return kv <= q


def rare_columns(rare_sets: Tensor, rare_heads: Tensor, first_query: int = 0) -> Predicate:
    """``kv`` is in the rare set of query ``q``.

    ``rare_sets``: ``(B, Tq, r)`` positions (-1 = none), row ``i`` for the
    query at position ``first_query + i``.
    """

    def mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        member = (rare_sets[b, q - first_query] == kv.unsqueeze(-1)).any(-1)
        return member & rare_heads[h]

    return mod


def first_keys(sink_pos: Tensor) -> Predicate:
    """``kv`` is one of the error-term keys ``sink_pos[b]`` (``(B, k)``)."""
    return lambda b, h, q, kv: (sink_pos[b] == kv.unsqueeze(-1)).any(-1)


def real_key(key_padding_mask: Tensor | None, num_keys: int) -> Predicate:
    """``0 <= kv < num_keys`` and ``kv`` is not padding."""

    def mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        inside = (kv >= 0) & (kv < num_keys)
        if key_padding_mask is None:
            return inside
        return inside & ~key_padding_mask[b, kv.clamp(0, num_keys - 1)]

    return mod


def aligned_band(centers: Tensor, window: int, first_query: int = 0) -> Predicate:
    """``|kv - centers[b, q]| <= window``; ``centers``: ``(B, Tq)``, row ``i`` for query ``first_query + i``."""
    return lambda b, h, q, kv: (kv - centers[b, q - first_query]).abs() <= window


def nothing(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
    """The empty group."""
    return torch.zeros((), dtype=torch.bool, device=kv.device).expand(
        torch.broadcast_shapes(b.shape, h.shape, q.shape, kv.shape)
    )


def and_masks(*mods: Predicate) -> Predicate:
    def mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        out = mods[0](b, h, q, kv)
        for m in mods[1:]:
            out = out & m(b, h, q, kv)
        return out

    return mod


def or_masks(*mods: Predicate) -> Predicate:
    def mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        out = mods[0](b, h, q, kv)
        for m in mods[1:]:
            out = out | m(b, h, q, kv)
        return out

    return mod


@dataclass
class Supports:
    """The group predicates of one call: which ``(b, h, q, kv)`` each group allows.

    ``band`` and ``rare`` are disjoint (a rare key inside the band belongs to
    the band); their union is the structured support.  ``error`` is disjoint
    from both.
    """

    band: Predicate
    rare: Predicate
    error: Predicate

    def support(self, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return self.band(b, h, q, kv) | self.rare(b, h, q, kv)

    def mask_mod(self) -> Predicate:
        """The structured support as a plain function, e.g. FlexAttention's ``mask_mod``."""
        return or_masks(self.band, self.rare)


def make_supports(
    structure: Structure,
    *,
    num_keys: int,
    rare_sets: Tensor | None,
    key_padding_mask: Tensor | None,
    sink_pos: Tensor | None,
    device: torch.device,
    first_query: int = 0,
) -> Supports:
    """Compose the group predicates of ``structure`` for one batch."""
    window = torch.tensor(structure.window, device=device)
    base = real_key(key_padding_mask, num_keys)
    if structure.causal:
        base = and_masks(base, causal)
    in_band = band(window)
    band_ok = and_masks(in_band, base)

    if structure.uses_rare and rare_sets is not None:
        rare_heads = torch.tensor(structure.rare_heads, device=device)
        in_rare = rare_columns(rare_sets, rare_heads, first_query)
        rare_ok = and_masks(in_rare, lambda b, h, q, kv: ~in_band(b, h, q, kv), base)
        structured = or_masks(in_band, in_rare)
    else:
        rare_ok = nothing
        structured = in_band
    if structure.sinks and sink_pos is not None:
        error_ok = and_masks(first_keys(sink_pos), lambda b, h, q, kv: ~structured(b, h, q, kv), base)
    else:
        error_ok = nothing
    return Supports(band=band_ok, rare=rare_ok, error=error_ok)


def make_cross_supports(
    centers: Tensor, window: int, *, num_keys: int, key_padding_mask: Tensor | None, first_query: int = 0
) -> Supports:
    """The support of structured cross-attention: the aligned band over real source keys."""

    in_band = and_masks(aligned_band(centers, window, first_query), real_key(key_padding_mask, num_keys))
    return Supports(band=in_band, rare=nothing, error=nothing)


def aligned_centers(key_padding_mask: Tensor | None, batch: int, num_keys: int, q_pos: Tensor, slope: float) -> Tensor:
    """``(B, Tq)`` source position aligned with each target position ``q_pos``.

    ``c(i) = start + min(round(slope * i), n - 1)`` where ``start`` is the first
    real source position (fairseq left-pads the source) and ``n`` the number of
    real source tokens; the real tokens must be contiguous.
    """
    device = q_pos.device
    if key_padding_mask is None:
        start = torch.zeros(batch, dtype=torch.long, device=device)
        length = torch.full((batch,), num_keys, dtype=torch.long, device=device)
    else:
        real = ~key_padding_mask
        length = real.sum(-1)
        start = real.to(torch.int8).argmax(-1)
    # round half up, the same in every mode; past the last source key every offset clamps alike
    offset = torch.floor(q_pos.to(torch.float64) * slope + 0.5).clamp(max=num_keys).long()
    last = (length - 1).clamp(min=0).unsqueeze(1)
    return start.unsqueeze(1) + torch.minimum(offset.unsqueeze(0), last)


# --------------------------------------------------------------------------
# Rare tokens and error-term keys


#: symbols a fairseq task adds to a dictionary as markers, not words (with a count of 1, the rarest there are):
#: language tags (``__en__``, ``[en_XX]``) and symbols such as ``<mask>``
MARKER = re.compile(r"<\w+>|__\w+__|\[\w+\]")


def rarity_tables(dictionary: Any) -> tuple[Tensor, Tensor]:
    """The corpus count of every token of a fairseq dictionary (``(V,)`` long) and its never-rare flag
    (``(V,)`` bool: the special symbols, padding and markers (:data:`MARKER`)), as :func:`rarity_keys` takes them."""
    never_rare = torch.zeros(len(dictionary), dtype=torch.bool)
    never_rare[: dictionary.nspecial] = True
    never_rare[dictionary.pad()] = True
    markers = [i for i, symbol in enumerate(dictionary.symbols) if MARKER.fullmatch(symbol)]
    never_rare[markers] = True
    return torch.tensor(dictionary.count, dtype=torch.long), never_rare


def rarity_keys(
    tokens: Tensor, counts: Tensor, never_rare: Tensor, first_position: int = 0, *, check_values: bool = True
) -> Tensor:
    """Rarity key per position: ``count * POSITION_SPAN + position``; lower is rarer.

    Args:
        tokens: ``(B, T)`` token ids, at positions ``first_position ...``.
        counts: ``(V,)`` corpus counts (fairseq ``Dictionary.count``).
        never_rare: ``(V,)`` bool, True for special symbols and padding.
        check_values: also check that the token ids lie in ``[0, V)`` and the counts are ``>= 0``
            (reads the tensors: a device sync on a GPU).  The model's own calls skip it: its tokens
            are ids of the dictionary its counts come from.
    """
    _check_rarity_inputs(tokens, counts, never_rare, first_position, check_values)
    counts, tokens = counts.long(), tokens.long()  # uint8 ids would index as a mask, int8/int16 not at all
    pos = torch.arange(first_position, first_position + tokens.size(1), device=tokens.device)
    keys = counts[tokens].clamp(max=(NEVER_RARE // POSITION_SPAN) - 1) * POSITION_SPAN + pos
    return keys.masked_fill(never_rare[tokens], NEVER_RARE)


def check_error_bound(error_keys: int, eps: float) -> None:
    """The error term's bound on attention inputs: each of a row's ``error_keys`` weighs at most ``eps``, so
    ``eps >= 0`` and ``error_keys * eps < 1`` keep the other weights >= 0 (a :class:`Structure` also needs
    ``eps > 0`` when it has error keys)."""
    if not (eps >= 0.0 and error_keys * eps < 1.0):
        raise ValueError(
            "sink_eps bounds each error key's weight: it must be >= 0 and (error keys of a row) * sink_eps < 1, "
            f"got {error_keys} * {eps}"
        )


def _is_integer(x: Tensor) -> bool:
    return not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)


def _check_rarity_inputs(
    tokens: Tensor, counts: Tensor, never_rare: Tensor, first_position: int, check_values: bool
) -> None:
    """What :func:`rarity_keys` needs, or an error naming the argument (a negative token id or
    position would otherwise index from the end and give some other token's rarity)."""
    if counts.dim() != 1 or not _is_integer(counts):
        raise TypeError(
            f"counts must be a 1-D integer tensor of corpus counts, got {counts.dtype} {tuple(counts.shape)}"
        )
    if never_rare.dtype != torch.bool or tuple(never_rare.shape) != tuple(counts.shape):
        raise TypeError(
            f"never_rare must be a bool tensor shaped like counts {tuple(counts.shape)}, "
            f"got {never_rare.dtype} {tuple(never_rare.shape)}"
        )
    if tokens.dim() != 2 or not _is_integer(tokens):
        raise TypeError(f"tokens must be a (batch, length) integer tensor, got {tokens.dtype} {tuple(tokens.shape)}")
    if not isinstance(first_position, int) or first_position < 0:
        raise ValueError(f"first_position must be an integer >= 0, got {first_position!r}")
    if first_position + tokens.size(1) > POSITION_SPAN:
        raise ValueError(f"sequences longer than {POSITION_SPAN} tokens are not supported")
    if not check_values:
        return
    if tokens.numel() and not (0 <= int(tokens.min()) and int(tokens.max()) < counts.numel()):  # narrow ids too
        raise ValueError(
            f"tokens must be ids in [0, {counts.numel()}) (the dictionary's size), "
            f"got values from {int(tokens.min())} to {int(tokens.max())}"
        )
    if counts.numel() and bool((counts < 0).any()):
        raise ValueError(f"counts must be >= 0, got {int(counts.min())}")


def smallest(keys: Tensor, r: int) -> Tensor:
    """The ``r`` smallest keys along the last dim, ascending; padded with ``NEVER_RARE``."""
    if keys.size(-1) < r:
        fill = keys.new_full((*keys.shape[:-1], r - keys.size(-1)), NEVER_RARE)
        keys = torch.cat([keys, fill], dim=-1)
    return keys.topk(r, dim=-1, largest=False, sorted=True).values


def keys_to_positions(keys: Tensor) -> Tensor:
    """Positions of rarity keys; -1 where the key is ``NEVER_RARE``."""
    return torch.where(keys == NEVER_RARE, -1, keys % POSITION_SPAN)


def rare_sets(keys: Tensor, r: int, causal: bool) -> Tensor:
    """Rare set of every query: ``(B, T, r)`` key positions, -1 for none.

    Non-causal: the ``r`` rarest positions of the sequence.  Causal: the ``r``
    rarest of the prefix ``<= q``, by a log-depth scan of "r smallest" merges
    (windows of the scan are disjoint, so no key is counted twice).
    """
    if keys.dim() != 2 or keys.dtype != torch.int64:
        raise TypeError(f"keys must be (batch, length) int64 rarity keys, got {keys.dtype} {tuple(keys.shape)}")
    if not isinstance(r, int) or r < 0:
        raise ValueError(f"the rare-token count r must be an integer >= 0, got {r!r}")
    B, T = keys.shape
    if r == 0:
        return keys.new_full((B, T, 0), -1)
    if not causal:
        return keys_to_positions(smallest(keys, r)).unsqueeze(1).expand(B, T, r)
    state = smallest(keys.unsqueeze(-1), r)  # (B, T, r)
    shift = 1
    while shift < T:
        earlier = torch.cat([state.new_full((B, shift, r), NEVER_RARE), state[:, :-shift]], dim=1)
        state = smallest(torch.cat([state, earlier], dim=-1), r)
        shift *= 2
    return keys_to_positions(state)


def sink_positions(
    key_padding_mask: Tensor | None, batch: int, num_keys: int, sinks: int, device: torch.device
) -> Tensor:
    """The first ``sinks`` non-padding positions of each sequence, ``(B, sinks)``, -1 for none."""
    pos = torch.arange(num_keys, device=device).expand(batch, num_keys)
    if key_padding_mask is not None:
        pos = pos.masked_fill(key_padding_mask, NEVER_RARE)
    return keys_to_positions(smallest(pos, sinks))
