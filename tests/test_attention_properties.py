"""Property-based tests (hypothesis): random shapes, masks, w, r and role mixes."""

import pytest
import torch
from conftest import assert_close_all, attention_with_grads
from hypothesis import given, settings
from hypothesis import strategies as st

from structmt.attention import Structure, rare_sets, rarity_keys

pytestmark = pytest.mark.reliability  # fuzzing the attention module against the reference
ROLE = st.sampled_from(["positional", "syntactic", "rare"])


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 48),
    roles=st.lists(ROLE, min_size=1, max_size=4),
    window=st.integers(0, 9),
    rare=st.integers(0, 5),
    sinks=st.integers(0, 3),
    causal=st.booleans(),
    pad_lengths=st.lists(st.integers(1, 48), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_efficient_equals_reference(batch, length, roles, window, rare, sinks, causal, pad_lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    H = len(roles)
    structure = Structure.from_roles(
        roles, window=window, rare=rare, causal=causal, sinks=sinks, sink_eps=0.1 if sinks else 0.0
    )
    q, k, v = (torch.randn(batch, H, length, 8, generator=gen, dtype=torch.float32) for _ in range(3))
    lengths = torch.tensor([min(n, length) for n in pad_lengths[:batch]])
    lengths[0] = length
    pad = torch.arange(length) >= lengths[:, None]
    tokens = torch.randint(0, 30, (batch, length), generator=gen).masked_fill(pad, 1)
    never = torch.zeros(30, dtype=torch.bool)
    never[:4] = True
    sets = rare_sets(rarity_keys(tokens, torch.randint(1, 9, (30,), generator=gen), never), rare, causal)
    reference = attention_with_grads(structure, q, k, v, pad, sets, "reference")
    efficient = attention_with_grads(structure, q, k, v, pad, sets, "efficient")
    assert_close_all(reference[:2], efficient[:2], 1e-5)
    assert_close_all(reference[2:], efficient[2:], 1e-4)
