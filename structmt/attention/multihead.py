"""A drop-in for fairseq's ``MultiheadAttention`` restricted to a :class:`Structure`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from fairseq.modules.multihead_attention import MultiheadAttention
from torch import Tensor

from .context import TokenContext, current
from .functional import (
    Plan,
    attend,
    attend_candidates,
    check_impl,
    check_source_padding,
    cross_attention_plan,
    self_attention_plan,
)
from .structure import NEVER_RARE, CandidateLayout, CrossBand, Structure, keys_to_positions, make_supports

Block = TypeVar("Block", bound="_StructuredBase")

IncrementalState = dict[str, dict[str, Tensor | None]] | None


def attention_dropout(module: Any) -> float:
    """The attention dropout of a call, by fairseq's rule: while training, or at inference when
    ``--retain-dropout`` (``make_generation_fast_(retain_dropout=True)``) kept it on."""
    dropout = module.dropout_module
    return dropout.p if module.training or dropout.apply_during_inference else 0.0


@dataclass
class StepPlan:
    """The keys one decoding step attends to, and where they come from."""

    rare_rank: Tensor | None  # (B, r') rarity keys of the rare set after this step
    pick: Tensor  # (B, C) slot of each candidate in [cache, this step's key]
    kind: Tensor  # (B, H, 1, C) Kind codes
    keep: Tensor  # (B * H * C',) rows of the flattened [cache, this step's key] that form the next cache
    cached: int  # how many keys the cache holds before this step (the slot of this step's key)


def _shared(context: TokenContext | None, key: tuple, build: Callable[[], Any]) -> Any:
    """``build()``, or what another layer of this forward built for the same ``key``."""
    return build() if context is None else context.shared(key, build)


def _shared_plan(
    context: TokenContext | None, key: tuple, key_padding_mask: Tensor | None, build: Callable[[], Plan]
) -> Plan:
    """``build()``, or the plan another layer of this forward built for the same ``key`` and padding
    mask.  The layers of a forward pass the same mask object, so it is matched by ``id()``; the plan
    holds the mask, so no other tensor can take that id while the context keeps the plan."""
    return _shared(context, (*key, id(key_padding_mask)), build)


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """``a`` is ``b``, or a view of the same memory with the same shape and strides."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())


def check_future_mask(attn_mask: Tensor, num_queries: int) -> Tensor:
    """``attn_mask`` as fairseq's decoder passes it to causal self-attention: its future mask, which
    the causal structure applies itself.  Anything else it would ignore — a bias, or a mask on keys
    at or before the query — so it is refused.  Returns the mask (a plan-like value to share:
    holding it keeps its ``id()`` taken while the forward's context lives)."""
    num_keys = attn_mask.size(-1)
    if attn_mask.dim() != 2 or attn_mask.size(0) != num_queries or num_keys < num_queries:
        raise ValueError(
            f"attn_mask: a causal structured block takes fairseq's (T, T) future mask, T = {num_queries}; "
            f"got shape {tuple(attn_mask.shape)}"
        )
    if attn_mask.tril(num_keys - num_queries).any():  # the queries are the last num_queries positions
        raise ValueError(
            "attn_mask: a causal structured block applies the future mask itself and takes no other mask or bias; "
            "this one is nonzero (or True) at or before the diagonal. Put the restriction in the structure, "
            "or keep this block dense (--struct-apply)"
        )
    return attn_mask


class _StructuredBase(MultiheadAttention):
    """What both structured blocks share: adopting a dense block, head split and the fairseq-shaped return."""

    #: whether the projections run as modules, their hooks included. fairseq's dense self-attention reads their
    #: weights directly (``F.multi_head_attention_forward``), so hooks on them, ``--quant-noise-pq``'s included,
    #: never act on it in training; its cross-attention calls them. Each structured block does as its dense one.
    calls_projections: bool = True

    def _project(self, proj: torch.nn.Module, x: Tensor) -> Tensor:
        return proj(x) if self.calls_projections else torch.nn.functional.linear(x, proj.weight, proj.bias)

    @classmethod
    def _adopt(cls: type[Block], dense: MultiheadAttention) -> Block:
        """A block of this class on the projections of ``dense`` (no new parameters)."""
        if dense.bias_k is not None or dense.add_zero_attn:
            raise ValueError("structured attention does not support add_bias_kv / add_zero_attn")
        if getattr(dense, "use_xformers", False):
            raise ValueError(
                "structured attention does not run through xFormers: leave --encoder-xformers-att-config / "
                "--decoder-xformers-att-config unset for a structured block"
            )
        new = cls.__new__(cls)
        new.__dict__.update(dense.__dict__)
        return new

    def _heads(self, x: Tensor, batch: int) -> Tensor:
        """``(T, B, E)`` → ``(B, H, T, D)``."""
        return x.view(-1, batch, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

    def _output(
        self, out: Tensor, weights: Tensor | None, need_weights: bool, need_head_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``(B, H, T, D)`` → fairseq's ``(T, B, E)`` after the output projection, and the weights
        ``(B, T, S)`` averaged over heads, or ``(H, B, T, S)`` with ``need_head_weights``."""
        B, H, T, D = out.shape
        out = self._project(self.out_proj, out.permute(2, 0, 1, 3).reshape(T, B, H * D))
        if weights is None or not (need_weights or need_head_weights):
            return out, None
        return out, (weights.transpose(0, 1) if need_head_weights else weights.mean(dim=1))


class StructuredMultiheadAttention(_StructuredBase):
    """Self-attention whose heads only see their structured support.

    Same parameters (and parameter names) as fairseq's ``MultiheadAttention``,
    so dense checkpoints load into it and back.  Rare-token heads need the
    rarity of the input tokens: a :class:`~structmt.attention.context.TokenContext`
    passed as ``context``, or the one the owning encoder/decoder made current
    for this forward.

    In incremental decoding the cache keeps the last ``w`` keys/values, the
    current ``r`` rare ones and the ``k`` error keys: bounded, whatever the
    prefix length.
    """

    structure: Structure
    impl: str
    calls_projections = False  # as fairseq's dense self-attention (its fast path)

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        structure: Structure,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        impl: str = "auto",
    ) -> None:
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, self_attention=True)
        self._configure(structure, impl)

    def _configure(self, structure: Structure, impl: str) -> None:
        check_impl(impl)
        if structure.num_heads != self.num_heads:
            raise ValueError(f"structure has {structure.num_heads} heads, the attention {self.num_heads}")
        if not self.self_attention:
            raise ValueError("structured attention applies to self-attention blocks only")
        self.structure = structure
        self.impl = impl

    @classmethod
    def from_dense(
        cls, dense: MultiheadAttention, structure: Structure, impl: str = "auto"
    ) -> StructuredMultiheadAttention:
        """Wrap the projections of an existing ``MultiheadAttention`` (no new parameters)."""
        new = cls._adopt(dense)
        new._configure(structure, impl)
        return new

    def extra_repr(self) -> str:
        s = self.structure
        return (
            f"heads={self.num_heads}, window={s.window}, rare={s.rare}, rare_heads={s.rare_heads}, "
            f"causal={s.causal}, sinks={s.sinks}, impl={self.impl}"
        )

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor | None,
        value: Tensor | None,
        key_padding_mask: Tensor | None = None,
        incremental_state: IncrementalState = None,
        need_weights: bool = True,
        static_kv: bool = False,
        attn_mask: Tensor | None = None,
        before_softmax: bool = False,
        need_head_weights: bool = False,
        context: TokenContext | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Input ``(T, B, C)`` as in fairseq; returns ``(T, B, C)`` and weights
        ``(B, T, S)`` averaged over heads, or ``(H, B, T, S)`` with ``need_head_weights``.
        ``context``: the input tokens' context (default: the current forward's)."""
        if before_softmax:
            raise NotImplementedError("before_softmax is not supported by structured attention")
        if attn_mask is not None and not self.structure.causal:
            raise NotImplementedError(
                "an extra attn_mask is only accepted as the causal mask of decoder self-attention"
            )
        for name, given in (("key", key), ("value", value)):
            if given is not None and not _same_tensor(given, query):
                raise ValueError(
                    f"structured self-attention attends over its query: {name} must be the query tensor itself "
                    "(as fairseq's self-attention layers pass it) or None; for attention over another sequence "
                    "use StructuredCrossAttention or a dense block"
                )
        T, B, _ = query.shape
        context = context or current()
        if attn_mask is not None:
            _shared(context, ("future mask", id(attn_mask)), lambda: check_future_mask(attn_mask, T))
        q, k, v = (self._heads(self._project(proj, query), B) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.to(torch.bool)
        if self.structure.uses_rare and context is None:
            raise RuntimeError(
                "rare-token heads need the rarity of the input tokens: run the block inside its structured "
                "encoder/decoder, or pass context=TokenContext.from_tokens(...)"
            )
        if incremental_state is not None:
            if key_padding_mask is not None and bool(key_padding_mask.any()):
                raise ValueError(
                    "a decoding step with padding in key_padding_mask: the step's keys are the cached prefix and the "
                    "new token, never padding (fairseq's generators pass none); decode padded prefixes in one full "
                    "forward pass without incremental_state"
                )
            out = self._step(q, k, v, incremental_state, context)
            return self._output(out, None, need_weights, need_head_weights)  # weights over the cache: not a full row
        sets = None
        if self.structure.uses_rare:
            sets = context.rare_sets(self.structure.rare, self.structure.causal)  # type: ignore[union-attr]
            if sets.shape[:2] != (B, T):
                raise RuntimeError(f"the token context holds {tuple(sets.shape[:2])} tokens, the input ({B}, {T})")

        def build() -> Plan:
            return self_attention_plan(self.structure, q, sets, key_padding_mask)

        plan = _shared_plan(context, ("self", self.structure, q.shape[:3], q.device), key_padding_mask, build)
        out, weights = attend(
            q,
            k,
            v,
            plan,
            dropout_p=attention_dropout(self),
            impl=self.impl,
            need_weights=need_weights or need_head_weights,  # dense (B, H, T, T) weights only when asked for
        )
        return self._output(out, weights, need_weights, need_head_weights)

    def _step(self, q: Tensor, k: Tensor, v: Tensor, incremental_state: dict, context: TokenContext | None) -> Tensor:
        """One decoding step against the bounded cache (decoder self-attention).

        The cache holds the keys/values the next query may need, in slots
        ``[band (the last min(step, w)) | rare (r') | error-term keys]``; this
        step attends to its candidates among the cache plus the new key, and
        they become the next cache (minus the band key that falls out of reach).
        """
        if not self.structure.causal:
            raise RuntimeError("incremental decoding needs a causal structure")
        if q.size(2) != 1:
            raise RuntimeError("incremental decoding feeds one token at a time")
        B = q.size(0)
        buf = self._get_input_buffer(incremental_state)
        # the decoder's context knows the step (the prefix length - 1) without reading a device tensor: on a GPU,
        # the buffer's copy would make every layer of every step wait for the device
        if context and not context.incremental:
            raise RuntimeError("a decoding step needs the decoder's incremental TokenContext (incremental=True)")
        # the steps taken are kept as a shape (B, steps, 0): read without waiting for the device, and reordered
        # with the rest of the buffer. Once the cache is full its size no longer tells a wrong position apart
        taken = buf["step"].size(1) if "step" in buf else 0
        if context and context.first_position != taken:
            raise RuntimeError(
                f"decoding step at position {context.first_position}, but this layer has decoded {taken} "
                "tokens: build the step's TokenContext from the whole prefix (TokenContext.from_tokens(prefix, ..., "
                "incremental=True), position = prefix length - 1), not from the last token alone"
            )
        step = taken
        if self.structure.uses_rare and context is not None and context.rarity is None:
            raise RuntimeError(  # as a full pass refuses it: rare-token heads would attend as syntactic ones
                "rare-token heads need the rarity keys of the input tokens; none were given "
                "(build the step's TokenContext with need_rarity=True)"
            )
        new_rarity = (
            context.rarity_or_none(B, 1, q.device)
            if context
            else torch.full((B, 1), NEVER_RARE, dtype=torch.long, device=q.device)
        )[:, -1]
        old_ranks = buf.get("rare_rank")

        def build() -> StepPlan:
            return self._step_plan(step, old_ranks, new_rarity)

        # every layer with this structure holds the same rare ranks (same tokens, same beam reorders),
        # so one plan per step serves them all
        plan = context.shared((self.structure, step), build) if context else build()
        empty = k[:, :, :0]
        cached = buf["cache_key"].size(2) if "cache_key" in buf else 0
        if cached != plan.cached:  # a shape, read without waiting for the device
            raise RuntimeError(
                f"decoding step at position {step}, but the cache holds {cached} keys where that position "
                f"leaves {plan.cached}: build the step's TokenContext from the whole prefix "
                "(TokenContext.from_tokens(prefix, ..., incremental=True), position = prefix length - 1), "
                "not from the last token alone"
            )
        pool_k = torch.cat([buf.get("cache_key", empty), k], dim=2)  # (B, H, cache + 1, D)
        pool_v = torch.cat([buf.get("cache_value", empty), v], dim=2)
        out, _ = attend_candidates(
            q,
            pool_k,
            pool_v,
            plan.pick.unsqueeze(1),
            plan.kind,
            self.structure.sink_eps,
            attention_dropout(self),  # --retain-dropout keeps it at inference, as in the full pass
            kernel=self.impl,
        )
        H, D = q.size(1), q.size(3)
        buf["cache_key"] = pool_k.view(-1, D).index_select(0, plan.keep).view(B, H, -1, D)  # the next cache
        buf["cache_value"] = pool_v.view(-1, D).index_select(0, plan.keep).view(B, H, -1, D)
        if plan.rare_rank is not None:
            buf["rare_rank"] = plan.rare_rank
        buf["step"] = torch.empty((B, step + 1, 0), device=q.device)
        self._set_input_buffer(incremental_state, buf)
        return out

    def _step_plan(self, step: int, old_ranks: Tensor | None, new_rarity: Tensor) -> StepPlan:
        """Which keys the query of ``step`` sees and where they lie in [cache, new key]."""
        s, B, device = self.structure, new_rarity.size(0), new_rarity.device
        w = s.max_window
        old_band, old_sinks = min(step, w), min(step, s.sinks)  # cache slots filled by earlier steps
        old = old_ranks if old_ranks is not None else torch.full((B, 0), NEVER_RARE, dtype=torch.long, device=device)
        new = old_band + old.size(1) + old_sinks  # the slot of this step's key in [cache, new key]

        def slots(*ids: int) -> Tensor:
            return torch.tensor(ids, dtype=torch.long, device=device).expand(B, len(ids))

        nb = old_band + 1
        ranks = sets = rare_pos = rare_pick = sink_pos = sink_pick = None
        if s.uses_rare:
            merged = torch.cat([old, new_rarity.view(B, 1)], dim=1)
            ranks, idx = merged.topk(min(s.rare, merged.size(1)), dim=1, largest=False, sorted=True)
            rare_pos = keys_to_positions(ranks)
            rare_pick = torch.where(idx < old.size(1), old_band + idx, new)
            sets = rare_pos.unsqueeze(1)
        if s.sinks:
            ns = min(step + 1, s.sinks)
            sink_pos = torch.arange(ns, device=device).expand(B, ns)
            first = old_band + old.size(1)
            sink_pick = slots(*range(first, first + old_sinks), *([new] if ns > old_sinks else []))
        layout = CandidateLayout(
            band=nb,
            rare=0 if rare_pos is None else rare_pos.size(1),
            error=0 if sink_pos is None else sink_pos.size(1),
        )
        supports = make_supports(
            s,
            num_keys=step + 1,
            rare_sets=sets,
            key_padding_mask=None,
            sink_pos=sink_pos,
            device=device,
            first_query=step,
        )
        band_pos = (step + layout.band_offsets(True, device)).expand(B, nb)
        kv_pos = layout.assemble(band_pos, rare_pos, sink_pos).unsqueeze(1)  # (B, 1, C) positions of this step's keys
        kind = layout.kinds(kv_pos, supports, torch.tensor([step], device=device), self.num_heads)
        pick = layout.assemble(slots(*range(old_band), new), rare_pick, sink_pick)
        rows = torch.arange(B * self.num_heads, device=device).view(B, -1, 1) * (new + 1)  # flat (b, h) offsets
        keep = (rows + pick[:, nb - min(step + 1, w) :].unsqueeze(1)).view(-1)  # minus the band key out of reach
        return StepPlan(rare_rank=ranks, pick=pick, kind=kind, keep=keep, cached=new)


class StructuredCrossAttention(_StructuredBase):
    """Encoder-decoder attention restricted to the aligned source band of a :class:`CrossBand`.

    Same parameters as fairseq's ``MultiheadAttention`` (built with
    :meth:`from_dense`).  While decoding, the target position of the query
    comes from the decoder's :class:`~structmt.attention.context.TokenContext`
    (passed as ``context`` or current for the step).  The projected source
    keys and values are computed at the first step and cached, one copy per
    hypothesis (fairseq's dense block keeps one per sentence).
    """

    band: CrossBand
    impl: str

    @classmethod
    def from_dense(cls, dense: MultiheadAttention, band: CrossBand, impl: str = "auto") -> StructuredCrossAttention:
        """Wrap the projections of an existing encoder-decoder ``MultiheadAttention`` (no new parameters)."""
        if not dense.encoder_decoder_attention:
            raise ValueError("structured cross-attention replaces an encoder-decoder attention block")
        check_impl(impl)
        new = cls._adopt(dense)
        new.band, new.impl = band, impl
        return new

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, cross_window={self.band.window}, slope={self.band.slope}, impl={self.impl}"

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor | None,
        value: Tensor | None,
        key_padding_mask: Tensor | None = None,
        incremental_state: IncrementalState = None,
        need_weights: bool = True,
        static_kv: bool = False,
        attn_mask: Tensor | None = None,
        before_softmax: bool = False,
        need_head_weights: bool = False,
        context: TokenContext | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Input ``(Tq, B, C)`` queries and ``(S, B, C)`` encoder states, as in fairseq."""
        if before_softmax or attn_mask is not None:
            raise NotImplementedError("structured cross-attention takes no attn_mask / before_softmax")
        if value is not None and key is not None and not _same_tensor(value, key):
            raise ValueError(
                "structured cross-attention projects keys and values from one encoder output: value must be "
                "the key tensor itself (as fairseq's encoder-attention passes it) or None"
            )
        B = query.size(1)
        first_query = 0
        context = context or current()
        if incremental_state is not None:
            if context is None or not context.incremental:
                raise RuntimeError(
                    "a decoding step of structured cross-attention needs the decoder's step context "
                    "(TokenContext.from_tokens(prefix, ..., incremental=True)) for the target position"
                )
            first_query = context.first_position
        q = self._heads(self.q_proj(query), B)  # before k and v, as fairseq's (the order quant noise draws in)
        buf = self._get_input_buffer(incremental_state) if incremental_state is not None else {}
        if incremental_state is not None and ("prev_key" in buf) != (first_query > 0):
            raise RuntimeError(  # the first step projects the source; every later one reads it back
                f"a decoding step of structured cross-attention at target position {first_query} "
                + ("finds a source projected by an earlier step" if "prev_key" in buf else "finds no source cache")
                + ": build the step's TokenContext from the whole prefix (position = prefix length - 1) and start "
                "each batch with a fresh incremental_state"
            )
        if "prev_key" in buf:  # the source of this sentence was projected at the first step
            k, v, key_padding_mask = buf["prev_key"], buf["prev_value"], buf.get("prev_key_padding_mask")
        else:
            if key is None:
                raise RuntimeError("structured cross-attention needs the encoder output at the first step")
            k, v = self._heads(self.k_proj(key), B), self._heads(self.v_proj(key), B)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.to(torch.bool)
                # once per forward (the layers share the check) and per decoded batch (later steps use the cache)
                _shared(
                    context, ("source padding", id(key_padding_mask)), lambda: check_source_padding(key_padding_mask)
                )
            if incremental_state is not None:
                buf = {"prev_key": k, "prev_value": v, "prev_key_padding_mask": key_padding_mask}
                self._set_input_buffer(incremental_state, buf)

        def build() -> Plan:
            return cross_attention_plan(self.band, q, k, key_padding_mask, first_query)

        key = ("cross", self.band, q.shape[:3], k.size(2), first_query, q.device)
        plan = _shared_plan(context, key, key_padding_mask, build)
        # fairseq's decoder asks its last layer for cross-attention weights at every step, training included, for
        # alignment; in training only the alignment criteria read them, and those are refused with a cross band
        # (build_decoder), so no dense (B, H, Tq, S) weights are built there
        wanted = (need_weights or need_head_weights) and not self.training
        out, weights = attend(q, k, v, plan, dropout_p=attention_dropout(self), impl=self.impl, need_weights=wanted)
        return self._output(out, weights, need_weights, need_head_weights)

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> IncrementalState:
        """Select the cached source of the surviving hypotheses (one copy per hypothesis)."""
        buf = self._get_input_buffer(incremental_state)
        for name, value in buf.items():
            if value is not None:
                buf[name] = value.index_select(0, new_order)
        return self._set_input_buffer(incremental_state, buf)
