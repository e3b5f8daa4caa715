"""Projection onto Σ: exact recovery of members, never worse than the paper's random search."""

import json

import pytest
import torch
from conftest import build

from structmt.analysis.project import band_support, best_role, diagonal_support, project, random_search


def _stochastic(support: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    values = (torch.rand(support.shape, generator=gen) + 0.5) * support
    return values / values.sum(-1, keepdim=True)


@pytest.mark.parametrize("seed", range(5))
def test_members_of_sigma_are_recovered_with_zero_error_and_the_right_role(seed):
    n, w, r = 16, 3, 2
    positional = _stochastic(diagonal_support(n, 0), seed)
    syntactic = _stochastic(band_support(n, w), seed)
    cols = band_support(n, w).clone()
    cols[:, [2, 11]] = True
    rare = _stochastic(cols, seed)
    rare[:, [2, 11]] *= 20  # the columns carry much of the mass, as rare-token heads do
    rare = rare / rare.sum(-1, keepdim=True)
    for a, role in ((positional, "positional"), (syntactic, "syntactic"), (rare, "rare")):
        fits = project(a, w, r)
        assert fits[role].distance == pytest.approx(0.0, abs=1e-5)
        assert best_role(fits).role == role


@pytest.mark.parametrize("seed", range(20))
def test_projection_never_worse_than_random_search(seed):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(4, 24, (1,), generator=gen))
    a = torch.softmax(torch.randn(n, n, generator=gen) * 3, dim=-1)
    for w, r in ((0, 0), (1, 1), (3, 2), (10, 1)):
        fits = project(a, w, r)
        searched = random_search(a, w, r, draws=30, seed=seed)
        for role in fits:
            assert fits[role].per_entry <= searched[role] + 1e-7


def test_sparse_error_term_lowers_error_by_at_most_k_eps():
    a = torch.softmax(torch.randn(16, 16) * 2, dim=-1)
    plain = project(a, 1, 0)["syntactic"].distance
    with_e = project(a, 1, 0, k=8, eps=0.05)["syntactic"].distance
    assert plain - 8 * 0.05 - 1e-6 <= with_e < plain


def test_extraction_from_a_structured_model_is_zero_outside_its_support(dict_dir, tmp_path):
    from structmt.analysis.extract import _attention_modules, _Recorder

    _, model = build(
        dict_dir,
        "structured_transformer_tiny",
        "--encoder-attention-heads",
        "4",
        "--decoder-attention-heads",
        "4",
        "--encoder-embed-dim",
        "32",
        "--decoder-embed-dim",
        "32",
        "--struct-heads",
        "pos:1,syn:2,rare:1",
        "--struct-window",
        "2",
        "--struct-rare",
        "2",
    )
    recorders = {b: [_Recorder(m) for m in mods] for b, mods in _attention_modules(model).items()}
    src = torch.randint(4, 44, (2, 12))
    src[:, -1] = 2
    tgt = torch.randint(4, 44, (2, 9))
    with torch.no_grad():
        model(src, torch.tensor([12, 12]), tgt)
    for block in ("encoder", "decoder"):
        for rec in recorders[block]:
            w = rec.weights  # (heads, batch, T, T)
            T = w.size(-1)
            for h, width in enumerate(rec.module.structure.window):
                outside = ~band_support(T, width)
                if block == "decoder":
                    outside |= torch.ones(T, T, dtype=torch.bool).triu(1)
                if rec.module.structure.rare_heads[h]:
                    # at most r columns per row outside the band
                    assert int(((w[h] > 0) & outside).sum(-1).max()) <= 2
                else:
                    assert torch.all(w[h][:, outside] == 0)
            assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5)
    for recs in recorders.values():
        for rec in recs:
            rec.remove()


def test_roles_file_configures_the_model(dict_dir, tmp_path):
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"encoder": ["syn:1,pos:1", "rare:1,syn:1"], "decoder": ["pos:1,pos:1", "syn:2"]}))
    _, model = build(dict_dir, "structured_transformer_tiny", "--struct-heads-from", str(roles), "--struct-window", "2")
    enc = [layer.self_attn.structure for layer in model.encoder.layers]
    assert enc[0].window == (2, 1) and enc[1].rare_heads == (True, False)
    assert model.decoder.layers[0].self_attn.structure.window == (1, 1)
    with pytest.raises(ValueError, match="--struct-heads-from .*missing.json: no such file"):
        build(dict_dir, "structured_transformer_tiny", "--struct-heads-from", str(tmp_path / "missing.json"))
