"""Structured attention kernels: a dense-masked reference and an efficient
candidate-gather path, both driven by :mod:`structmt.attention.structure`."""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import triton_kernel
from .options import IMPLS
from .structure import (
    CandidateLayout,
    CrossBand,
    Kind,
    Structure,
    Supports,
    aligned_centers,
    check_error_bound,
    make_cross_supports,
    make_supports,
    sink_positions,
)


def structured_softmax(scores: Tensor, support: Tensor, error: Tensor, sink_eps: float) -> Tensor:
    """Softmax over ``support`` plus error-term keys of bounded weight.

    Each error key gets ``sink_eps * sigmoid(score)`` (at most ``sink_eps``);
    the structured weights share the rest, so each row sums to 1.  A row with
    an empty support gets zero weight (never NaN), error keys included; a row
    with a support whose scores are all NaN or infinite is NaN, as softmax's.

    ``support`` and ``error`` are disjoint bool masks broadcastable to ``scores`` (a floating
    tensor); ``sink_eps >= 0`` and the error keys of a row times ``sink_eps`` stay below 1 (as
    :class:`~structmt.attention.structure.Structure` requires of ``sinks * sink_eps``), else the
    other weights would go negative: inputs that break these rules are refused.
    """
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating tensor, got {scores.dtype}")
    if support.dtype != torch.bool or error.dtype != torch.bool:
        raise TypeError(f"support and error must be bool masks, got {support.dtype} and {error.dtype}")
    if bool((support & error).any()):
        raise ValueError("error keys must lie outside the support: support & error is not empty")
    error_keys = torch.broadcast_to(error, torch.broadcast_shapes(error.shape, scores.shape)).sum(-1)
    check_error_bound(int(error_keys.max()) if error_keys.numel() else 0, sink_eps)
    return _structured_softmax(scores, support, error, sink_eps).to(scores.dtype)


def _structured_softmax(scores: Tensor, support: Tensor, error: Tensor, sink_eps: float) -> Tensor:
    """:func:`structured_softmax` without the checks (its callers here build their inputs by the rules), in
    float32 at least (fp16/bf16 scores in fp32, fp64 in fp64), as fairseq's encoder-decoder attention returns its
    weights; the callers weight the values with them rounded to the scores' dtype."""
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    probs = torch.softmax(scores.masked_fill(~support, float("-inf")), dim=-1)
    probs = torch.where(support, probs, zero)
    if sink_eps:
        # where, not a product with the mask: a non-finite score outside the error keys stays out
        extra = torch.where(error & support.any(-1, keepdim=True), sink_eps * torch.sigmoid(scores), zero)
        probs = probs * (1.0 - extra.sum(-1, keepdim=True)) + extra
    return probs


def _structure_for(
    num_heads: int,
    window: int | Sequence[int],
    rare: int,
    rare_heads: Sequence[bool] | Tensor | None,
    causal: bool,
    sinks: int,
    sink_eps: float,
) -> Structure:
    many = isinstance(window, Sequence) or (isinstance(window, Tensor) and window.dim() == 1)
    what = "an integer (or one per head)"
    windows = (
        tuple(_integer(w, "window", what) for w in window) if many else (_integer(window, "window", what),) * num_heads
    )
    if len(windows) != num_heads:
        raise ValueError(f"window: got {len(windows)} values for {num_heads} heads")
    if rare_heads is None:
        rare_heads = (True,) * num_heads
    if isinstance(rare_heads, Tensor) and rare_heads.dim() == 1:
        rare_heads = rare_heads.tolist()
    if isinstance(rare_heads, (Tensor, str)) or not isinstance(rare_heads, Sequence):
        raise ValueError(
            f"rare_heads: give one flag per head ({num_heads} booleans, or a 1-d tensor), or None for all heads; "
            f"got {rare_heads!r}"
        )
    flags = tuple(bool(x) for x in rare_heads)
    if len(flags) != num_heads:
        raise ValueError(f"rare_heads: got {len(flags)} values for {num_heads} heads")
    return Structure(
        window=windows,
        rare_heads=flags,
        rare=_integer(rare, "rare"),
        causal=causal,
        sinks=_integer(sinks, "sinks"),
        sink_eps=sink_eps,
    )


def _integer(value: Any, name: str, what: str = "an integer") -> int:
    """``value`` as an ``int`` (Python, NumPy or 0-d tensor integers), or a ``TypeError`` naming ``name``."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {what}, got {value!r}") from None


def check_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    """``q`` ``(B, H, Tq, D)``, ``k`` ``(B, H, S, D)`` and ``v`` ``(B, H, S, Dv)`` of one floating
    dtype on one device, or an error that says which argument is wrong."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, length, head_dim), got shape {tuple(x.shape)}")
    if q.dtype not in triton_kernel.DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"q, k, v must share one of float16, bfloat16, float32, float64, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape[:2] != q.shape[:2] or k.size(3) != q.size(3) or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            "q (B, H, Tq, D), k (B, H, S, D) and v (B, H, S, Dv) do not fit together: "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def check_padding_mask(key_padding_mask: Tensor | None, batch: int, num_keys: int, device: torch.device) -> None:
    """``key_padding_mask`` is None or a bool ``(B, S)`` tensor on ``device`` (True at padding)."""
    if key_padding_mask is None:
        return
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(
            f"key_padding_mask must be a bool tensor, True at padding (as in fairseq), got {key_padding_mask.dtype}; "
            "convert it with mask.bool() (or mask == 0 if yours marks real tokens)"
        )
    if tuple(key_padding_mask.shape) != (batch, num_keys):
        raise ValueError(
            f"key_padding_mask must be (batch, keys) = ({batch}, {num_keys}), got {tuple(key_padding_mask.shape)}"
        )
    if key_padding_mask.device != device:
        raise ValueError(f"key_padding_mask is on {key_padding_mask.device}, q on {device}")


def check_source_padding(key_padding_mask: Tensor | None) -> Tensor | None:
    """The aligned band counts source positions from each row's first real token: the real tokens of
    a row must be contiguous (left or right padding, as fairseq pads), or a ``ValueError``.  Reads the
    mask (a device sync on a GPU).  Returns the mask."""
    if key_padding_mask is not None:
        real = ~key_padding_mask
        start, length = real.to(torch.int8).argmax(-1, keepdim=True), real.sum(-1, keepdim=True)
        pos = torch.arange(real.size(-1), device=real.device)
        if not torch.equal(real, (pos >= start) & (pos < start + length)):
            raise ValueError(
                "key_padding_mask: the real source tokens of each row must be contiguous (left or right padding)"
            )
    return key_padding_mask


def _index_grid(batch: int, num_heads: int, device: torch.device) -> tuple[Tensor, Tensor]:
    b = torch.arange(batch, device=device).view(batch, 1, 1, 1)
    h = torch.arange(num_heads, device=device).view(1, num_heads, 1, 1)
    return b, h


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    supports: Supports,
    sink_eps: float,
    q_pos: Tensor,
    kv_pos: Tensor,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Dense scores with the support as a boolean mask: ``O(Tq * S)``.

    ``q_pos``: ``(Tq,)`` positions of the queries; ``kv_pos``: ``(S,)`` of the keys.
    Returns the output ``(B, H, Tq, D)`` and the weights ``(B, H, Tq, S)`` (in float32 at least).
    """
    b, h = _index_grid(q.size(0), q.size(1), q.device)
    qi, kvi = q_pos.view(1, 1, -1, 1), kv_pos.view(1, 1, 1, -1)
    scores = torch.matmul(q * q.size(-1) ** -0.5, k.transpose(-1, -2))  # scaled first: no fp16 overflow
    weights = _structured_softmax(scores, supports.support(b, h, qi, kvi), supports.error(b, h, qi, kvi), sink_eps)
    out = torch.matmul(F.dropout(weights.to(scores.dtype), dropout_p, training=dropout_p > 0), v)
    return out, weights


def candidate_attention(
    q: Tensor, k_c: Tensor, v_c: Tensor, kind: Tensor, sink_eps: float, dropout_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Attention over gathered candidate keys: ``O(Tq * C)``.

    Args:
        q: ``(B, H, Tq, D)``.
        k_c, v_c: ``(B, Tq, C, H, D)`` candidate keys/values of every query.
        kind: ``(B, H, Tq, C)`` :class:`~structmt.attention.structure.Kind` codes
            from :meth:`CandidateLayout.kinds`.
    Returns:
        output ``(B, H, Tq, D)`` and candidate weights ``(B, H, Tq, C)`` (in float32 at least).
    """
    scores = torch.einsum("bhtd,btchd->bhtc", q * q.size(-1) ** -0.5, k_c)  # scaled first: no fp16 overflow
    weights = _structured_softmax(scores, kind == Kind.SUPPORT, kind == Kind.ERROR, sink_eps)
    out = torch.einsum("bhtc,btchd->bhtd", F.dropout(weights.to(scores.dtype), dropout_p, training=dropout_p > 0), v_c)
    return out, weights


@dataclass(eq=False)
class Plan:
    """Where the queries of one attention call may look, independent of ``q, k, v``: the group
    predicates (reference path) and, built on first use, the candidate keys (efficient paths).

    The layers of one forward attend with the same structure over the same tokens, so they can
    share one plan (see :meth:`~structmt.attention.context.TokenContext.shared`): the candidates
    are then built once per forward, not once per layer, and the backward passes of all layers
    hold one copy of them.
    """

    structure: Structure | CrossBand
    shape: tuple[int, int, int, int]  # (B, H, Tq, S): batch, heads, queries, keys
    supports: Supports
    q_pos: Tensor  # (Tq,) positions of the queries
    positions: Callable[[], Tensor]  # builds the candidate key positions (B, Tq, C)
    key_padding_mask: Tensor | None  # held so that a plan keyed by the mask's id() stays valid
    _candidates: tuple[Tensor, Tensor, Tensor] | None = field(default=None, repr=False)

    @property
    def sink_eps(self) -> float:
        return self.structure.sink_eps if isinstance(self.structure, Structure) else 0.0

    def candidates(self) -> tuple[Tensor, Tensor, Tensor]:
        """Key positions ``(B, Tq, C)`` of every query's candidates, the same clamped to real
        positions (what the kernels gather) and their :class:`Kind` codes ``(B, H, Tq, C)``."""
        if self._candidates is None:
            kv_pos = self.positions()
            layout = CandidateLayout.of(self.structure, self.shape[3])
            kind = layout.kinds(kv_pos, self.supports, self.q_pos, self.shape[1])
            self._candidates = (kv_pos, kv_pos.clamp(0, self.shape[3] - 1), kind)
        return self._candidates


def self_attention_plan(
    structure: Structure, q: Tensor, rare_index: Tensor | None, key_padding_mask: Tensor | None
) -> Plan:
    """The :class:`Plan` of a full self-attention pass (training, scoring) for queries shaped like
    ``q`` ``(B, H, T, D)``: the band around each query, its rare set (``rare_index``, checked) and
    the error keys."""
    batch, num_heads, length, _ = q.shape
    check_padding_mask(key_padding_mask, batch, length, q.device)
    if num_heads != structure.num_heads:
        raise ValueError(f"the structure has {structure.num_heads} heads, q {num_heads} ({tuple(q.shape)})")
    device = q.device
    sets = None
    if structure.uses_rare:
        r = None if rare_index is None else rare_index.size(-1)
        if rare_index is None or r != structure.rare:
            got = None if rare_index is None else tuple(rare_index.shape)
            raise ValueError(
                f"rare_index: the structure has {structure.rare} rare columns; give (B, {structure.rare}) "
                f"or (B, T, {structure.rare}) positions, got {got}"
            )
        sets = unique_positions(_rare_sets_of(rare_index, batch, length))
    sink_pos = sink_positions(key_padding_mask, batch, length, structure.sinks, device) if structure.sinks else None
    supports = make_supports(
        structure, num_keys=length, rare_sets=sets, key_padding_mask=key_padding_mask, sink_pos=sink_pos, device=device
    )
    layout = CandidateLayout.of(structure, length)
    q_pos = torch.arange(length, device=device)

    def positions() -> Tensor:
        offsets = layout.band_offsets(structure.causal, device)
        return layout.assemble(
            (q_pos.view(1, length, 1) + offsets).expand(batch, length, layout.band),
            sets,
            sink_pos.unsqueeze(1).expand(batch, length, layout.error) if sink_pos is not None else None,
        )

    return Plan(structure, (batch, num_heads, length, length), supports, q_pos, positions, key_padding_mask)


def cross_attention_plan(
    band: CrossBand, q: Tensor, k: Tensor, key_padding_mask: Tensor | None, first_query: int = 0
) -> Plan:
    """The :class:`Plan` of structured cross-attention from target queries shaped like ``q``
    ``(B, H, Tq, D)``, at positions ``first_query ...``, over source keys shaped like ``k``
    ``(B, H, S, D)``: the source band around each query's aligned position."""
    batch, num_heads, num_queries, _ = q.shape
    num_keys, device = k.size(2), q.device
    check_padding_mask(key_padding_mask, batch, num_keys, device)
    first_query = _integer(first_query, "first_query")
    if first_query < 0:
        raise ValueError(f"first_query must be >= 0, got {first_query}")
    q_pos = torch.arange(first_query, first_query + num_queries, device=device)
    centers = aligned_centers(key_padding_mask, batch, num_keys, q_pos, band.slope)
    supports = make_cross_supports(
        centers, band.window, num_keys=num_keys, key_padding_mask=key_padding_mask, first_query=first_query
    )

    layout = CandidateLayout.of(band, num_keys)

    def positions() -> Tensor:
        return layout.assemble(centers.unsqueeze(-1) + layout.band_offsets(False, device))

    return Plan(band, (batch, num_heads, num_queries, num_keys), supports, q_pos, positions, key_padding_mask)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    plan: Plan,
    *,
    dropout_p: float = 0.0,
    impl: str = "auto",
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Attend from ``q`` ``(B, H, Tq, D)`` over ``k, v`` ``(B, H, S, D)`` where ``plan`` allows.

    Returns the output ``(B, H, Tq, D)`` and, with ``need_weights``, the dense weights
    ``(B, H, Tq, S)`` (built for this call: ``O(Tq * S)`` memory; in float32 for half-precision inputs, as
    fairseq's encoder-decoder attention returns them), else None. The weights carry a gradient: where the
    kernel's have none (the fused ones) and autograd records, the reference path computes them again."""
    check_inputs(q, k, v)
    B, H, Tq, S = plan.shape
    if (*q.shape[:3], k.size(2)) != plan.shape:
        raise ValueError(
            f"the plan is for {B} sequences, {H} heads, {Tq} queries and {S} keys; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    path = choose_impl(impl, plan.structure, S, q, v, dropout_p)
    if path == "reference" or S == 0:  # no key to gather from: the dense path gives every query its zero row
        kv_pos = torch.arange(S, device=q.device)
        out, weights = reference_attention(q, k, v, plan.supports, plan.sink_eps, plan.q_pos, kv_pos, dropout_p)
        return out, (weights if need_weights else None)
    kv_pos, index, kind = plan.candidates()
    out, weights = attend_candidates(q, k, v, index, kind, plan.sink_eps, dropout_p, kernel=path)
    if not need_weights:
        return out, None
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)) and not weights.requires_grad:
        # the fused kernels' weights carry no gradient: weights a loss may use come from the dense path too
        kv_pos = torch.arange(S, device=q.device)
        return out, reference_attention(q, k, v, plan.supports, plan.sink_eps, plan.q_pos, kv_pos)[1]
    return out, scatter_dense(weights, kv_pos, S)


def attend_candidates(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    kind: Tensor,
    sink_eps: float = 0.0,
    dropout_p: float = 0.0,
    kernel: str = "efficient",
) -> tuple[Tensor, Tensor]:
    """Attend from ``q`` ``(B, H, Tq, D)`` over the candidate keys ``index`` ``(B, Tq, C)`` of
    ``k, v`` ``(B, H, S, D)``, ``kind`` from :meth:`CandidateLayout.kinds`.

    ``kernel`` (:func:`candidate_kernel`): ``triton``, the Triton kernel (CUDA, or CPU in Triton's
    interpreter); ``auto``, Triton on CUDA when installed; otherwise (and for ``efficient`` or
    ``reference``, whose incremental decoding steps come here) never Triton: the fused C++ kernel on
    float32 CPU tensors without dropout, else gathered copies.  Returns the output ``(B, H, Tq, D)``
    and the candidate weights ``(B, H, Tq, C)``; on the two fused kernels the weights carry no
    gradient (the output does)."""
    path = candidate_kernel(kernel, q, v, dropout_p)
    if path == "triton":
        scale = 1.0 / math.sqrt(q.size(-1))  # the plan's indices are in range: not checked again (a GPU sync)
        return triton_kernel.candidate_attention(q, k, v, index, kind, scale, sink_eps, dropout_p, check_index=False)
    if path == "fused":
        scale = 1.0 / math.sqrt(q.size(-1))
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return FusedCandidateAttention.apply(q, k, v, index, kind, scale, sink_eps)
        out, weights, _ = _KERNELS.forward(q, k, v, index, kind, scale, sink_eps)  # inference: no autograd node
        return out, weights
    batch = torch.arange(q.size(0), device=q.device).view(-1, 1, 1)
    # The gather's backward adds the gradient of every query that has a key as candidate (a sink, a rare column:
    # all of them) into that key's, rounding after each add: in half precision the sum loses its low bits (4096
    # bfloat16 ones sum to 256). Gathered from float32 copies, it sums in float32, as the Triton kernel does;
    # the attention itself still computes in the inputs' dtype. (No backward, no sum: decoding gathers as is.)
    backward = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)
    wide = torch.float32 if backward and k.dtype in (torch.float16, torch.bfloat16) else k.dtype
    k_c = k.transpose(1, 2).to(wide)[batch, index].to(k.dtype)  # (B, Tq, C, H, D)
    v_c = v.transpose(1, 2).to(wide)[batch, index].to(v.dtype)
    return candidate_attention(q, k_c, v_c, kind, sink_eps, dropout_p)


def candidate_kernel(kernel: str, q: Tensor, v: Tensor, dropout_p: float) -> str:
    """Which code :func:`attend_candidates` runs for ``kernel`` (one of :data:`IMPLS`): ``triton``, ``fused``
    (the C++ kernel) or ``gather``.  Only ``triton``, and ``auto`` on CUDA, run Triton: ``--struct-impl
    efficient`` or ``reference`` keep a GPU job off it (a node where Triton cannot compile, say)."""
    check_impl(kernel)
    if kernel == "triton":
        return "triton"
    other = "fused" if fused_kernel_usable(q, v, dropout_p) else "gather"
    if kernel == "auto" and q.is_cuda:
        if not (why := triton_kernel.unusable(q.device)):
            return "triton"
        if why not in _SAID:  # a GPU run on a slower path: said once
            _SAID.add(why)
            logging.getLogger(__name__).warning(
                f"structured attention on {q.device}: the Triton kernel cannot run ({why}); --struct-impl auto "
                "takes the pure-PyTorch paths instead (the same attention: the dense masked one for short "
                "sequences, gathered keys for long ones)"
            )
    return other


#: the reasons :func:`candidate_kernel` has said it takes another path than Triton on a GPU
_SAID: set[str] = set()


def _load_kernels() -> Any:
    """The C++ kernel, or None where it is not built (a machine without a compiler: the gathered path is used).
    One that is there but does not load (built against another torch) is said once: it would be slow in silence."""
    try:
        from .. import _kernels  # built by setup.py against the installed torch

        return _kernels
    except ImportError as err:
        package = Path(__file__).resolve().parent.parent
        built = sorted(p for p in package.glob("_kernels*") if p.suffix in (".so", ".pyd"))
        if built:
            logging.getLogger(__name__).warning(
                f"structmt's C++ kernel {built[0].name} does not load ({err}): built against another torch or "
                "Python? Rebuild it (pip install --no-build-isolation --no-deps -e . in the checkout); until then "
                "the slower gathered-keys path runs"
            )
        return None


_KERNELS = _load_kernels()


def fused_kernel_usable(q: Tensor, v: Tensor, dropout_p: float) -> bool:
    """The C++ kernel covers float32 CPU tensors without attention dropout, ``v``'s head dim ``q``'s."""
    cpu32 = q.device.type == "cpu" and q.dtype == torch.float32
    return _KERNELS is not None and cpu32 and dropout_p == 0.0 and v.size(-1) == q.size(-1)


class FusedCandidateAttention(torch.autograd.Function):
    """Forward and backward of candidate attention in one C++ pass each (no gathered copies)."""

    @staticmethod
    def forward(
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, index: Tensor, kind: Tensor, scale: float, eps: float
    ) -> tuple[Tensor, Tensor]:
        out, weights, scores = _KERNELS.forward(q, k, v, index, kind, scale, eps)
        ctx.save_for_backward(q, k, v, index, kind, scores)
        ctx.scale, ctx.eps = scale, eps
        ctx.mark_non_differentiable(weights)
        return out, weights

    @staticmethod
    @once_differentiable  # a gradient of this gradient raises, never silently comes back zero
    def backward(ctx: Any, grad_out: Tensor, grad_weights: Tensor | None) -> tuple[Tensor | None, ...]:
        q, k, v, index, kind, scores = ctx.saved_tensors
        dq, dk, dv = _KERNELS.backward(
            grad_out, q.contiguous(), k.contiguous(), v.contiguous(), index, kind, scores, ctx.scale, ctx.eps
        )
        return dq, dk, dv, None, None, None, None


def check_impl(impl: str) -> None:
    """``impl`` is one of :data:`~structmt.attention.options.IMPLS`, or a ``ValueError`` naming them."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def choose_impl(
    impl: str, structure: Structure | CrossBand, num_keys: int, q: Tensor, v: Tensor, dropout_p: float
) -> str:
    """The path ``impl`` runs on: ``reference`` (dense mask), ``efficient`` (candidates, best kernel
    at hand) or ``triton`` (candidates, the Triton kernel).

    ``auto``: on CUDA the Triton kernel where it can run (:func:`~.triton_kernel.unusable`; not yet timed against the
    alternatives on a GPU); on CPU, with the fused C++ kernel, the efficient path, the faster one
    at every length we measured (from T = 16 up, forward+backward); without either, the
    pure-PyTorch gather path only pays once the dense score matrix is several times larger than
    the candidate set."""
    check_impl(impl)
    if impl != "auto":
        return impl
    kernel = candidate_kernel("auto", q, v, dropout_p)  # the one rule for which kernel runs
    if kernel != "gather":
        return "triton" if kernel == "triton" else "efficient"
    return "efficient" if num_keys >= 4 * structure.keys_per_query and num_keys > 64 else "reference"


def scatter_dense(weights: Tensor, kv_pos: Tensor, num_keys: int) -> Tensor:
    """Candidate weights ``(B, H, T, C)`` → dense ``(B, H, T, S)`` (only when asked for), in float32 at least."""
    weights = weights.to(torch.promote_types(weights.dtype, torch.float32))
    B, H, T, C = weights.shape
    valid = (kv_pos >= 0) & (kv_pos < num_keys)
    index = kv_pos.clamp(0, num_keys - 1).unsqueeze(1).expand(B, H, T, C)
    w = weights * valid.unsqueeze(1)
    return weights.new_zeros(B, H, T, num_keys).scatter_add_(-1, index, w)


def _rare_sets_of(rare_index: Tensor, batch: int, length: int) -> Tensor:
    """``(B, r)`` or ``(B, T, r)`` rare positions as ``(B, T, r)`` (checked)."""
    r = rare_index.size(-1)
    if rare_index.dtype not in (torch.int32, torch.int64) or rare_index.dim() not in (2, 3):
        raise ValueError(
            f"rare_index must be an int64 (or int32) tensor (B, r) or (B, T, r), got {rare_index.dtype} "
            f"{tuple(rare_index.shape)}"
        )
    want = (batch, r) if rare_index.dim() == 2 else (batch, length, r)
    if tuple(rare_index.shape) != want:
        raise ValueError(f"rare_index: expected shape {want}, got {tuple(rare_index.shape)}")
    sets = rare_index.long()
    return sets.unsqueeze(1).expand(batch, length, r) if sets.dim() == 2 else sets


def unique_positions(sets: Tensor) -> Tensor:
    """Rare sets with repeated positions counted once: a position that already appeared
    earlier in its set becomes -1 (an empty slot).  The slots keep their order."""
    if sets.size(-1) < 2:
        return sets
    # sorted stably, the first slot of each position comes first among its equals: the others are repeats
    # (O(r log r) per query; comparing every pair of slots took (..., r, r) memory, 7 TB at r = 100000)
    ordered, order = sets.sort(dim=-1, stable=True)
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[..., 1:] = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)
    return sets.masked_fill(torch.zeros_like(repeat).scatter(-1, order, repeat), -1)


def _structured_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int | Sequence[int],
    rare_index: Tensor | None,
    rare_heads: Sequence[bool] | Tensor | None,
    causal: bool,
    key_padding_mask: Tensor | None,
    sinks: int,
    sink_eps: float,
    dropout_p: float,
    impl: str,
    structure: Structure | None,
    need_weights: bool,
) -> tuple[Tensor, Tensor | None]:
    """What :func:`structured_attention` and :func:`structured_attention_with_weights` share: checks
    the inputs, plans and attends.  Returns the output and, with ``need_weights``, the dense weights."""
    check_inputs(q, k, v)
    B, H, T, _ = q.shape
    if k.size(2) != T:
        raise ValueError(f"self-attention: q and k must have the same length, got {tuple(q.shape)}, {tuple(k.shape)}")
    if rare_index is not None:
        _rare_sets_of(rare_index, B, T)  # its dtype and shape first: the range check misreads a uint8 tensor
        if rare_index.device != q.device:
            raise ValueError(f"rare_index must be on q's device ({q.device}), got {rare_index.device}")
    if rare_index is not None and rare_index.numel() and not ((rare_index >= -1) & (rare_index < T)).all():
        raise ValueError(
            f"rare_index holds key positions in [0, {T}) or -1 for an empty slot, got values from "
            f"{int(rare_index.min())} to {int(rare_index.max())} (token ids instead of positions?)"
        )
    r = 0 if rare_index is None else rare_index.size(-1)
    if structure is None:
        structure = _structure_for(H, window, r, rare_heads, causal, sinks, sink_eps)
    plan = self_attention_plan(structure, q, rare_index, key_padding_mask)
    return attend(q, k, v, plan, dropout_p=dropout_p, impl=impl, need_weights=need_weights)


def structured_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int | Sequence[int],
    rare_index: Tensor | None = None,
    rare_heads: Sequence[bool] | Tensor | None = None,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    sinks: int = 0,
    sink_eps: float = 0.0,
    dropout_p: float = 0.0,
    impl: str = "auto",
    structure: Structure | None = None,
) -> Tensor:
    """Attention restricted to band + rare columns (+ bounded error keys).

    Shaped like :func:`torch.nn.functional.scaled_dot_product_attention`:
    ``q, k, v`` are ``(batch, heads, T, head_dim)`` (self-attention, ``Tq == Tk``)
    and the output alone comes back.  With a band that covers every key
    (``window >= T - 1``) and no rare or error keys, it is SDPA under the same
    masks (``causal`` as ``is_causal``, key padding as a boolean ``attn_mask``),
    except that a query with no key to attend to gets a zero output, not NaN.
    For the weights as well: :func:`structured_attention_with_weights`.

    Args:
        window: band half-width, an int or one per head.
        rare_index: ``(B, r)`` rare key positions for every query, or
            ``(B, T, r)`` one set per query; -1 marks an empty slot.  A set is
            a set: a position repeated within it counts once.
        rare_heads: which heads see the rare columns (all by default).
        causal: also require ``kv <= q``.
        key_padding_mask: ``(B, T)``, True at padding (as in fairseq).
        sinks, sink_eps: error term, the first ``sinks`` real keys with weight
            at most ``sink_eps`` each.
        dropout_p: attention dropout (applied whenever ``> 0``, as in SDPA).
        impl: ``auto|reference|efficient|triton`` (see :func:`choose_impl`).
        structure: a prebuilt :class:`Structure` (overrides the above).
    Returns:
        the output ``(B, H, T, D)``.
    """
    out, _ = _structured_attention(
        q,
        k,
        v,
        window=window,
        rare_index=rare_index,
        rare_heads=rare_heads,
        causal=causal,
        key_padding_mask=key_padding_mask,
        sinks=sinks,
        sink_eps=sink_eps,
        dropout_p=dropout_p,
        impl=impl,
        structure=structure,
        need_weights=False,
    )
    return out


def structured_attention_with_weights(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int | Sequence[int],
    rare_index: Tensor | None = None,
    rare_heads: Sequence[bool] | Tensor | None = None,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    sinks: int = 0,
    sink_eps: float = 0.0,
    dropout_p: float = 0.0,
    impl: str = "auto",
    structure: Structure | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`structured_attention` that also returns the attention weights.

    The efficient paths only hold each query's candidate weights; the dense
    ``(B, H, T, T)`` weights are built for this call (``O(T²)`` memory).

    Args:
        as :func:`structured_attention`.
    Returns:
        ``(output (B, H, T, D), weights (B, H, T, T))``.  The weights are zero
        outside the structure and each row sums to 1, or is all zero for a query
        with no key to attend to; with ``dropout_p > 0`` they are the weights
        before dropout. Half-precision inputs get float32 weights (as fairseq's
        encoder-decoder attention returns its weights). The weights carry a
        gradient (a loss may use them): while autograd records, a fused kernel's
        are computed again on the reference path.
    """
    out, weights = _structured_attention(
        q,
        k,
        v,
        window=window,
        rare_index=rare_index,
        rare_heads=rare_heads,
        causal=causal,
        key_padding_mask=key_padding_mask,
        sinks=sinks,
        sink_eps=sink_eps,
        dropout_p=dropout_p,
        impl=impl,
        structure=structure,
        need_weights=True,
    )
    return out, cast(Tensor, weights)


def aligned_cross_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    slope: float = 1.0,
    key_padding_mask: Tensor | None = None,
    first_query: int = 0,
    dropout_p: float = 0.0,
    impl: str = "auto",
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Structured cross-attention: target position ``i`` attends to the source band
    ``|j - c(i)| <= window`` around ``c(i) = round(slope * i)`` (see :class:`CrossBand`).

    Args:
        q: ``(B, H, Tq, D)`` target queries at positions ``first_query ...``.
        k, v: ``(B, H, S, D)`` source keys and values.
        key_padding_mask: ``(B, S)``, True at source padding (left or right).
        need_weights: also return dense ``(B, H, Tq, S)`` weights.
    Returns:
        ``(output (B, H, Tq, D), weights or None)``.
    """
    check_inputs(q, k, v)
    check_padding_mask(key_padding_mask, q.size(0), k.size(2), q.device)
    check_source_padding(key_padding_mask)
    band = CrossBand(_integer(window, "window"), float(slope))
    plan = cross_attention_plan(band, q, k, key_padding_mask, first_query)
    return attend(q, k, v, plan, dropout_p=dropout_p, impl=impl, need_weights=need_weights)
