"""Structured cross-attention: the aligned band, its kernels and its module."""

import numpy as np
import pytest
import torch
from conftest import assert_close_all
from fairseq.modules.multihead_attention import MultiheadAttention
from hypothesis import given, settings
from hypothesis import strategies as st

import structmt.attention.functional as functional
from structmt.attention import CrossBand, aligned_cross_attention
from structmt.attention.multihead import StructuredCrossAttention
from structmt.attention.structure import aligned_centers


def _cross_with_grads(q, k, v, pad, impl, **band):
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    out, w = aligned_cross_attention(qq, kk, vv, key_padding_mask=pad, impl=impl, need_weights=True, **band)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), w, qq.grad, kk.grad, vv.grad


def _source_padding(lengths: list[int], S: int, left: bool) -> torch.Tensor:
    pos = torch.arange(S)
    n = torch.tensor(lengths)[:, None]
    return (pos < S - n) if left else (pos >= n)


def test_centres_follow_the_slope_from_the_first_real_token_and_stop_at_the_last():
    pad = _source_padding([6, 3], 6, left=True)  # row 1: positions 3, 4, 5 are real
    centres = aligned_centers(pad, 2, 6, torch.arange(8), slope=0.5)
    assert centres.tolist() == [[0, 1, 1, 2, 2, 3, 3, 4], [3, 4, 4, 5, 5, 5, 5, 5]]  # round half up, clamped
    right = aligned_centers(_source_padding([6, 3], 6, left=False), 2, 6, torch.arange(4) + 2, slope=1.0)
    assert right.tolist() == [[2, 3, 4, 5], [2, 2, 2, 2]]


def test_weights_live_exactly_on_the_band():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 7, 4), torch.randn(2, 2, 7, 4)
    pad = _source_padding([7, 4], 7, left=True)
    for impl in ("reference", "efficient"):
        _, w = aligned_cross_attention(q, k, v, window=1, slope=1.0, key_padding_mask=pad, impl=impl, need_weights=True)
        allowed = torch.zeros(2, 5, 7, dtype=torch.bool)
        for b, (start, n) in enumerate([(0, 7), (3, 4)]):
            for i in range(5):
                c = start + min(i, n - 1)
                allowed[b, i, max(start, c - 1) : min(start + n, c + 2)] = True
        assert torch.equal(w > 0, allowed.unsqueeze(1).expand_as(w)), impl
        assert torch.allclose(w.sum(-1), torch.ones(2, 2, 5))


@pytest.mark.parametrize("left", [True, False])
def test_wide_band_equals_fairseq_encoder_decoder_attention(left):
    torch.manual_seed(1)
    E, H, T, S, B = 32, 4, 6, 9, 3
    dense = MultiheadAttention(E, H, encoder_decoder_attention=True).eval()
    ours = StructuredCrossAttention.from_dense(dense, CrossBand(S - 1, slope=0.6))
    assert list(dict(ours.named_parameters())) == list(dict(dense.named_parameters()))
    x, mem = torch.randn(T, B, E), torch.randn(S, B, E)
    pad = _source_padding([9, 5, 2], S, left)
    for impl in ("reference", "efficient"):
        ours.impl = impl
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        m1, m2 = mem.clone().requires_grad_(), mem.clone().requires_grad_()
        want, want_w = dense(x1, m1, m1, key_padding_mask=pad, static_kv=True, need_weights=True)
        got, got_w = ours(x2, m2, m2, key_padding_mask=pad, static_kv=True, need_weights=True)
        assert_close_all((want, want_w), (got, got_w), 1e-5)
        g = torch.randn_like(want)
        (want * g).sum().backward()
        (got * g).sum().backward()
        assert_close_all((x1.grad, m1.grad), (x2.grad, m2.grad), 1e-5)


def test_fused_kernel_and_python_gather_path_agree(monkeypatch):
    assert functional._KERNELS is not None, "the C++ kernel was not built by make install"
    gen = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(3, 2, 13, 8, generator=gen), torch.randn(3, 2, 10, 8, generator=gen), torch.randn(3, 2, 10, 8)
    pad = _source_padding([10, 6, 1], 10, left=True)
    results = []
    for kernels in (functional._KERNELS, None):
        monkeypatch.setattr(functional, "_KERNELS", kernels)
        results.append(_cross_with_grads(q, k, v, pad, "efficient", window=2, slope=0.8))
    assert_close_all(*results)


@pytest.mark.reliability
@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    tgt=st.integers(1, 30),
    src=st.integers(1, 30),
    window=st.integers(0, 6),
    slope=st.floats(0.2, 2.5),
    left=st.booleans(),
    lengths=st.lists(st.integers(1, 30), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_efficient_equals_reference(batch, tgt, src, window, slope, left, lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 2, tgt, 8, generator=gen)
    k, v = (torch.randn(batch, 2, src, 8, generator=gen) for _ in range(2))
    pad = _source_padding([src] + [min(n, src) for n in lengths[1:batch]], src, left)
    reference = _cross_with_grads(q, k, v, pad, "reference", window=window, slope=slope)
    efficient = _cross_with_grads(q, k, v, pad, "efficient", window=window, slope=slope)
    assert_close_all(reference[:2], efficient[:2], 1e-5)
    assert_close_all(reference[2:], efficient[2:], 1e-4)


@pytest.mark.reliability  # docs/reliability.md
def test_bad_band_is_refused():
    with pytest.raises(ValueError, match="half-width must be an integer >= 0"):
        CrossBand(-1)
    with pytest.raises(ValueError, match="half-width must be an integer >= 0"):
        CrossBand(1.5)
    for slope in (0.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="slope .* must be finite and > 0"):
            CrossBand(2, slope=slope)
    with pytest.raises(ValueError, match="encoder-decoder attention"):
        StructuredCrossAttention.from_dense(MultiheadAttention(8, 2, self_attention=True), CrossBand(1))


@pytest.mark.reliability  # docs/reliability.md
def test_inputs_that_do_not_fit_are_rejected_naming_the_argument():
    q, k = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 7, 8)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    cases = [
        (TypeError, "key_padding_mask must be a bool tensor", dict(key_padding_mask=mask.to(torch.uint8))),
        (ValueError, r"key_padding_mask must be \(batch, keys\) = \(2, 7\)", dict(key_padding_mask=mask[:, :6])),
        (ValueError, "must be contiguous", dict(key_padding_mask=torch.tensor([[0, 1, 0, 1, 1, 1, 1]] * 2).bool())),
        (TypeError, "window must be an integer", dict(window=1.5)),
        (ValueError, "first_query must be >= 0", dict(first_query=-3)),
        (TypeError, "first_query must be an integer", dict(first_query=1.5)),
        (ValueError, "do not fit together", dict(k=torch.randn(2, 2, 7, 4))),
        (ValueError, "slope", dict(slope=float("inf"))),
    ]
    for impl in ("reference", "efficient"):
        for error, message, bad in cases:
            kwargs = dict(k=k, window=1, impl=impl) | bad
            key = kwargs.pop("k")
            with pytest.raises(error, match=message):
                aligned_cross_attention(q, key, key, **kwargs)
    # NumPy and 0-d tensor integers are windows and positions
    out, _ = aligned_cross_attention(q, k, k, window=1, key_padding_mask=mask, first_query=2)
    again, _ = aligned_cross_attention(q, k, k, window=np.int64(1), key_padding_mask=mask, first_query=torch.tensor(2))
    assert torch.equal(out, again)


def test_a_huge_slope_puts_every_later_centre_on_the_last_real_token():
    """Centres past the last real source token clamp to it, however far past (no integer overflow)."""
    q, k = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 7, 8)
    mask = torch.tensor([[0, 0, 0, 0, 0, 1, 1], [1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    centers = aligned_centers(mask, 2, 7, torch.arange(5), 1e300)
    assert centers.tolist() == [[0, 4, 4, 4, 4], [1, 6, 6, 6, 6]]
    for impl in ("reference", "efficient"):
        huge, _ = aligned_cross_attention(q, k, k, window=1, slope=1e300, key_padding_mask=mask, impl=impl)
        large, _ = aligned_cross_attention(q, k, k, window=1, slope=100.0, key_padding_mask=mask, impl=impl)
        assert torch.equal(huge, large), impl


def test_a_band_wider_than_the_source_costs_and_computes_what_s_minus_1_does():
    """Every centre is a real source position, so a half-width past S - 1 reaches no further key: the
    efficient path gathers 2S - 1 candidates for a window of 10⁹ and gives window S - 1's results exactly."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = torch.randn(2, 2, 5, 8, generator=gen), torch.randn(2, 2, 6, 8, generator=gen), torch.randn(2, 2, 6, 8)
    pad = _source_padding([6, 3], 6, left=True)
    wide = _cross_with_grads(q, k, v, pad, "efficient", window=10**9, slope=0.7)
    cut = _cross_with_grads(q, k, v, pad, "efficient", window=5, slope=0.7)
    for got, want in zip(wide, cut, strict=True):
        assert torch.equal(got, want)
    kv_pos, _, kind = functional.cross_attention_plan(CrossBand(10**9, 0.7), q, k, pad).candidates()
    assert kv_pos.shape == (2, 5, 11) and kind.shape == (2, 2, 5, 11)
    assert_close_all(wide, _cross_with_grads(q, k, v, pad, "reference", window=10**9, slope=0.7))


@pytest.mark.parametrize("impl", ["reference", "efficient", "triton"])
@pytest.mark.reliability  # docs/reliability.md
def test_an_empty_source_gives_zero_rows_in_every_impl(impl):
    """No source key at all (S = 0): every query's row is empty, so the output is zero with zero
    gradients, and the weights are (B, H, Tq, 0); the efficient paths must not gather from nothing."""
    q, k = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 0, 8)
    out, weights, dq, dk, dv = _cross_with_grads(q, k, k, None, impl, window=2)
    assert torch.equal(out, torch.zeros(2, 2, 3, 8)) and torch.equal(dq, torch.zeros_like(q))
    assert weights.shape == (2, 2, 3, 0) and dk.shape == dv.shape == (2, 2, 0, 8)


def test_training_builds_no_dense_weights_and_computes_the_same_output(monkeypatch):
    """fairseq's decoder asks its last layer for cross-attention weights at every step; in training (where only the
    refused alignment criteria read them) the block builds none, and its output and gradients are those of eval."""
    torch.manual_seed(2)
    E, H, T, S, B = 32, 4, 6, 9, 3
    block = StructuredCrossAttention.from_dense(
        MultiheadAttention(E, H, encoder_decoder_attention=True, dropout=0.0), CrossBand(2, slope=0.6)
    )
    x, mem, pad = torch.randn(T, B, E), torch.randn(S, B, E), _source_padding([9, 5, 2], S, True)
    asked = []
    attend = functional.attend
    monkeypatch.setattr(
        "structmt.attention.multihead.attend", lambda *a, **k: asked.append(k["need_weights"]) or attend(*a, **k)
    )
    outs = {}
    for mode in ("train", "eval"):
        getattr(block, mode)()
        block.zero_grad()
        out, weights = block(x, mem, mem, key_padding_mask=pad, static_kv=True, need_weights=True)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        outs[mode] = (out, block.q_proj.weight.grad.clone(), weights)
    assert asked == [False, True]
    assert outs["train"][2] is None and outs["eval"][2].shape == (B, T, S)
    assert_close_all(outs["train"][:2], outs["eval"][:2], 1e-6)


def test_a_decoding_step_at_a_position_the_source_cache_contradicts_is_refused():
    """The first step (position 0) projects the source and caches it; every later step reads it back. A step
    context built from the last token alone said position 0 at every step and centred each step's band on the
    first source token: translations off, no error. A stale cache at position 0 is the source of another batch."""
    from structmt.attention.context import TokenContext

    torch.manual_seed(3)
    E, S = 16, 7
    cross = StructuredCrossAttention.from_dense(MultiheadAttention(E, 2, encoder_decoder_attention=True), CrossBand(1))
    cross.eval()
    x, mem = torch.randn(3, 1, E), torch.randn(S, 1, E)
    tokens, counts, never = (
        torch.tensor([[5, 6, 7]]),
        torch.ones(10, dtype=torch.long),
        torch.zeros(10, dtype=torch.bool),
    )
    full = cross(x, mem, mem, static_kv=True, need_weights=False)[0]

    def step(state: dict, t: int, prefix: torch.Tensor) -> torch.Tensor:
        context = TokenContext.from_tokens(prefix, counts, never, incremental=True)
        return cross(x[t : t + 1], mem, mem, incremental_state=state, static_kv=True, context=context)[0]

    state: dict = {}
    torch.testing.assert_close(torch.cat([step(state, t, tokens[:, : t + 1]) for t in range(3)]), full)
    state = {}
    step(state, 0, tokens[:, :1])
    with pytest.raises(RuntimeError, match="at target position 0 finds a source projected by an earlier step"):
        step(state, 1, tokens[:, 1:2])  # the last token alone: position 0
    with pytest.raises(RuntimeError, match="at target position 2 finds no source cache"):
        step({}, 2, tokens)
