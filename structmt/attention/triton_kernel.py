"""Candidate attention as a Triton kernel (GPU), forward and backward.

The same contract as the fused C++ CPU kernel (``csrc/candidates.cpp``) and
:func:`structmt.attention.functional.candidate_attention`: every query row
``(b, h, t)`` attends over ``C`` candidate key positions ``index[b, t, :]`` of
``k, v``, each with a :class:`~structmt.attention.structure.Kind` (not allowed,
structured support, or error key of weight ``eps * sigmoid(score)``); no gathered ``(B, Tq, C, H, D)`` copy
and no ``Tq x S`` tensor.

Layout: one Triton program per query row, all ``C`` candidates and the whole
head dimension in one block (``C`` is small, 8-40; ``D`` is padded to a power
of two with a mask).  The backward recomputes the scores (nothing but the
inputs is saved), writes ``dq`` row by row and adds ``dk, dv`` with atomics
into fp32 buffers (candidates of different queries share keys), so ``dk, dv``
are not bitwise deterministic on a GPU.  Attention dropout draws its mask with
Philox (``tl.rand``) from a seed taken from torch's default generator, and the
backward regenerates it.

Triton is imported, and the kernels are defined, on first use only: importing
this module never needs triton.  On CPU tensors the kernels run in Triton's
interpreter, which needs ``TRITON_INTERPRET=1`` in the environment before this
module's first call (``triton.jit`` reads it when the kernels are defined).

The entry point is :func:`candidate_attention`, a wrapper of the custom op
``structmt::candidate_attention`` (with ``register_fake`` and autograd via
``structmt::candidate_attention_backward``), so ``torch.compile(fullgraph=True)``
traces through it.
"""

import contextlib
import functools
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from .structure import Kind, check_error_bound

__all__ = ["available", "candidate_attention", "dropout_keep_mask"]

#: the dtypes every attention path computes in (float8 has no softmax or matmul on most devices)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# --------------------------------------------------------------------------------------------------
# kernels (defined on first use)
# --------------------------------------------------------------------------------------------------


#: the oldest Triton the kernels are used with (pyproject.toml asks for it too; a Triton installed by other means is
#: checked here): their tests pass in the interpreters of Triton 3.2 to 3.9, while Triton 3.0 and 3.1 (torch 2.4
#: and 2.5) compute wrong weights there, and no GPU has run them
MIN_TRITON = (3, 2)


#: the oldest CUDA compute capability the kernels run on: Triton compiles atomic adds (the backward's) only from
#: sm_70 on (compiled for sm_60, a P100, without a GPU: the forward compiles, ptxas refuses the backward's
#: ``.relaxed`` atomics; docs/plugin.md has the command); torch's own Triton check asks for the same
MIN_CAPABILITY = (7, 0)


class TritonTooOld(ImportError):
    """The installed Triton is older than :data:`MIN_TRITON`."""


def release(version: str) -> tuple[int, ...]:
    """``(major, minor)`` of a Triton version string: ``"3.6.0+git1a2b"`` → ``(3, 6)``."""
    return tuple(int(n) for n in version.split("+")[0].split(".")[:2])


def check_triton_version(version: str) -> None:
    """Raise :class:`TritonTooOld` (saying what to do) for a Triton older than :data:`MIN_TRITON`."""
    if release(version) < MIN_TRITON:
        raise TritonTooOld(
            f"it needs Triton >= {'.'.join(map(str, MIN_TRITON))} (torch >= 2.6 brings one), and this environment "
            f"has Triton {version}; --struct-impl efficient runs the same attention without Triton"
        )


def _kernels() -> SimpleNamespace:
    """The kernels (:func:`_define_kernels`, once); raises what defining them raised (no Triton, a broken or a
    too old one), also once only: Python does not remember a failed import, and :func:`available` is asked at
    every structured layer of every forward."""
    found = _loaded()
    if isinstance(found, Exception):
        raise found.with_traceback(None)  # the same exception again: without it, its traceback grows each time
    return found


@functools.cache
def _loaded() -> SimpleNamespace | Exception:
    try:
        return _define_kernels()
    except Exception as err:  # kept: raised again by _kernels
        return err


def _define_kernels() -> SimpleNamespace:
    """Import triton and define the kernels.  They become module globals, because a Triton kernel
    resolves the helpers it calls (and ``tl``) in its module's globals, not in closures."""
    global triton, tl, _row_weights, _row, _keep, _fwd_kernel, _bwd_kernel, _keep_kernel, NOT_ALLOWED, SUPPORT, ERROR
    import triton
    import triton.language as tl

    check_triton_version(triton.__version__)

    # the Kind codes of structure.py, as compile-time constants of the kernels
    NOT_ALLOWED, SUPPORT, ERROR = (tl.constexpr(int(k)) for k in (Kind.NOT_ALLOWED, Kind.SUPPORT, Kind.ERROR))

    @triton.jit
    def _row_weights(s, kd, eps):
        """Softmax over the support (kind 1), error keys (kind 2) ``eps * sigmoid(s)`` when the row
        has a support; an empty support gives an all-zero row.  A support whose scores are all NaN or all -inf
        gives a NaN row, as torch.softmax does, so an overflow upstream reaches the loss.
        Returns p, sigmoid(s), E, w, has."""
        support = kd == SUPPORT
        has = tl.max(support.to(tl.int32), axis=0) > 0
        m = tl.max(tl.where(support, s, float("-inf")), axis=0)
        m = tl.where(has, m, 0.0)
        p = tl.exp(tl.where(support, s - m, float("-inf")))
        z = tl.sum(p, axis=0)
        p = p / tl.where(has, z, 1.0)
        sig = 1.0 / (1.0 + tl.exp(-s))
        e = tl.where(has, tl.where(kd == ERROR, eps * sig, 0.0), 0.0)  # (no `&` with a scalar: interpreter)
        e_total = tl.sum(e, axis=0)
        w = tl.where(support, p * (1.0 - e_total), e)
        return p, sig, e_total, w, has

    @triton.jit
    def _keep(seed, row, offs_c, C, dropout_p):
        """The dropout mask of one row: element ``row * C + c`` of a Philox stream."""
        return tl.rand(seed, row * C + offs_c) >= dropout_p

    @triton.jit
    def _row(
        Q, K, IDX, KIND, sqb, sqh, sqt, sqd, skb, skh, sks, skd, H, Tq, S, C, D, scale, eps,
        BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        """This program's query row: its (b, h, t), candidates, kinds, q, candidate keys and weights."""
        row = tl.program_id(0).to(tl.int64)
        t = row % Tq
        h = (row // Tq) % H
        b = row // (Tq * H)
        offs_c = tl.arange(0, BLOCK_C)
        offs_d = tl.arange(0, BLOCK_D)
        c_mask = offs_c < C
        d_mask = offs_d < D
        idx = tl.load(IDX + (b * Tq + t) * C + offs_c, mask=c_mask, other=0).to(tl.int64)
        idx = tl.minimum(tl.maximum(idx, 0), S - 1)
        kd = tl.load(KIND + row * C + offs_c, mask=c_mask, other=0)
        live = kd != NOT_ALLOWED
        q = tl.load(Q + b * sqb + h * sqh + t * sqt + offs_d * sqd, mask=d_mask, other=0.0).to(ACC)
        k_ptrs = K + b * skb + h * skh + idx[:, None] * sks + offs_d[None, :] * skd
        k = tl.load(k_ptrs, mask=live[:, None] & d_mask[None, :], other=0.0).to(ACC)
        s = tl.sum(k * q[None, :], axis=1) * scale
        p, sig, e_total, w, has = _row_weights(s, kd, eps)
        return row, b, h, t, idx, kd, live, q, k, p, sig, e_total, w, has

    @triton.jit
    def _fwd_kernel(
        Q, K, V, IDX, KIND, OUT, W,
        sqb, sqh, sqt, sqd, skb, skh, sks, skd, svb, svh, svs, svd,
        H, Tq, S, C, D, E, scale, eps, seed, dropout_p, keep_scale,
        BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
        DROPOUT: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        row, b, h, t, idx, kd, live, q, k, p, sig, e_total, w, has = _row(
            Q, K, IDX, KIND, sqb, sqh, sqt, sqd, skb, skh, sks, skd, H, Tq, S, C, D, scale, eps, BLOCK_C, BLOCK_D, ACC
        )
        offs_c = tl.arange(0, BLOCK_C)
        offs_e = tl.arange(0, BLOCK_E)
        c_mask = offs_c < C
        e_mask = offs_e < E
        wd = w
        if DROPOUT:
            wd = tl.where(_keep(seed, row, offs_c, C, dropout_p), w * keep_scale, 0.0)
        v_ptrs = V + b * svb + h * svh + idx[:, None] * svs + offs_e[None, :] * svd
        v = tl.load(v_ptrs, mask=(wd != 0.0)[:, None] & e_mask[None, :], other=0.0).to(ACC)
        out = tl.sum(wd[:, None] * v, axis=0)
        tl.store(OUT + row * E + offs_e, out.to(OUT.dtype.element_ty), mask=e_mask)
        tl.store(W + row * C + offs_c, w.to(W.dtype.element_ty), mask=c_mask)

    @triton.jit
    def _bwd_kernel(
        Q, K, V, IDX, KIND, G, DQ, DK, DV,
        sqb, sqh, sqt, sqd, skb, skh, sks, skd, svb, svh, svs, svd, sgb, sgh, sgt, sgd,
        H, Tq, S, C, D, E, scale, eps, seed, dropout_p, keep_scale,
        BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
        DROPOUT: tl.constexpr, ACC: tl.constexpr,
    ):  # fmt: skip
        row, b, h, t, idx, kd, live, q, k, p, sig, e_total, w, has = _row(
            Q, K, IDX, KIND, sqb, sqh, sqt, sqd, skb, skh, sks, skd, H, Tq, S, C, D, scale, eps, BLOCK_C, BLOCK_D, ACC
        )
        offs_c = tl.arange(0, BLOCK_C)
        offs_d = tl.arange(0, BLOCK_D)
        offs_e = tl.arange(0, BLOCK_E)
        d_mask = offs_d < D
        e_mask = offs_e < E
        g = tl.load(G + b * sgb + h * sgh + t * sgt + offs_e * sgd, mask=e_mask, other=0.0).to(ACC)
        v_ptrs = V + b * svb + h * svh + idx[:, None] * svs + offs_e[None, :] * svd
        # a row without a support (``has`` false) never uses dw: its weights and ds are all zero
        v = tl.load(v_ptrs, mask=live[:, None] & e_mask[None, :], other=0.0).to(ACC)
        dw = tl.sum(v * g[None, :], axis=1)  # d loss / d (dropped) weights
        wd = w
        if DROPOUT:
            keep = _keep(seed, row, offs_c, C, dropout_p)
            wd = tl.where(keep, w * keep_scale, 0.0)
            dw = tl.where(keep, dw * keep_scale, 0.0)
        pdw = tl.sum(p * dw, axis=0)  # sum over the support of p_c * dw_c
        ds_error = tl.where(has, tl.where(kd == ERROR, (dw - pdw) * eps * sig * (1.0 - sig), 0.0), 0.0)
        ds = tl.where(kd == SUPPORT, p * (1.0 - e_total) * (dw - pdw), ds_error) * scale
        dq = tl.sum(ds[:, None] * k, axis=0)
        tl.store(DQ + row * D + offs_d, dq.to(DQ.dtype.element_ty), mask=d_mask)
        # dk, dv: contiguous (B, H, S, D|E) accumulators shared by all rows of (b, h)
        key_rows = (b * H + h) * S + idx
        dk_ptrs = DK + key_rows[:, None] * D + offs_d[None, :]
        dv_ptrs = DV + key_rows[:, None] * E + offs_e[None, :]
        tl.atomic_add(dk_ptrs, ds[:, None] * q[None, :], mask=(ds != 0.0)[:, None] & d_mask[None, :], sem="relaxed")
        tl.atomic_add(dv_ptrs, wd[:, None] * g[None, :], mask=(wd != 0.0)[:, None] & e_mask[None, :], sem="relaxed")

    @triton.jit
    def _keep_kernel(KEEP, C, seed, dropout_p, BLOCK_C: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs_c = tl.arange(0, BLOCK_C)
        keep = _keep(seed, row, offs_c, C, dropout_p)
        tl.store(KEEP + row * C + offs_c, keep.to(tl.int8), mask=offs_c < C)

    interpreted = type(_fwd_kernel).__name__ == "InterpretedFunction"
    return SimpleNamespace(
        triton=triton, tl=tl, fwd=_fwd_kernel, bwd=_bwd_kernel, keep=_keep_kernel, interpreted=interpreted
    )


def unusable(device: torch.device | str | None = None) -> str:
    """Why the kernels cannot run, or "" where they can: triton (:data:`MIN_TRITON` or newer) must import; with
    ``device``, the kernels must run there (a CUDA device of :data:`MIN_CAPABILITY` or newer, or any device in
    Triton's interpreter, ``TRITON_INTERPRET=1``)."""
    try:
        kernels = _kernels()
    except Exception as err:  # not installed, or a broken install
        return f"triton does not import ({type(err).__name__}: {err})"
    if device is None or kernels.interpreted:
        return ""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"{device.type} tensors need Triton's interpreter (TRITON_INTERPRET=1)"
    if (capability := torch.cuda.get_device_capability(device)) < MIN_CAPABILITY:
        return (
            f"{torch.cuda.get_device_name(device)} is of compute capability {capability[0]}.{capability[1]}; the "
            f"backward's atomic adds need {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Volta on)"
        )
    return ""


def available(device: torch.device | str | None = None) -> bool:
    """Whether the kernels run (on ``device``): :func:`unusable` has no reason against them."""
    return not unusable(device)


def _ready(device: torch.device) -> SimpleNamespace:
    try:
        kernels = _kernels()
    except TritonTooOld as err:
        raise RuntimeError(f"structmt triton kernel: {err}") from err
    except ImportError as err:
        raise RuntimeError(
            "structmt triton kernel: triton is not installed (CUDA builds of torch bring the Triton they were built "
            "with; otherwise install the version your torch release pins, or `pip install -c constraints.txt triton` "
            "in the checkout for the tested one)"
        ) from err
    if device.type == "cuda" and not kernels.interpreted and (why := unusable(device)):
        raise RuntimeError(
            f"structmt triton kernel: {why}; attend with another kernel (--struct-impl auto or efficient when "
            "training, the same --model-overrides as below for a trained model)"
        )
    if device.type != "cuda" and not kernels.interpreted:
        raise RuntimeError(
            f"structmt triton kernel: {device.type} tensors need Triton's interpreter; set TRITON_INTERPRET=1 "
            "in the environment before the first call (before triton's JIT is first used), use a CUDA device, or "
            "attend with another kernel (--struct-impl auto or efficient when training; a trained model: "
            "--model-overrides \"{'struct_impl': 'auto'}\" for fairseq-generate, --struct-impl auto for "
            "structmt-translate; impl= of the functional API)"
        )
    return kernels


def _on(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Where a launch runs: Triton launches on the current CUDA device (and its stream), which need not be the one
    the tensors are on (the functional API on ``cuda:1``; a model split over GPUs)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


#: elements of a ``(BLOCK_C, BLOCK_D)`` tile each thread holds, per kernel (the warp count follows)
PER_THREAD = {"fwd": 16, "bwd": 8}


def _launch_config(
    kernels: SimpleNamespace, C: int, D: int, E: int, kernel: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Block sizes, and enough warps that each thread holds about ``PER_THREAD[kernel]`` elements of a
    ``(BLOCK_C, BLOCK_D)`` tile (registers a thread on sm_90: ``structmt-bench compile``)."""
    per_thread = PER_THREAD[kernel]
    next_pow2 = kernels.triton.next_power_of_2
    block_c, block_d, block_e = next_pow2(C), next_pow2(D), next_pow2(E)
    num_warps = min(16, max(1, block_c * max(block_d, block_e) // (32 * per_thread)))
    # fused multiply-add named, not left to the Triton version's default (on through 3.9, off from 3.10)
    blocks = {"BLOCK_C": block_c, "BLOCK_D": block_d, "BLOCK_E": block_e}
    return blocks, {"num_warps": num_warps, "enable_fp_fusion": True}


def _acc(kernels: SimpleNamespace, dtype: torch.dtype) -> Any:
    return kernels.tl.float64 if dtype == torch.float64 else kernels.tl.float32


def _dropout_args(dropout_p: float, seed: Tensor | None) -> tuple[int, float, float, bool]:
    if dropout_p <= 0.0:
        return 0, 0.0, 1.0, False
    if seed is None:
        raise ValueError("structmt triton kernel: dropout_p > 0 needs a seed")
    keep_scale = 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0
    return int(seed), float(dropout_p), keep_scale, True


# --------------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------------


def weights_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the weights for inputs of ``dtype``: the accumulation's (float32, float64 for float64)."""
    return torch.promote_types(dtype, torch.float32)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, index: Tensor, kind: Tensor, dropout_p: float) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (B, H, T, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, Tq, D = q.shape
    if k.shape[:2] != (B, H) or v.shape[:3] != k.shape[:3] or k.size(3) != D:
        raise ValueError(f"q, k, v: got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if index.dim() != 3 or index.shape[:2] != (B, Tq):
        raise ValueError(f"index must be (B, Tq, C) = ({B}, {Tq}, C); got {tuple(index.shape)}")
    if kind.shape != (B, H, Tq, index.size(2)):
        raise ValueError(f"kind must be (B, H, Tq, C) = {(B, H, Tq, index.size(2))}; got {tuple(kind.shape)}")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one of {DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if index.dtype not in (torch.int64, torch.int32) or kind.dtype not in (torch.int8, torch.uint8):
        raise TypeError(f"index must be int64 (or int32) and kind int8; got {index.dtype}, {kind.dtype}")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    elsewhere = [
        (n, x.device) for n, x in (("k", k), ("v", v), ("index", index), ("kind", kind)) if x.device != q.device
    ]
    if elsewhere:  # the kernel reads them by pointer: another device's memory, or none (meta), read as garbage
        raise ValueError(f"q, k, v, index and kind must be on one device; q is on {q.device}, {elsewhere}")


@torch.library.custom_op("structmt::candidate_attention", mutates_args=())
def _candidate_attention_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    kind: Tensor,
    scale: float,
    eps: float,
    dropout_p: float,
    seed: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Forward: output ``(B, H, Tq, Dv)`` in q's dtype and pre-dropout weights ``(B, H, Tq, C)`` in
    :func:`weights_dtype`."""
    _check_inputs(q, k, v, index, kind, dropout_p)
    B, H, Tq, D = q.shape
    S, E, C = k.size(2), v.size(3), index.size(2)
    out = q.new_empty((B, H, Tq, E))
    weights = q.new_empty((B, H, Tq, C), dtype=weights_dtype(q.dtype))
    if B * H * Tq == 0 or C == 0 or S == 0:
        return out.zero_(), weights.zero_()
    kernels = _ready(q.device)
    seed_value, p, keep_scale, dropout = _dropout_args(dropout_p, seed)
    blocks, launch = _launch_config(kernels, C, D, E, "fwd")
    with _on(q.device):
        kernels.fwd[(B * H * Tq,)](
            q, k, v, index.contiguous(), kind.contiguous(), out, weights,
            *q.stride(), *k.stride(), *v.stride(),
            H, Tq, S, C, D, E, float(scale), float(eps), seed_value, p, keep_scale,
            **blocks, DROPOUT=dropout, ACC=_acc(kernels, q.dtype), **launch,
        )  # fmt: skip
    return out, weights


@_candidate_attention_op.register_fake
def _(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    kind: Tensor,
    scale: float,
    eps: float,
    dropout_p: float,
    seed: Tensor | None,
) -> tuple[Tensor, Tensor]:
    B, H, Tq, _ = q.shape
    return q.new_empty((B, H, Tq, v.size(3))), q.new_empty((B, H, Tq, index.size(2)), dtype=weights_dtype(q.dtype))


@torch.library.custom_op("structmt::candidate_attention_backward", mutates_args=())
def _candidate_attention_backward_op(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    kind: Tensor,
    scale: float,
    eps: float,
    dropout_p: float,
    seed: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward: ``dq, dk, dv`` (scores recomputed, the dropout mask regenerated from ``seed``)."""
    B, H, Tq, D = q.shape
    S, E, C = k.size(2), v.size(3), index.size(2)
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    dq = torch.zeros_like(q, memory_format=torch.contiguous_format)
    dk = torch.zeros((B, H, S, D), dtype=acc_dtype, device=q.device)
    dv = torch.zeros((B, H, S, E), dtype=acc_dtype, device=q.device)
    if B * H * Tq > 0 and C > 0 and S > 0:
        kernels = _ready(q.device)
        seed_value, p, keep_scale, dropout = _dropout_args(dropout_p, seed)
        blocks, launch = _launch_config(kernels, C, D, E, "bwd")
        with _on(q.device):
            kernels.bwd[(B * H * Tq,)](
                q, k, v, index.contiguous(), kind.contiguous(), grad_out, dq, dk, dv,
                *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(),
                H, Tq, S, C, D, E, float(scale), float(eps), seed_value, p, keep_scale,
                **blocks, DROPOUT=dropout, ACC=_acc(kernels, q.dtype), **launch,
            )  # fmt: skip
    return dq, dk.to(k.dtype), dv.to(v.dtype)


@_candidate_attention_backward_op.register_fake
def _(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    kind: Tensor,
    scale: float,
    eps: float,
    dropout_p: float,
    seed: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        torch.empty_like(v, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    q, k, v, index, kind, scale, eps, dropout_p, seed = inputs
    ctx.save_for_backward(q, k, v, index, kind, seed)
    ctx.scale, ctx.eps, ctx.dropout_p = scale, eps, dropout_p
    ctx.mark_non_differentiable(output[1])


def _backward(ctx: Any, grad_out: Tensor, grad_weights: Tensor | None) -> tuple[Tensor | None, ...]:
    q, k, v, index, kind, seed = ctx.saved_tensors
    dq, dk, dv = torch.ops.structmt.candidate_attention_backward(
        grad_out, q, k, v, index, kind, ctx.scale, ctx.eps, ctx.dropout_p, seed
    )
    return dq, dk, dv, None, None, None, None, None, None


_candidate_attention_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def candidate_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    kind: Tensor,
    scale: float,
    eps: float = 0.0,
    dropout_p: float = 0.0,
    check_index: bool = True,
) -> tuple[Tensor, Tensor]:
    """Attend from ``q`` ``(B, H, Tq, D)`` over the candidate keys ``index`` ``(B, Tq, C)`` (in
    ``[0, S-1]``, shared by all heads) of ``k, v`` ``(B, H, S, D)``.  An index outside that range is a
    ``ValueError`` (the kernel itself would read key 0 or S-1 in its place), and so are ``kind`` codes other
    than 0, 1, 2 and an ``eps`` that, times the error keys of a row, reaches 1 (other weights would go
    negative); ``check_index=False`` skips those checks, which wait for the GPU, where the indices and kinds
    come from structmt's own plans (``eps >= 0`` is always checked).

    ``kind`` ``(B, H, Tq, C)`` int8: 0 not allowed, 1 structured support, 2 error key (weight
    ``eps * sigmoid(score)``); ``scale`` multiplies ``q . k`` (usually ``1/sqrt(D)``);
    ``dropout_p``: attention dropout on the final weights, its seed drawn from torch's default
    generator.  fp32, fp16, bf16 (and fp64) inputs, accumulated in fp32 (fp64).

    Returns the output ``(B, H, Tq, D)`` in q's dtype and the pre-dropout candidate weights
    ``(B, H, Tq, C)`` in float32 at least (:func:`weights_dtype`: as computed, not rounded to a half
    dtype); differentiable w.r.t. ``q, k, v`` (the weights are not).
    """
    _check_inputs(q, k, v, index, kind, dropout_p)
    if check_index and index.numel() and (int(index.min()) < 0 or int(index.max()) >= k.size(2)):
        raise ValueError(
            f"index holds key positions outside [0, {k.size(2)}) (min {int(index.min())}, max {int(index.max())}); "
            "mark an empty slot with kind 0 and any valid position"
        )
    if check_index and kind.numel():
        if int(kind.min()) < 0 or int(kind.max()) > 2:
            raise ValueError(f"kind holds codes outside 0, 1, 2 (min {int(kind.min())}, max {int(kind.max())})")
    check_error_bound(int((kind == 2).sum(-1).max()) if check_index and kind.numel() else 0, eps)
    seed = torch.randint(2**31 - 1, (), dtype=torch.int64) if dropout_p > 0.0 else None
    return torch.ops.structmt.candidate_attention(q, k, v, index, kind, float(scale), float(eps), dropout_p, seed)


def dropout_keep_mask(seed: int | Tensor, shape: tuple[int, int, int, int], dropout_p: float, device: Any) -> Tensor:
    """The boolean keep-mask ``(B, H, Tq, C)`` the kernels draw for ``seed`` (for tests and debugging)."""
    B, H, Tq, C = shape
    keep = torch.zeros(shape, dtype=torch.int8, device=device)
    if B * H * Tq > 0 and C > 0:
        kernels = _ready(keep.device)
        block_c = kernels.triton.next_power_of_2(C)
        with _on(keep.device):
            kernels.keep[(B * H * Tq,)](keep, C, int(seed), float(dropout_p), BLOCK_C=block_c, num_warps=1)
    return keep.bool()
