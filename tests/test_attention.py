"""The structured attention kernels: equivalences, supports, rare selection."""

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_all, assert_dropped, attention_with_grads
from fairseq.modules.multihead_attention import MultiheadAttention

from structmt.attention import (
    CrossBand,
    Structure,
    rare_sets,
    rarity_keys,
    structured_attention,
    structured_attention_with_weights,
)
from structmt.attention.functional import reference_attention, self_attention_plan
from structmt.attention.multihead import StructuredCrossAttention, StructuredMultiheadAttention
from structmt.attention.structure import (
    NEVER_RARE,
    POSITION_SPAN,
    make_supports,
    parse_role_mix,
    parse_role_spec,
    roles_from_file,
    roles_json,
    sink_positions,
)


def _padding(B: int, T: int, gen: torch.Generator, left: bool = False) -> torch.Tensor:
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    pos = torch.arange(T)
    return (pos.flip(0) >= lengths[:, None]) if left else (pos >= lengths[:, None])


def test_full_window_equals_fairseq_multihead_attention():
    torch.manual_seed(0)
    E, H, T, B = 32, 4, 11, 3
    dense = MultiheadAttention(E, H, self_attention=True).eval()
    structure = Structure.from_roles(["syntactic"] * H, window=T - 1)
    ours = StructuredMultiheadAttention(E, H, structure, impl="reference").eval()
    ours.load_state_dict(dense.state_dict())
    x = torch.randn(T, B, E)
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, -3:] = True
    for impl in ("reference", "efficient"):
        ours.impl = impl
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        want, want_w = dense(x1, x1, x1, key_padding_mask=pad, need_weights=True)
        got, got_w = ours(x2, x2, x2, key_padding_mask=pad, need_weights=True)
        assert (got - want).abs().max() <= 1e-5
        assert (got_w - want_w).abs().max() <= 1e-5
        without, none = ours(x, x, x, key_padding_mask=pad, need_weights=False)
        assert none is None and (without - got).abs().max() <= 1e-5
        # need_head_weights implies need_weights (fairseq's documented rule): the (H, B, T, S) weights of each head
        _, heads = ours(x, x, x, key_padding_mask=pad, need_weights=False, need_head_weights=True)
        assert heads.shape == (H, B, T, T) and (heads.mean(0) - got_w).abs().max() <= 1e-6
        g = torch.randn_like(want)
        (want * g).sum().backward()
        (got * g).sum().backward()
        assert (x1.grad - x2.grad).abs().max() <= 1e-5
        for p in ours.parameters():
            p.grad = None
        dense.zero_grad()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_are_float32_as_fairseqs(dtype):
    """fairseq's encoder-decoder attention (``static_kv=True``, as its decoder calls it) returns its float32
    softmax as the weights whatever the inputs' precision; ours came back rounded to the inputs' dtype (rows off
    1 by 1e-3 in bf16). Self-attention's weights are float32 too."""
    torch.manual_seed(0)
    E, H, T, S, B = 32, 4, 7, 11, 3
    dense = MultiheadAttention(E, H, encoder_decoder_attention=True).eval().to(dtype)
    cross = StructuredCrossAttention.from_dense(dense, CrossBand(window=S)).eval()
    block = StructuredMultiheadAttention(E, H, Structure.from_roles(["syntactic"] * H, window=2)).eval().to(dtype)
    x, memory = torch.randn(T, B, E, dtype=dtype), torch.randn(S, B, E, dtype=dtype)
    _, want = dense(x, memory, memory, static_kv=True, need_weights=True, need_head_weights=True)
    for impl in ("reference", "efficient"):
        cross.impl = block.impl = impl
        _, got = cross(x, memory, memory, static_kv=True, need_weights=True, need_head_weights=True)
        _, own = block(x, x, x, need_weights=True)
        assert want.dtype == got.dtype == own.dtype == torch.float32, impl
        assert (got - want).abs().max() <= 2e-2  # both compute the scores in the inputs' precision
        for w in (got, own):
            torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-6, rtol=0)


def test_parameter_names_match_fairseq():
    dense = MultiheadAttention(16, 2, self_attention=True)
    ours = StructuredMultiheadAttention.from_dense(dense, Structure.from_roles(["syntactic", "rare"], window=2, rare=1))
    assert list(dict(ours.named_parameters())) == list(dict(dense.named_parameters()))


def _random_case(seed: int):
    rnd, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    B, H, D = rnd.randint(1, 3), rnd.choice([1, 2, 4]), 8
    T = rnd.randint(1, 40)
    roles = [rnd.choice(["positional", "syntactic", "rare"]) for _ in range(H)]
    causal = rnd.random() < 0.5
    r = rnd.randint(0, 4)
    sinks = rnd.randint(0, 2)
    structure = Structure.from_roles(
        roles,
        window=rnd.randint(0, 6),
        pos_window=rnd.randint(0, 1),
        rare=r,
        causal=causal,
        sinks=sinks,
        sink_eps=0.1 if sinks else 0.0,
    )
    q, k, v = (torch.randn(B, H, T, D, generator=gen) for _ in range(3))
    pad = _padding(B, T, gen, left=not causal and rnd.random() < 0.5) if rnd.random() < 0.7 else None
    counts = torch.randint(1, 50, (30,), generator=gen)
    never = torch.zeros(30, dtype=torch.bool)
    never[:4] = True
    tokens = torch.randint(0, 30, (B, T), generator=gen)
    if pad is not None:
        tokens = tokens.masked_fill(pad, 1)
    sets = rare_sets(rarity_keys(tokens, counts, never), r, causal)
    return structure, q, k, v, pad, sets


@pytest.mark.parametrize("seed", range(40))
def test_reference_and_efficient_agree(seed):
    structure, q, k, v, pad, sets = _random_case(seed)
    reference = attention_with_grads(structure, q, k, v, pad, sets, "reference", loss=torch.sum)
    efficient = attention_with_grads(structure, q, k, v, pad, sets, "efficient", loss=torch.sum)
    assert_close_all(reference, efficient)


@pytest.mark.parametrize("seed", range(20))
def test_weights_vanish_outside_support_and_rows_sum_to_one(seed):
    structure, q, k, v, pad, sets = _random_case(seed)
    B, H, T, _ = q.shape
    _, w = structured_attention_with_weights(
        q, k, v, window=structure.window, rare_index=sets, key_padding_mask=pad, impl="efficient", structure=structure
    )
    # the declared support, written out directly from the definitions in docs/design.md §1.2
    allowed = torch.zeros(B, H, T, T, dtype=torch.bool)
    structured = torch.zeros(B, H, T, T, dtype=torch.bool)
    # the error keys: the first `sinks` real (non-padding) keys of each sequence, wherever its padding lies
    sinks = [[j for j in range(T) if pad is None or not pad[b, j]][: structure.sinks] for b in range(B)]
    for b in range(B):
        for h in range(H):
            for i in range(T):
                for j in range(T):
                    if pad is not None and pad[b, j]:
                        continue
                    if structure.causal and j > i:
                        continue
                    in_band = abs(i - j) <= structure.window[h]
                    in_rare = structure.rare_heads[h] and j in sets[b, i].tolist()
                    is_sink = j in sinks[b]
                    allowed[b, h, i, j] = in_band or in_rare or is_sink
                    structured[b, h, i, j] = in_band or in_rare
    assert torch.all(w[~allowed] == 0)
    has_key = structured.any(-1)
    assert torch.allclose(w.sum(-1)[has_key], torch.ones(()), atol=1e-5)
    assert torch.all(w.sum(-1)[~has_key] == 0)
    if structure.sinks:
        is_error = torch.zeros_like(allowed)
        for b in range(B):
            for h in range(H):
                for i in range(T):
                    for j in sinks[b]:
                        if allowed[b, h, i, j] and not (
                            abs(i - j) <= structure.window[h] or (structure.rare_heads[h] and j in sets[b, i].tolist())
                        ):
                            is_error[b, h, i, j] = True
        # each error key of a row that has a support weighs eps * sigmoid(q.k / sqrt(d)) (docs/design.md §1.2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
        counted = is_error & has_key.unsqueeze(-1)
        torch.testing.assert_close(w[counted], structure.sink_eps * torch.sigmoid(scores[counted]))


@pytest.mark.parametrize("impl", ["reference", "efficient"])
def test_error_keys_are_the_first_real_keys_under_left_padding(impl):
    """fairseq left-pads sources: the error keys are each sentence's first real keys, not positions 0..K-1."""
    B, H, T, D, eps = 2, 1, 6, 4, 0.1
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[0, :2] = True  # sentence 0: two padding keys first
    assert sink_positions(pad, B, T, 2, torch.device("cpu")).tolist() == [[2, 3], [0, 1]]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=gen) for _ in range(3))
    structure = Structure.from_roles(["syntactic"], window=0, rare=0, sinks=2, sink_eps=eps)
    no_rare = torch.full((B, T, 0), NEVER_RARE, dtype=torch.long)
    _, w = structured_attention_with_weights(
        q, k, v, window=structure.window, rare_index=no_rare, key_padding_mask=pad, impl=impl, structure=structure
    )
    error = eps * torch.sigmoid(q @ k.transpose(-1, -2) / math.sqrt(D))
    want = torch.zeros(B, H, T, T)
    for b, first in ((0, 2), (1, 0)):
        for i in range(first, T):  # a padding query has no support (its own key is padding): no weight at all
            errors = [j for j in (first, first + 1) if j != i]  # a key inside the band is not an error key
            for j in errors:
                want[b, 0, i, j] = error[b, 0, i, j]
            want[b, 0, i, i] = 1.0 - sum(error[b, 0, i, j] for j in errors)  # the support keeps the rest
    torch.testing.assert_close(w, want)


@pytest.mark.parametrize("impl", ["reference", "efficient"])
def test_attention_dropout_zeroes_weights_at_its_rate_and_rescales_the_rest(impl):
    """dropout_p drops attention weights, not outputs: with one-hot values (v of key j = e_j) each output row
    is its query's weights, so the dropped rows are the weights without dropout, each zeroed or divided by
    1 - p. The efficient path with dropout is the gather path (the C++ kernel has none)."""
    B, H, T, p = 2, 2, 96, 0.3
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(B, H, T, T, generator=gen) for _ in range(2))
    v = torch.eye(T).expand(B, H, T, T)
    structure = Structure.from_roles(["syntactic", "positional"], window=3, pos_window=1, rare=0)
    options = dict(window=structure.window, rare_index=None, impl=impl, structure=structure)
    kept, w = structured_attention_with_weights(q, k, v, **options)
    torch.testing.assert_close(kept, w)  # one-hot values: the output is the weights
    torch.manual_seed(0)
    dropped, w_dropped = structured_attention_with_weights(q, k, v, dropout_p=p, **options)
    torch.testing.assert_close(w_dropped, w)  # the weights returned are those before dropout
    assert_dropped(kept, dropped, p)


@pytest.mark.parametrize("seed", range(10))
def test_output_is_the_first_of_with_weights(seed):
    """``structured_attention`` returns a tensor: the output ``structured_attention_with_weights`` returns."""
    structure, q, k, v, pad, sets = _random_case(seed)
    for impl in ("reference", "efficient"):
        options = dict(window=structure.window, rare_index=sets, key_padding_mask=pad, impl=impl, structure=structure)
        out = structured_attention(q, k, v, **options)
        assert isinstance(out, torch.Tensor)
        assert torch.equal(out, structured_attention_with_weights(q, k, v, **options)[0])


@pytest.mark.parametrize("impl", ["reference", "efficient"])
@pytest.mark.parametrize("causal", [False, True])
def test_full_band_equals_sdpa(impl, causal):
    """A band over every key, no rare or error keys: ``F.scaled_dot_product_attention`` under the same
    key padding and causality (outputs and gradients); the weights are its softmax, zero outside the
    structure, and each query's row sums to 1."""
    gen = torch.Generator().manual_seed(1)
    B, H, T, D = 3, 2, 13, 8
    q, k, v = (torch.randn(B, H, T, D, generator=gen) for _ in range(3))
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, -4:] = True  # right padding: every query keeps a real key, so SDPA has no all-masked row
    pad[2, -1:] = True
    allowed = (~pad).view(B, 1, 1, T).expand(B, H, T, T)
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
    leaves = [tuple(t.clone().requires_grad_() for t in (q, k, v)) for _ in range(2)]
    want = F.scaled_dot_product_attention(*leaves[0], attn_mask=allowed)
    out, w = structured_attention_with_weights(*leaves[1], window=T - 1, causal=causal, key_padding_mask=pad, impl=impl)
    g = torch.randn_like(want)
    (want * g).sum().backward()
    (out * g).sum().backward()
    assert_close_all([out, *(t.grad for t in leaves[1])], [want, *(t.grad for t in leaves[0])])
    scores = (q @ k.transpose(-1, -2) / D**0.5).masked_fill(~allowed, float("-inf"))
    assert torch.allclose(w, torch.softmax(scores, -1), atol=1e-6)
    assert torch.all(w[~allowed] == 0)
    assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5)
    assert torch.equal(structured_attention(q, k, v, window=T - 1, causal=causal, key_padding_mask=pad, impl=impl), out)


@pytest.mark.parametrize("attend", [structured_attention, structured_attention_with_weights])
@pytest.mark.reliability  # docs/reliability.md
def test_bad_inputs_are_rejected(attend):
    q = torch.randn(2, 2, 6, 4)
    cases = [
        (dict(k=q[:, :, :5]), "do not fit together"),
        (dict(window=(1, 2, 3)), "window: got 3 values for 2 heads"),
        (dict(rare_index=torch.zeros(2, 1, dtype=torch.long), rare_heads=[True]), "rare_heads: got 1 values for 2"),
        (dict(rare_heads=True), r"rare_heads: give one flag per head \(2 booleans, or a 1-d tensor\), or None"),
        (dict(rare_heads=torch.tensor(True)), "rare_heads: give one flag per head"),
        (dict(rare_index=torch.zeros(2, 1)), r"rare_index must be an int64 \(or int32\) tensor"),
        (dict(window=-1), "band windows must be >= 0"),
        (dict(impl="fast"), "impl must be one of"),
    ]
    for bad, message in cases:
        kwargs = dict(k=q, window=1) | bad
        with pytest.raises(ValueError, match=message):
            attend(q, kwargs.pop("k"), q, **kwargs)
    with pytest.raises(TypeError, match="need_weights"):  # the weights come from structured_attention_with_weights
        attend(q, q, q, window=1, need_weights=True)


@pytest.mark.reliability  # docs/reliability.md
def test_inputs_that_do_not_fit_are_rejected_naming_the_argument():
    q = torch.randn(2, 2, 6, 4)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    cases = [
        (ValueError, "q must be 4-D", dict(q=q[0])),
        (TypeError, "q, k, v must share one of float16, bfloat16, float32, float64", dict(k=q.double())),
        (TypeError, "q, k, v must share one of float16", dict(q=q.long(), k=q.long(), v=q.long())),
        (TypeError, "q, k, v must share one of float16", {n: q.to(torch.float8_e4m3fn) for n in ("q", "k", "v")}),
        (ValueError, "do not fit together", dict(k=torch.randn(2, 2, 6, 3))),
        (ValueError, "q and k must have the same length", dict(k=q[:, :, :5], v=q[:, :, :5])),
        (TypeError, "key_padding_mask must be a bool tensor", dict(key_padding_mask=mask.to(torch.uint8))),
        (TypeError, "key_padding_mask must be a bool tensor", dict(key_padding_mask=mask.float())),
        (ValueError, r"key_padding_mask must be \(batch, keys\) = \(2, 6\)", dict(key_padding_mask=mask[:, :5])),
        (ValueError, r"key_padding_mask must be \(batch, keys\)", dict(key_padding_mask=torch.zeros(2, 8).bool())),
        (ValueError, "rare_index holds key positions in", dict(rare_index=torch.tensor([[7, 100], [50, -5]]))),
        # not "holds key positions in [0, 6), got values from 0 to 5": the range check misread uint8
        (
            ValueError,
            r"rare_index must be an int64 \(or int32\) tensor .* got torch.uint8",
            dict(rare_index=torch.ones(2, 1).byte()),
        ),
        (
            ValueError,
            r"rare_index must be on q's device \(cpu\), got meta",
            dict(rare_index=torch.ones(2, 1).long().to("meta")),
        ),
        (TypeError, "window must be an integer", dict(window=2.0)),
        (TypeError, "window must be an integer", dict(window=[1.7, 1.2])),
        (ValueError, "a structure needs at least one head", dict(q=q[:, :0], k=q[:, :0], v=q[:, :0], window=())),
    ]
    for impl in ("reference", "efficient"):
        for error, message, bad in cases:
            kwargs = dict(q=q, k=q, v=q, window=1, impl=impl) | bad
            with pytest.raises(error, match=message):
                structured_attention(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), **kwargs)
    # integers of every kind are windows
    expected = structured_attention(q, q, q, window=2)
    for window in (np.int64(2), torch.tensor(2), [np.int32(2), 2]):
        assert torch.equal(structured_attention(q, q, q, window=window), expected)


@pytest.mark.parametrize("fused", [True, False])
def test_values_may_have_another_head_dim(fused, monkeypatch):
    """v (B, H, S, Dv) with Dv != D, as in SDPA: every path gives the dense masked softmax's result."""
    import structmt.attention.functional as functional

    if not fused:
        monkeypatch.setattr(functional, "_KERNELS", None)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 2, 7, 8, generator=gen), torch.randn(2, 2, 7, 8, generator=gen)
    v = torch.randn(2, 2, 7, 3, generator=gen)
    pad = _padding(2, 7, gen)
    out = {
        impl: structured_attention(q, k, v, window=2, key_padding_mask=pad, impl=impl)
        for impl in ("reference", "efficient")
    }
    allowed = ((torch.arange(7)[:, None] - torch.arange(7)).abs() <= 2) & ~pad[:, None, None, :]
    scores = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~allowed, float("-inf"))
    dense = torch.softmax(scores, -1).nan_to_num(0.0) @ v  # a query with no real key in its band: zero
    assert out["efficient"].shape == (2, 2, 7, 3)
    assert_close_all(out.values(), (dense, dense), 1e-5)


@pytest.mark.reliability  # docs/reliability.md
def test_the_cpp_kernel_checks_what_it_reads():
    """Shapes, dtypes and indices that do not fit raise in the C++ kernel, never read past a buffer."""
    import structmt.attention.functional as functional

    q = torch.randn(1, 2, 4, 8)
    idx = torch.zeros(1, 4, 3, dtype=torch.long)
    kind = torch.ones(1, 2, 4, 3, dtype=torch.int8)
    forward = functional._KERNELS.forward
    forward(q, q, q, idx, kind, 0.5, 0.0)  # fits
    for bad, message in [
        ((q, q[..., :4], q, idx, kind), "k and v must be"),
        ((q, q, torch.randn(1, 2, 4, 4), idx, kind), "k and v must be"),
        ((q, q, q, idx.int(), kind), "idx must be int64"),
        ((q, q, q, idx + 4, kind), "idx holds key positions outside"),
        ((q, q, q, idx, kind[..., :2]), "kind must be int8"),
        ((q, q.double(), q, idx, kind), "must be float32"),
    ]:
        with pytest.raises(RuntimeError, match=message):
            forward(*bad, 0.5, 0.0)


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_key_stays_out_of_the_rows_that_cannot_see_it(fused, monkeypatch):
    """Causal with error-term keys: a NaN key at position 5 changes no earlier query's output
    (the error weight is selected, not multiplied by a 0/1 mask: NaN * 0 is NaN)."""
    import structmt.attention.functional as functional

    if not fused:
        monkeypatch.setattr(functional, "_KERNELS", None)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 8, 4, generator=gen) for _ in range(3))
    bad = k.clone()
    bad[..., 5, :] = float("nan")
    for impl in ("reference", "efficient"):
        kwargs = dict(window=1, causal=True, sinks=1, sink_eps=0.1, impl=impl)
        clean, poisoned = structured_attention(q, k, v, **kwargs), structured_attention(q, bad, v, **kwargs)
        assert torch.equal(clean[..., :5, :], poisoned[..., :5, :]), impl


def test_float64_is_computed_in_float64():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    allowed = (torch.arange(6)[:, None] - torch.arange(6)).abs() <= 1
    dense = torch.softmax((q @ k.transpose(-1, -2) / 2).masked_fill(~allowed, float("-inf")), -1) @ v
    for impl in ("reference", "efficient"):
        out = structured_attention(q, k, v, window=1, impl=impl)
        assert out.dtype == torch.float64 and (out - dense).abs().max() < 1e-12, impl
    inputs = tuple(x.clone().requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: structured_attention(a, b, c, window=1, impl="reference"), inputs)


@pytest.mark.parametrize("impl", ["reference", "efficient"])
def test_float16_scores_that_fit_once_scaled_do_not_overflow(impl):
    """q·k = 102400 overflows float16 (max 65504); q·k/sqrt(D) = 12800 does not. The scores are scaled before the
    product, as fairseq's dense attention scales q, so a float16 run is finite wherever the dense baseline is."""
    q = k = torch.full((1, 1, 3, 64), 40.0, dtype=torch.float16)
    v = torch.randn(1, 1, 3, 64).half()
    out = structured_attention(q, k, v, window=1, impl=impl)  # CPU float16: the gather path for efficient
    band = (torch.arange(3)[:, None] - torch.arange(3)).abs() <= 1
    dense = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=band)  # equal scores: means
    assert torch.isfinite(out).all() and (out.float() - dense).abs().max() < 1e-2


@pytest.mark.parametrize("bad", ["nan", "inf"])
@pytest.mark.reliability  # docs/reliability.md
def test_a_row_whose_scores_are_not_finite_is_nan_in_every_impl_never_a_quiet_zero_row(bad):
    """A query holding NaN, or an fp16 overflow's inf, gives that row NaN scores (or -inf ones): its output is NaN,
    as dense softmax attention's is, so the overflow reaches the loss (fairseq's overflow check, the fp16 loss
    scaler). Only a row with no key to attend to is zero. The fused kernel once took such a row for an empty
    one and wrote zeros, and its gradient was zero too: a silently wrong step."""
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=gen, requires_grad=True) for _ in range(3))
    poison = torch.ones(1, 2, 6, 4)
    poison[0, 0, 2] = float(bad)  # a whole query vector: every score of row (0, 0, 2) non-finite
    poison[0, 1, 4, 0] = -float(bad)  # one element: still every score of row (0, 1, 4)
    results = {}
    for impl in ("reference", "efficient"):
        out = structured_attention(q * poison, k, v, window=1, impl=impl)
        (dk,) = torch.autograd.grad(out.nan_to_num(0.0, 0.0, 0.0).sum() + out[0, 0, 2, 0], k)
        results[impl] = out.isnan().any(-1), dk.isnan().any(-1)
    expected = torch.zeros(1, 2, 6, dtype=torch.bool)
    expected[0, 0, 2] = expected[0, 1, 4] = True
    looked_at = torch.zeros_like(expected)  # the band of half-width 1 around those rows
    looked_at[0, 0, 1:4] = looked_at[0, 1, 3:6] = True
    for impl, (rows, dk_rows) in results.items():
        assert torch.equal(rows, expected), impl  # softmax attention: those rows, and only those
        assert (dk_rows | ~looked_at).all(), impl  # the gradient of each key those rows looked at is NaN


@pytest.mark.reliability  # docs/reliability.md
def test_only_triton_and_auto_on_cuda_run_the_triton_kernel(monkeypatch):
    """--struct-impl efficient (or reference, whose decoding steps attend over candidates) keeps a GPU job off
    Triton; it once took Triton whenever it was installed."""
    from types import SimpleNamespace

    from structmt.attention import functional, triton_kernel

    monkeypatch.setattr(triton_kernel, "unusable", lambda device=None: "")  # as on a GPU it runs on
    cuda_q = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), dtype=torch.float16, size=lambda d: 64)
    v = torch.empty(1, 1, 1, 64)
    paths = {kernel: functional.candidate_kernel(kernel, cuda_q, v, 0.0) for kernel in ("auto", "triton")}
    assert paths == {"auto": "triton", "triton": "triton"}
    assert {functional.candidate_kernel(kernel, cuda_q, v, 0.0) for kernel in ("efficient", "reference")} == {"gather"}
    cpu_q = torch.empty(1, 1, 1, 64)
    fused = "fused" if functional.fused_kernel_usable(cpu_q, v, 0.0) else "gather"
    assert functional.candidate_kernel("auto", cpu_q, v, 0.0) == fused  # no CUDA: never Triton unless asked
    assert functional.candidate_kernel("triton", cpu_q, v, 0.0) == "triton"
    # auto's path follows the same rule: a v of another head size has no fused kernel, so short rows stay dense
    structure = Structure.from_roles(["syntactic"], window=3)
    assert functional.choose_impl("auto", structure, 16, cpu_q, torch.empty(1, 1, 1, 32), 0.0) == "reference"
    assert functional.choose_impl("auto", structure, 16, cpu_q, v, 0.0) == (
        "efficient" if fused == "fused" else "reference"
    )
    with pytest.raises(ValueError, match="impl must be one of"):
        functional.candidate_kernel("fast", cpu_q, v, 0.0)


def test_a_decoding_step_with_a_full_pass_context_is_refused():
    """A step takes its position from the decoder's incremental context; a full-pass context (position 0 at
    every step) would silently fill the wrong cache slots."""
    from structmt.attention.context import TokenContext

    mha = StructuredMultiheadAttention(16, 2, Structure.from_roles(["syntactic"] * 2, window=1, causal=True))
    x = torch.randn(1, 1, 16)
    tokens, counts, never = torch.tensor([[5, 6]]), torch.ones(10, dtype=torch.long), torch.zeros(10, dtype=torch.bool)
    full = TokenContext.from_tokens(tokens, counts, never)
    with pytest.raises(RuntimeError, match="needs the decoder's incremental TokenContext"):
        mha(x, x, x, incremental_state={}, context=full)
    cross = StructuredCrossAttention.from_dense(MultiheadAttention(16, 2, encoder_decoder_attention=True), CrossBand(1))
    with pytest.raises(RuntimeError, match="structured cross-attention needs the decoder's step context"):
        cross(x, x, x, incremental_state={}, context=full)
    step = TokenContext.from_tokens(tokens[:, :1], counts, never, incremental=True)  # the first step
    assert mha(x, x, x, incremental_state={}, context=step)[0].shape == (1, 1, 16)
    # nor does a step of a block that is not causal, one of two tokens, or a first cross step without the source
    encoder = StructuredMultiheadAttention(16, 2, Structure.from_roles(["syntactic"] * 2, window=1))
    with pytest.raises(RuntimeError, match="incremental decoding needs a causal structure"):
        encoder(x, x, x, incremental_state={}, context=step)
    two = torch.randn(2, 1, 16)
    with pytest.raises(RuntimeError, match="incremental decoding feeds one token at a time"):
        mha(two, two, two, incremental_state={}, context=step)
    with pytest.raises(RuntimeError, match="structured cross-attention needs the encoder output at the first step"):
        cross(x, None, None, incremental_state={}, context=step)
    # rare-token heads without the tokens' rarity would attend as syntactic ones: refused, as in a full pass
    rare = StructuredMultiheadAttention(16, 2, Structure.from_roles(["rare"] * 2, window=1, rare=1, causal=True))
    blind = TokenContext.from_tokens(tokens[:, :1], counts, never, incremental=True, need_rarity=False)
    with pytest.raises(RuntimeError, match="rare-token heads need the rarity keys .* need_rarity=True"):
        rare(x, x, x, incremental_state={}, context=blind)
    assert rare(x, x, x, incremental_state={}, context=step)[0].shape == (1, 1, 16)


def test_a_decoding_step_with_padding_is_refused_and_one_without_equals_no_mask():
    """A step dropped ``key_padding_mask``: a padded key was attended as if it were not, with no error. The mask
    fairseq's decoder passes at a step covers the new token; all False it changes nothing, any True is refused."""
    from structmt.attention.context import TokenContext

    torch.manual_seed(0)
    mha = StructuredMultiheadAttention(16, 2, Structure.from_roles(["syntactic"] * 2, window=2, causal=True)).eval()
    x = torch.randn(2, 1, 16)
    tokens, counts, never = torch.tensor([[5, 6]]), torch.ones(10, dtype=torch.long), torch.zeros(10, dtype=torch.bool)

    def steps(masks: list) -> torch.Tensor:
        state: dict = {}
        return torch.cat([
            mha(x[t : t + 1], x[t : t + 1], x[t : t + 1], incremental_state=state, key_padding_mask=masks[t],
                context=TokenContext.from_tokens(tokens[:, : t + 1], counts, never, incremental=True))[0]
            for t in range(2)
        ])  # fmt: skip

    no_pad = torch.zeros(1, 1, dtype=torch.bool)
    assert torch.equal(steps([no_pad, no_pad]), steps([None, None]))
    with pytest.raises(ValueError, match="a decoding step with padding in key_padding_mask"):
        steps([no_pad, torch.ones(1, 1, dtype=torch.bool)])


def test_a_decoding_step_whose_context_is_not_the_whole_prefix_is_refused():
    """A step's position is its context's (the prefix length - 1); a context built from the last token alone says
    position 0 at every step, and the step read the cache as if it were empty: outputs off by O(1), no error.
    The position must be the number of tokens the layer has decoded, also once the cache is full and its size
    no longer changes (a context of a shorter prefix then passed, and a key was counted twice)."""
    from structmt.attention.context import TokenContext

    torch.manual_seed(0)
    mha = StructuredMultiheadAttention(16, 2, Structure.from_roles(["syntactic"] * 2, window=2, causal=True)).eval()
    x = torch.randn(3, 1, 16)
    tokens, counts, never = (
        torch.tensor([[5, 6, 7]]),
        torch.ones(10, dtype=torch.long),
        torch.zeros(10, dtype=torch.bool),
    )
    full = mha(x, x, x, context=TokenContext.from_tokens(tokens, counts, never))[0]
    state: dict = {}
    steps = [
        mha(x[t : t + 1], x[t : t + 1], x[t : t + 1], incremental_state=state,
            context=TokenContext.from_tokens(tokens[:, : t + 1], counts, never, incremental=True))[0]
        for t in range(3)
    ]  # fmt: skip
    torch.testing.assert_close(torch.cat(steps), full)
    state = {}
    last = TokenContext.from_tokens(tokens[:, :1], counts, never, incremental=True)
    mha(x[:1], x[:1], x[:1], incremental_state=state, context=last)
    last = TokenContext.from_tokens(tokens[:, 1:2], counts, never, incremental=True)  # position 0 again
    with pytest.raises(RuntimeError, match="at position 0, but this layer has decoded 1 tokens: .* whole prefix"):
        mha(x[1:2], x[1:2], x[1:2], incremental_state=state, context=last)
    long = torch.randn(8, 1, 16)
    tokens = torch.arange(8).view(1, 8)
    state = {}
    for t in range(5):  # the cache (w = 2) is full from step 2 on
        mha(long[t : t + 1], long[t : t + 1], long[t : t + 1], incremental_state=state,
            context=TokenContext.from_tokens(tokens[:, : t + 1], counts, never, incremental=True))  # fmt: skip
    shorter = TokenContext.from_tokens(tokens[:, :4], counts, never, incremental=True)  # position 3, not 5
    with pytest.raises(RuntimeError, match="at position 3, but this layer has decoded 5 tokens"):
        mha(long[5:6], long[5:6], long[5:6], incremental_state=state, context=shorter)


@pytest.mark.reliability  # docs/reliability.md
def test_a_causal_block_takes_fairseqs_future_mask_and_refuses_any_other_attn_mask():
    """The causal structure applies the future mask itself: fairseq's (float -inf or bool True above the
    diagonal) gives the result of no mask; a mask or bias at or before the diagonal would be ignored, so it
    is refused, as is a mask of another shape."""
    from fairseq import utils

    torch.manual_seed(0)
    T = 5
    mha = StructuredMultiheadAttention(16, 2, Structure.from_roles(["syntactic"] * 2, window=2, causal=True)).eval()
    x = torch.randn(T, 2, 16)
    plain = mha(x, x, x)[0]
    future = torch.triu(utils.fill_with_neg_inf(torch.zeros(T, T)), 1)  # as fairseq's buffered_future_mask
    assert torch.equal(mha(x, x, x, attn_mask=future)[0], plain)
    assert torch.equal(mha(x, x, x, attn_mask=future.isinf())[0], plain)
    bias = future.clone()
    bias[3, 1] = -1.0  # a bias on a past key
    masked = future.isinf()
    masked[2, 2] = True  # a query's own key
    for bad, message in (
        (bias, "nonzero"),
        (masked, "nonzero"),
        (future[:4], r"future mask, T = 5; got shape"),
        (future[:, :4], r"future mask, T = 5; got shape \(5, 4\)"),  # fewer keys than queries
    ):
        with pytest.raises(ValueError, match=message):
            mha(x, x, x, attn_mask=bad)
    # a block that is not causal (an encoder's) has no future mask to take: any attn_mask would be ignored
    encoder = StructuredMultiheadAttention(16, 2, Structure.from_roles(["syntactic"] * 2, window=2)).eval()
    with pytest.raises(NotImplementedError, match="an extra attn_mask is only accepted as the causal mask"):
        encoder(x, x, x, attn_mask=future)
    step = torch.zeros(1, 3)  # a decoding step's mask: a row with nothing masked
    assert mha(x[:1], x[:1], x[:1], incremental_state={}, attn_mask=step)[0].shape == (1, 2, 16)
    with pytest.raises(ValueError, match="nonzero"):
        mha(x[:1], x[:1], x[:1], incremental_state={}, attn_mask=torch.tensor([[0.0, -1.0, 0.0]]))


@pytest.mark.reliability  # docs/reliability.md
def test_the_structured_blocks_refuse_keys_values_and_impls_they_would_not_use():
    """The block projects keys and values from its query (fairseq's self-attention layers pass the same tensor
    three times); keys or values of another sequence, e.g. an encoder output, would be ignored: refused.
    The cross block projects both from its key: another value would be ignored too; and it counts source
    positions from a row's first real token: padding inside a row is refused, as aligned_cross_attention does."""
    mha = StructuredMultiheadAttention(16, 2, Structure.from_roles(["syntactic"] * 2, window=1)).eval()
    x, memory = torch.randn(5, 2, 16), torch.randn(7, 2, 16)
    out = mha(x, x, x)[0]
    assert torch.equal(mha(x, None, None)[0], out) and torch.equal(mha(x, x.view(5, 2, 16), x[:])[0], out)
    square = torch.randn(4, 4, 16)  # its transpose shares its memory and shape, not its strides: other tokens
    for query, key, value in (
        (x, memory, memory),
        (x, x.clone(), x),
        (x, x, x.clone()),
        (square, square.transpose(0, 1), None),
    ):
        with pytest.raises(ValueError, match="must be the query tensor itself"):
            mha(query, key, value)
    with pytest.raises(NotImplementedError, match="before_softmax is not supported by structured attention"):
        mha(x, x, x, before_softmax=True)
    cross = StructuredCrossAttention.from_dense(MultiheadAttention(16, 2, encoder_decoder_attention=True), CrossBand(1))
    assert torch.equal(cross(x, memory, memory)[0], cross(x, memory, None)[0])
    with pytest.raises(ValueError, match="value must be the key tensor itself"):
        cross(x, memory, memory.clone())
    for extra in ({"before_softmax": True}, {"attn_mask": torch.zeros(5, 7)}):
        with pytest.raises(NotImplementedError, match="structured cross-attention takes no attn_mask / before_softm"):
            cross(x, memory, memory, **extra)
    holes = torch.tensor([[False, True, False, False, False, False, False], [False] * 7])  # a pad inside row 0
    with pytest.raises(ValueError, match="real source tokens of each row must be contiguous"):
        cross(x, memory, memory, key_padding_mask=holes)  # the band would count from the wrong token
    # an unknown impl is refused when the block is built, not at its first forward
    for build in (
        lambda: StructuredMultiheadAttention(16, 2, mha.structure, impl="fast"),
        lambda: StructuredMultiheadAttention.from_dense(
            MultiheadAttention(16, 2, self_attention=True), mha.structure, "fast"
        ),
        lambda: StructuredCrossAttention.from_dense(
            MultiheadAttention(16, 2, encoder_decoder_attention=True), CrossBand(1), "fast"
        ),
    ):
        with pytest.raises(ValueError, match="impl must be one of"):
            build()


@pytest.mark.reliability  # docs/reliability.md
def test_a_gradient_of_the_fused_kernels_gradient_raises():
    """The C++ backward is not itself differentiable: asking for that raises instead of returning zero."""
    q, k, v = (torch.randn(1, 2, 6, 4, requires_grad=True) for _ in range(3))
    (grad,) = torch.autograd.grad(
        structured_attention(q, k, v, window=1, impl="efficient").pow(2).sum(), q, create_graph=True
    )
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
    (grad,) = torch.autograd.grad(
        structured_attention(q, k, v, window=1, impl="reference").pow(2).sum(), q, create_graph=True
    )
    grad.sum().backward()  # the reference path is twice differentiable
    assert q.grad is not None


def test_positional_window_zero_is_identity():
    q, k, v = torch.randn(3, 1, 2, 7, 4).unbind(0)
    out, w = structured_attention_with_weights(q, k, v, window=0, impl="efficient")
    assert torch.allclose(w, torch.eye(7).expand(1, 2, 7, 7))
    assert torch.allclose(out, v)


def test_rare_selection_picks_lowest_counts_never_specials():
    counts = torch.tensor([1, 1, 1, 1, 500, 3, 80, 3, 2, 1000])
    never = torch.zeros(10, dtype=torch.bool)
    never[:4] = True
    tokens = torch.tensor([[0, 4, 5, 6, 7, 8, 2, 1, 1]])  # bos ... eos pad pad
    keys = rarity_keys(tokens, counts, never)
    assert keys[0, 0] == NEVER_RARE and keys[0, 6] == NEVER_RARE and keys[0, 7] == NEVER_RARE
    sets = rare_sets(keys, 3, causal=False)
    assert sets[0, 0].tolist() == [5, 2, 4]  # count 2, then the two count-3 tokens, ties by position
    causal_sets = rare_sets(keys, 2, causal=True)
    assert causal_sets[0, 0].tolist() == [-1, -1]  # only bos so far
    assert causal_sets[0, 1].tolist() == [1, -1]
    assert causal_sets[0, 3].tolist() == [2, 3]  # counts 3 and 80
    assert causal_sets[0, 5].tolist() == [5, 2]
    # causal scan equals brute force over each prefix
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 10, (4, 37), generator=gen)
    keys = rarity_keys(tokens, counts, never)
    got = rare_sets(keys, 3, causal=True)
    for i in range(37):
        want = rare_sets(keys[:, : i + 1], 3, causal=False)[:, 0]
        assert torch.equal(got[:, i], want)
    # a decoding step computes the key of its last token alone, at its position
    for i in range(37):
        assert torch.equal(rarity_keys(tokens[:, i : i + 1], counts, never, first_position=i), keys[:, i : i + 1])
    # counts and token ids are integers of any width (uint8 ids indexed as a mask, int8/int16 ones not at all);
    # float counts (which would lose the position) are refused
    assert torch.equal(rarity_keys(tokens, counts.int(), never), keys)
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        assert torch.equal(rarity_keys(tokens.to(dtype), counts, never), keys)
    # and checked as the numbers they are: the dictionary's size overflowed a narrow dtype in the range check
    big = torch.arange(40_000)
    wide = torch.tensor([[5, 100, 120]])
    for dtype in (torch.uint8, torch.int8, torch.int16):
        assert torch.equal(rarity_keys(wide.to(dtype), big, big < 0), rarity_keys(wide, big, big < 0))
    with pytest.raises(TypeError, match="counts must be a 1-D integer tensor"):
        rarity_keys(tokens, counts.float(), never)


@pytest.mark.reliability  # docs/reliability.md
def test_rarity_inputs_that_would_index_from_the_end_are_rejected_naming_the_argument():
    """A negative token id or position would pick another token's count (indexing from the end):
    every argument of rarity_keys and rare_sets is checked, and the message names it."""
    counts, never = torch.tensor([1, 1, 7, 3, 5]), torch.tensor([True, True, False, False, False])
    tokens = torch.tensor([[2, 3, 4]])
    cases = [
        (ValueError, r"tokens must be ids in \[0, 5\).*from -1 to 4", dict(tokens=torch.tensor([[2, -1, 4]]))),
        (ValueError, r"tokens must be ids in \[0, 5\).*from 2 to 5", dict(tokens=torch.tensor([[2, 5]]))),
        (TypeError, "tokens must be a \\(batch, length\\) integer tensor", dict(tokens=tokens[0])),
        (TypeError, "tokens must be a \\(batch, length\\) integer tensor", dict(tokens=tokens.float())),
        (ValueError, "counts must be >= 0, got -3", dict(counts=torch.tensor([1, 1, 7, -3, 5]))),
        (ValueError, "counts must be >= 0, got -1", dict(counts=torch.tensor([1, 1, 7, -1, 5]))),
        (TypeError, "never_rare must be a bool tensor shaped like counts", dict(never_rare=never.long())),
        (TypeError, "never_rare must be a bool tensor shaped like counts", dict(never_rare=never[:4])),
        (ValueError, "first_position must be an integer >= 0, got -1", dict(first_position=-1)),
    ]
    for error, message, bad in cases:
        kwargs = dict(tokens=tokens, counts=counts, never_rare=never) | bad
        with pytest.raises(error, match=message):
            rarity_keys(**kwargs)
        if error is TypeError or "first_position" in message:  # checked without reading values: always
            with pytest.raises(error, match=message):
                rarity_keys(**kwargs, check_values=False)  # the model's calls (no device sync)
    # positions up to POSITION_SPAN - 1 fit in a key; one more would spill into the count
    last = rarity_keys(tokens, counts, never, first_position=POSITION_SPAN - 3)
    assert last.tolist() == [[7 * POSITION_SPAN + POSITION_SPAN - 3, 3 * POSITION_SPAN + POSITION_SPAN - 2,
                              5 * POSITION_SPAN + POSITION_SPAN - 1]]  # fmt: skip
    with pytest.raises(ValueError, match=f"sequences longer than {POSITION_SPAN} tokens are not supported"):
        rarity_keys(tokens, counts, never, first_position=POSITION_SPAN - 2)
    keys = rarity_keys(tokens, counts, never)
    assert rare_sets(keys, 2, causal=False)[0, 0].tolist() == [1, 2]  # counts 3, 5
    with pytest.raises(ValueError, match="r must be an integer >= 0, got -1"):
        rare_sets(keys, -1, causal=True)
    with pytest.raises(TypeError, match="keys must be \\(batch, length\\) int64 rarity keys"):
        rare_sets(keys.float(), 2, causal=False)


def test_role_mix_parsing_and_errors():
    assert parse_role_mix("pos:1,syn:2,rare:1", 4, 2) == [["positional", "syntactic", "syntactic", "rare"]] * 2
    assert parse_role_mix("syn:2;pos:1,rare:1", 2, 2) == [["syntactic"] * 2, ["positional", "rare"]]
    assert parse_role_mix(" pos : 1 , syn: 2 ,rare :1", 4, 1) == parse_role_mix("pos:1,syn:2,rare:1", 4, 1)
    with pytest.raises(ValueError, match="gives 3 heads but the layer has 4"):
        parse_role_mix("pos:1,syn:2", 4, 1)
    with pytest.raises(ValueError, match="unknown head role 'diag'"):
        parse_role_mix("diag:4", 4, 1)
    with pytest.raises(ValueError, match="one role mix for all layers or one per layer"):
        parse_role_mix("syn:2;syn:2;syn:2", 2, 2)
    with pytest.raises(ValueError, match="band windows must be >= 0"):
        Structure(window=(-1,), rare_heads=(False,))


def test_a_role_without_a_count_is_one_head_and_a_negative_count_is_refused():
    """``pos,syn:2,rare`` gives one positional and one rare head; a count below 0 (even -1) is refused, naming the
    role, not read as no head."""
    assert parse_role_spec("pos,syn:2,rare") == ["positional", "syntactic", "syntactic", "rare"]
    with pytest.raises(ValueError, match="head count for pos must be >= 0"):
        parse_role_spec("pos:-1,syn:3")


def test_per_layer_role_mixes_must_be_one_or_one_per_layer():
    """Two mixes for three layers are refused, not spread over the first two layers; one mix or three are taken."""
    with pytest.raises(ValueError, match=r"one role mix for all layers or one per layer \(3 layers\)"):
        parse_role_mix("syn:2;pos:2", 2, 3)
    assert parse_role_mix("syn:2", 2, 3) == [["syntactic"] * 2] * 3
    assert parse_role_mix("syn:2;pos:2;syn:2", 2, 3)[1] == ["positional"] * 2


def test_a_structure_refuses_an_error_term_outside_zero_and_one_and_a_window_per_head_mismatch():
    """The error keys' total bound ``sinks * sink_eps`` must lie strictly inside (0, 1): 0 would give the error keys
    no weight, 1 would leave the structured keys none; every head needs one window and one rare flag."""
    assert Structure(window=(1,), rare_heads=(False,), sinks=2, sink_eps=0.49).sinks == 2
    for sinks, eps in [(1, 0.0), (2, 0.5)]:
        with pytest.raises(ValueError, match=rf"sinks \* eps must lie in \(0, 1\), got {sinks} \* {eps}"):
            Structure(window=(1,), rare_heads=(False,), sinks=sinks, sink_eps=eps)
    with pytest.raises(ValueError, match="window and rare_heads need one entry per head"):
        Structure(window=(1, 1, 1), rare_heads=(True, False))


def test_a_roles_file_is_read_as_its_encoder_and_decoder_mixes_only(tmp_path):
    """A model keeps the mixes of its roles file and nothing else from it; a file holding a JSON list, not an
    object of mixes, is refused naming the file."""
    roles = {"encoder": ["syn:2"], "decoder": ["pos:1,rare:1"], "note": "chosen on valid"}
    assert roles_json(json.dumps(roles)) == '{"encoder":["syn:2"],"decoder":["pos:1,rare:1"]}'
    listed = tmp_path / "roles.json"
    listed.write_text(json.dumps([["syn:2"]]))
    with pytest.raises(ValueError, match=r"^--struct-heads-from .*roles.json: not a JSON object of role mixes$"):
        roles_from_file(listed, "encoder")


@pytest.mark.reliability  # docs/reliability.md
def test_a_structure_refuses_values_of_the_wrong_type_naming_the_field():
    """A truthy string for causal would have made the block causal, an integer flag a long-typed mask that fails
    deep in the kernels: every field of Structure is checked where it is made; the public functions take
    NumPy and 0-d tensor integers for rare counts and sinks, as for windows."""
    import numpy as np

    base = dict(window=(1, 1), rare_heads=(True, False), rare=1)
    cases = [
        (TypeError, r"rare_heads must be True/False per head, got \(1, 0\)", dict(rare_heads=(1, 0))),
        (TypeError, "rare must be an integer, got 1.5", dict(rare=1.5)),
        (TypeError, "rare must be an integer, got True", dict(rare=True)),
        (TypeError, "sinks must be an integer, got 1.0", dict(sinks=1.0, sink_eps=0.1)),
        (TypeError, "causal must be True or False, got 'no'", dict(causal="no")),
        (ValueError, "sink_eps must be a finite number >= 0, got nan", dict(sink_eps=float("nan"))),
    ]
    for error, message, bad in cases:
        with pytest.raises(error, match=message):
            Structure(**(base | bad))
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(TypeError, match="causal must be True or False"):
        structured_attention(q, q, q, window=1, causal="no")
    rare = torch.tensor([[3]])
    want = structured_attention(q, q, q, window=1, rare_index=rare, sinks=1, sink_eps=0.1)
    assert torch.equal(structured_attention(q, q, q, window=1, rare_index=rare, sinks=np.int64(1), sink_eps=0.1), want)


def test_supports_are_one_definition():
    """The reference mask and the efficient candidates come from the same predicates."""
    structure = Structure.from_roles(["syntactic", "rare"], window=1, rare=1, causal=True)
    tokens = torch.tensor([[5, 9, 6, 7]])
    counts = torch.tensor([1] * 5 + [50, 2, 40, 40, 1])
    never = torch.zeros(10, dtype=torch.bool)
    never[:4] = True
    sets = rare_sets(rarity_keys(tokens, counts, never), 1, causal=True)
    sup = make_supports(
        structure, num_keys=4, rare_sets=sets, key_padding_mask=None, sink_pos=None, device=torch.device("cpu")
    )
    b, h = torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.arange(2).view(1, 2, 1, 1)
    mask = sup.support(b, h, torch.arange(4).view(1, 1, 4, 1), torch.arange(4).view(1, 1, 1, 4))
    # head 0: causal band of width 1; head 1: + rarest of prefix (token 9 at position 1 has count 1)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    assert mask[0, 1].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]]
    q = torch.randn(1, 2, 4, 3)
    out, w = reference_attention(q, q, q, sup, 0.0, torch.arange(4), torch.arange(4))
    assert torch.equal(w[0] > 0, mask[0])


def _tilted_sum(out: torch.Tensor) -> torch.Tensor:
    return (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()


def test_fused_kernel_and_python_gather_path_agree(monkeypatch):
    """The C++ kernel (built at install) and the pure-PyTorch gather path compute the same thing."""
    import structmt.attention.functional as functional

    assert functional._KERNELS is not None, "the C++ kernel was not built by make install"
    for seed in range(15):
        structure, q, k, v, pad, sets = _random_case(seed)
        results = []
        for kernels in (functional._KERNELS, None):
            monkeypatch.setattr(functional, "_KERNELS", kernels)
            results.append(
                attention_with_grads(
                    structure,
                    q,
                    k,
                    v,
                    pad,
                    sets,
                    "efficient",
                    loss=lambda out: (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                )
            )
        assert_close_all(*results)


@pytest.mark.parametrize("causal", [False, True])
def test_a_band_wider_than_the_sequence_costs_and_computes_what_t_minus_1_does(causal):
    """Band keys past the sequence are never real, so the efficient path cuts a half-width to T - 1:
    a window of 10⁹ (one head) gathers 2T - 1 band candidates (T causal), not 2·10⁹ + 1, and gives
    the output, weights and gradients of window T - 1 exactly."""
    gen = torch.Generator().manual_seed(3)
    B, H, T, D = 2, 2, 7, 4
    q, k, v = (torch.randn(B, H, T, D, generator=gen) for _ in range(3))
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, -2:] = True
    rare = torch.tensor([[5], [0]])

    def structure(window: int) -> Structure:
        return Structure(window=(1, window), rare_heads=(False, True), rare=1, causal=causal, sinks=1, sink_eps=0.05)

    wide = attention_with_grads(structure(10**9), q, k, v, pad, rare, "efficient")
    cut = attention_with_grads(structure(T - 1), q, k, v, pad, rare, "efficient")
    for got, want in zip(wide, cut, strict=True):
        assert torch.equal(got, want)
    kv_pos, _, kind = self_attention_plan(structure(10**9), q, rare, pad).candidates()
    band = T if causal else 2 * T - 1
    assert kv_pos.shape == (B, T, band + 2) and kind.shape == (B, H, T, band + 2)
    assert_close_all(wide, attention_with_grads(structure(10**9), q, k, v, pad, rare, "reference"))


@pytest.mark.reliability  # docs/reliability.md
def test_structured_softmax_shares_what_the_error_keys_leave_and_refuses_rows_that_would_go_negative():
    """Exact weights on a small row: error key j gets eps·sigmoid(s_j), the support shares the rest by softmax,
    the row sums to 1; a row with no support is zero.  Inputs under which a weight could go negative
    (eps < 0, error keys × eps >= 1, an error key inside the support) or non-bool masks are refused."""
    from structmt.attention import structured_softmax

    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    support = torch.tensor([[True, True, False, False], [False, False, False, False]])
    error = torch.tensor([[False, False, True, True], [False, False, True, False]])
    got = structured_softmax(scores, support, error, 0.1)
    extra = 0.1 / (1 + math.exp(-3.0)) + 0.1 / (1 + math.exp(-4.0))
    soft = torch.softmax(torch.tensor([1.0, 2.0], dtype=torch.float64), -1) * (1 - extra)
    want = [[*soft.tolist(), 0.1 / (1 + math.exp(-3.0)), 0.1 / (1 + math.exp(-4.0))], [0.0] * 4]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-15)
    assert got[0].sum().item() == pytest.approx(1.0, abs=1e-15)
    cases = [
        (TypeError, "scores must be a floating tensor", dict(scores=scores.long())),
        (TypeError, "must be bool masks", dict(support=support.float())),
        (ValueError, "error keys must lie outside the support", dict(error=support)),
        (ValueError, r"got 2 \* -0.1", dict(sink_eps=-0.1)),
        (ValueError, r"got 2 \* 0.5", dict(sink_eps=0.5)),
    ]
    for error_type, message, bad in cases:
        kwargs = dict(scores=scores, support=support, error=error, sink_eps=0.1) | bad
        with pytest.raises(error_type, match=message):
            structured_softmax(**kwargs)


def test_task_markers_are_never_rare():
    """Language tags and <mask>, which fairseq tasks add with a count of 1, would otherwise be the rarest tokens of
    every sentence and take a rare column each."""
    from fairseq.data import Dictionary

    from structmt.attention.structure import rarity_tables

    d = Dictionary()
    for word, count in (("▁a", 100), ("▁[", 3), ("x]", 2), ("▁rare", 1)):
        d.add_symbol(word, n=count)
    for marker in ("__en__", "[de_DE]", "<mask>"):
        d.add_symbol(marker, n=1)
    counts, never_rare = rarity_tables(d)
    flagged = {d.symbols[i] for i in never_rare.nonzero().flatten().tolist()}
    assert flagged == {"<s>", "<pad>", "</s>", "<unk>", "__en__", "[de_DE]", "<mask>"}
    assert counts[d.index("▁rare")] == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_key_and_value_gradients_sum_in_float32_on_the_gather_path(dtype):
    """A sink key is a candidate of every query: the gather path's backward summed their gradients in the half
    dtype (bfloat16 dV of the sink 69% off at T=2048; a model's v_proj gradient 13% at T=1000). It sums in float32
    now, as the reference path and the Triton kernel do: the same error against float32 as the reference's."""
    T, H, D = 1024, 2, 8
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, H, T, D, generator=gen) for _ in range(3))
    structure = Structure.from_roles(["syntactic"] * H, window=3, rare=0, causal=False, sinks=1, sink_eps=0.05)

    def grads(dt, impl):
        kk, vv = (t.to(dt).clone().requires_grad_() for t in (k, v))
        structured_attention(q.to(dt), kk, vv, window=3, structure=structure, impl=impl).float().sum().backward()
        return kk.grad.float()[..., 0, :], vv.grad.float()[..., 0, :]  # the sink key's

    exact = grads(torch.float32, "reference")
    for got, ref, want in zip(grads(dtype, "efficient"), grads(dtype, "reference"), exact, strict=True):
        error, ref_error = ((got - want).norm() / want.norm()).item(), ((ref - want).norm() / want.norm()).item()
        assert error <= 2 * ref_error + 1e-4, (error, ref_error)


@pytest.mark.parametrize("impl", ["auto", "efficient", "reference"])
def test_a_loss_on_the_returned_weights_has_its_gradient_in_every_impl(impl):
    """The fused kernels' weights carry no gradient: a regulariser on the weights lost its share of the gradient
    on the default path, silently. Weights asked for under autograd come from a path whose autograd covers
    them: the gradient equals float64 reference's, whatever ``impl`` says."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 9, 8, generator=gen) for _ in range(3))
    rare = torch.tensor([[4, 7], [1, 1]])
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 7:] = True

    def grads(dtype: torch.dtype, impl: str) -> list[torch.Tensor]:
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out, w = structured_attention_with_weights(
            *leaves, window=1, rare_index=rare, key_padding_mask=pad, sinks=1, sink_eps=0.05, impl=impl
        )
        assert w.requires_grad
        return list(torch.autograd.grad(out.sum() + 10 * (w * w).sum(), leaves))

    assert_close_all(grads(torch.float32, impl), [g.float() for g in grads(torch.float64, "reference")], 1e-5)
