"""The fairseq model: build-time validation, checkpoint compatibility, causality, decoding."""

import pytest
import torch
from conftest import assert_dropped, build
from fairseq.modules import MultiheadAttention

from structmt.attention.context import TokenContext
from structmt.attention.multihead import StructuredCrossAttention, StructuredMultiheadAttention
from structmt.attention.structure import CrossBand, Structure

TINY = (
    "--encoder-embed-dim",
    "32",
    "--decoder-embed-dim",
    "32",
    "--encoder-ffn-embed-dim",
    "32",
    "--decoder-ffn-embed-dim",
    "32",
    "--encoder-attention-heads",
    "4",
    "--decoder-attention-heads",
    "4",
)


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--struct-window", "-1"), "--struct-window=-1 must be >= 0"),
        (("--struct-rare", "-2"), "--struct-rare=-2 must be >= 0"),
        (("--struct-heads", "pos:1,syn:2"), "gives 3 heads but the layer has 4"),
        (("--struct-heads", "pos:1,diag:3"), "--struct-heads='pos:1,diag:3': unknown head role 'diag'"),
        (("--struct-apply", "encoder,cross"), "--struct-apply='encoder,cross' names unknown attention block"),
        (("--struct-error", "topk"), "--struct-error='topk' must be 'none' or 'sink:K'"),
        (("--struct-impl", "fast"), "--struct-impl='fast' choose from"),
        (
            ("--struct-error", "sink:4", "--struct-error-eps", "0.5"),
            "--struct-error-eps=0.5: sinks \\* eps must lie in",
        ),
        (("--struct-cross-window", "-2"), "--struct-cross-window=-2 must be >= 0, or -1"),
        (
            ("--struct-cross-window", "2", "--struct-cross-slope", "0"),
            "--struct-cross-slope=0.0 must be finite and > 0",
        ),
        (("--struct-window", "-1", "--struct-rare", "-1"), "--struct-window=-1 must be >= 0; --struct-rare=-1"),
        (("--cross-self-attention",), "--cross-self-attention: .*add --struct-apply encoder"),
        (
            ("--decoder-xformers-att-config", '{"name": "scaled_dot_product"}'),
            "--decoder-xformers-att-config: the decoder's self-attention is structured and does not run through",
        ),
        (
            ("--encoder-xformers-att-config", '{"name": "scaled_dot_product"}'),
            "--encoder-xformers-att-config: the encoder's self-attention is structured and does not run through",
        ),
        (
            ("--struct-cross-window", "2", "--no-cross-attention"),
            "--struct-cross-window needs a decoder with cross-attention \\(not --no-cross-attention\\)",
        ),
        (
            ("--struct-cross-window", "2", "--criterion", "label_smoothed_cross_entropy_with_alignment"),
            "--criterion label_smoothed_cross_entropy_with_alignment supervises the cross-attention weights",
        ),
    ],
)
@pytest.mark.reliability  # docs/reliability.md
def test_bad_configuration_fails_at_build_time(dict_dir, extra, message):
    with pytest.raises(ValueError, match=message):
        build(dict_dir, "structured_transformer_tiny", *TINY, *extra)


def test_a_dense_block_the_structure_would_not_fully_use_is_not_adopted():
    """A block built with an xFormers config (installed or not) would be adopted and its config ignored; so would
    its extra key/value biases or zero attention, another block kind, or another head count."""
    structure = Structure.from_roles(["syntactic"] * 2, window=1)
    dense = MultiheadAttention(16, 2, self_attention=True)
    dense.use_xformers = True
    with pytest.raises(ValueError, match="does not run through xFormers: leave --encoder-xformers-att-config"):
        StructuredMultiheadAttention.from_dense(dense, structure)
    for extra in ({"add_bias_kv": True}, {"add_zero_attn": True}):
        dense = MultiheadAttention(16, 2, self_attention=True, **extra)
        with pytest.raises(ValueError, match="structured attention does not support add_bias_kv / add_zero_attn"):
            StructuredMultiheadAttention.from_dense(dense, structure)
    cross = MultiheadAttention(16, 2, encoder_decoder_attention=True)
    with pytest.raises(ValueError, match="structured attention applies to self-attention blocks only"):
        StructuredMultiheadAttention.from_dense(cross, structure)
    with pytest.raises(ValueError, match="structure has 4 heads, the attention 2"):
        StructuredMultiheadAttention(16, 2, Structure.from_roles(["syntactic"] * 4, window=1))


def test_retain_dropout_keeps_attention_dropout_on_at_inference(dict_dir):
    """fairseq-generate --retain-dropout (Monte-Carlo dropout): the structured blocks drop as fairseq's own do."""
    wide = ("--struct-window", "50", "--struct-rare", "0", "--struct-cross-window", "50", "--attention-dropout", "0.5")
    _, model = build(dict_dir, "structured_transformer_tiny", *TINY, *wide)
    src, tgt = torch.randint(4, 40, (2, 7)), torch.randint(4, 40, (2, 6))
    lengths = torch.tensor([7, 7])

    def passes() -> list[torch.Tensor]:
        with torch.no_grad():
            return [model(src, lengths, tgt)[0] for _ in range(2)]

    first, second = passes()
    assert torch.equal(first, second)  # eval: no dropout
    model.make_generation_fast_(retain_dropout=True)
    structured = [m for m in model.modules() if isinstance(m, StructuredMultiheadAttention | StructuredCrossAttention)]
    assert structured and all(m.dropout_module.apply_during_inference for m in structured)
    first, second = passes()
    assert not torch.equal(first, second)


def _pass_weights_through(block: torch.nn.Module) -> None:
    """Values and output projection the identity: with one-hot tokens (:func:`_one_hot_tokens`) each output row is
    its query's attention weights."""
    with torch.no_grad():
        for proj in (block.v_proj, block.out_proj):
            proj.weight.copy_(torch.eye(proj.weight.size(0)))
            proj.bias.zero_()


def _one_hot_tokens(T: int, B: int, H: int) -> torch.Tensor:
    """``(T, B, H * T)``: token t is e_t in every head."""
    return torch.eye(T).repeat(1, H).unsqueeze(1).expand(T, B, H * T)


@pytest.mark.parametrize("impl", ["reference", "efficient"])
@pytest.mark.parametrize("block", ["self", "cross"])
def test_structured_blocks_drop_attention_weights_at_the_dense_blocks_rate(block, impl):
    """A block made from fairseq's MultiheadAttention(dropout=p) drops its attention weights at rate p while
    training, rescaled by 1 / (1 - p), as the dense block does. Values and output projection are the
    identity and each key's vector is one-hot within every head, so the output holds the weights."""
    B, H, T, p = 2, 2, 64, 0.25
    E = H * T
    if block == "self":
        dense = MultiheadAttention(E, H, dropout=p, self_attention=True)
        ours = StructuredMultiheadAttention.from_dense(dense, Structure.from_roles(["syntactic"] * H, window=3, rare=0))
    else:
        dense = MultiheadAttention(E, H, dropout=p, encoder_decoder_attention=True)
        ours = StructuredCrossAttention.from_dense(dense, CrossBand(3))
    ours.impl = impl
    _pass_weights_through(ours)
    keys = _one_hot_tokens(T, B, H)
    query = keys if block == "self" else torch.randn(T, B, E, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        kept = ours.eval()(query, keys, keys, static_kv=block == "cross")[0]
        torch.manual_seed(0)
        dropped = ours.train()(query, keys, keys, static_kv=block == "cross")[0]
    assert_dropped(kept, dropped, p)


@pytest.mark.parametrize("impl", ["reference", "efficient"])
def test_decoding_steps_keep_attention_dropout_under_retain_dropout(impl):
    """fairseq-generate --retain-dropout drops the weights of every decoding step at the block's rate, as fairseq's
    dense self-attention does (the steps once attended without dropout while the full pass dropped). The output
    holds the weights, as in the test above."""
    B, H, T, p = 4, 2, 48, 0.25
    E = H * T
    dense = MultiheadAttention(E, H, dropout=p, self_attention=True)
    ours = StructuredMultiheadAttention.from_dense(
        dense, Structure.from_roles(["syntactic"] * H, window=3, rare=2, causal=True)
    )
    ours.impl = impl
    _pass_weights_through(ours)
    x = _one_hot_tokens(T, B, H)
    tokens, never = torch.arange(4, 4 + T).expand(B, T), torch.zeros(60, dtype=torch.bool)
    counts = torch.arange(60, 0, -1)

    def steps() -> torch.Tensor:
        state: dict = {}
        outs = []
        for t in range(T):
            context = TokenContext.from_tokens(tokens[:, : t + 1], counts, never, incremental=True)
            outs.append(ours(x[t : t + 1], None, None, incremental_state=state, context=context)[0])
        return torch.cat(outs)

    ours.eval()
    with torch.no_grad():
        kept = steps()
        ours.dropout_module.apply_during_inference = True  # what make_generation_fast_(retain_dropout=True) sets
        torch.manual_seed(0)
        dropped = steps()
    assert_dropped(kept, dropped, p)


def test_structured_blocks_and_roles(dict_dir):
    _, model = build(dict_dir, "structured_transformer_tiny", *TINY, "--struct-heads", "pos:1,syn:2,rare:1")
    for layer in model.encoder.layers:
        assert isinstance(layer.self_attn, StructuredMultiheadAttention)
        assert layer.self_attn.structure.window == (1, 3, 3, 3)
        assert layer.self_attn.structure.rare_heads == (False, False, False, True)
        assert not layer.self_attn.structure.causal
    for layer in model.decoder.layers:
        assert layer.self_attn.structure.causal
        assert type(layer.encoder_attn).__name__ == "MultiheadAttention"  # cross-attention dense by default
    _, enc_only = build(dict_dir, "structured_transformer_tiny", *TINY, "--struct-apply", "encoder")
    assert not any(isinstance(layer.self_attn, StructuredMultiheadAttention) for layer in enc_only.decoder.layers)


def test_structured_cross_attention_option(dict_dir):
    cross = ("--struct-cross-window", "2", "--struct-cross-slope", "0.8")
    _, model = build(dict_dir, "structured_transformer_tiny", *TINY, *cross, seed=3)
    assert all(isinstance(layer.encoder_attn, StructuredCrossAttention) for layer in model.decoder.layers)
    assert {(layer.encoder_attn.band.window, layer.encoder_attn.band.slope) for layer in model.decoder.layers} == {
        (2, 0.8)
    }
    _, dense = build(dict_dir, "transformer_tiny", *TINY, seed=3)
    assert list(dense.state_dict()) == list(model.state_dict())  # no new parameters
    # half-width 0 is a band too (each target position sees its aligned source position); only -1 is dense
    _, narrow = build(dict_dir, "structured_transformer_tiny", *TINY, "--struct-cross-window", "0")
    assert {(type(layer.encoder_attn), layer.encoder_attn.band) for layer in narrow.decoder.layers} == {
        (StructuredCrossAttention, CrossBand(0, 1.0))
    }


def test_wide_bands_everywhere_equal_the_dense_transformer(dict_dir):
    """The anchor of docs/design.md §5, cross-attention included: wide syntactic bands, no rare columns (bands
    of 10⁶ cost what the sequence does: the candidates stop at its ends)."""
    huge = str(10**6)
    wide = ("--struct-heads", "syn:4", "--struct-window", huge, "--struct-rare", "0", "--struct-cross-window", huge)
    _, model = build(dict_dir, "structured_transformer_tiny", *TINY, *wide, seed=3)
    _, dense = build(dict_dir, "transformer_tiny", *TINY, seed=3)
    model.eval(), dense.eval()
    src, lengths, tgt = _batch()
    assert torch.allclose(model(src, lengths, tgt)[0], dense(src, lengths, tgt)[0], atol=1e-5)


def test_quant_noise_acts_where_it_acts_on_the_dense_transformer(dict_dir, caplog):
    """--quant-noise-pq rewrites the weights of the layers it noises at each training forward; fairseq's dense
    self-attention reads its projection weights directly (never noised), its cross-attention and feed-forward
    layers call theirs. The wide-band model noises the same weights, so it trains as the dense one does."""
    huge = str(10**6)
    wide = ("--struct-heads", "syn:4", "--struct-window", huge, "--struct-rare", "0", "--struct-cross-window", huge)
    noise = ("--quant-noise-pq", "0.5", "--quant-noise-pq-block-size", "8")
    with caplog.at_level("WARNING"):
        _, model = build(dict_dir, "structured_transformer_tiny", *TINY, *wide, *noise, seed=3)
    assert "--quant-noise-pq: as in fairseq's dense transformer" in caplog.text
    _, dense = build(dict_dir, "transformer_tiny", *TINY, *noise, seed=3)
    src, lengths, tgt = _batch()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    outs = []
    for m in (model.train(), dense.train()):
        torch.manual_seed(0)
        outs.append(m(src, lengths, tgt)[0])
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    noised = {k for k, v in dense.state_dict().items() if not torch.equal(v, before[k])}
    assert any("encoder_attn" in k for k in noised) and not any("self_attn" in k for k in noised)
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in model.state_dict().items())


def test_dense_checkpoints_load_both_ways_and_init_matches(dict_dir):
    _, dense = build(dict_dir, "transformer_tiny", *TINY, seed=3)
    _, struct = build(dict_dir, "structured_transformer_tiny", *TINY, seed=3)
    dense_sd, struct_sd = dense.state_dict(), struct.state_dict()
    assert list(dense_sd) == list(struct_sd)
    assert all(torch.equal(dense_sd[k], struct_sd[k]) for k in dense_sd)  # same seed, same init
    struct.load_state_dict(dense_sd, strict=True)
    dense.load_state_dict(struct_sd, strict=True)


def _batch(B=3, S=9, T=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 44, (B, S), generator=gen)
    src[1, :2] = 1  # left padding, as fairseq pads sources
    src[:, -1] = 2
    tgt = torch.randint(4, 44, (B, T), generator=gen)
    tgt[:, 0] = 2  # prev_output_tokens start with eos
    return src, (src != 1).sum(1), tgt


def test_changing_future_targets_leaves_earlier_outputs(dict_dir):
    _, model = build(dict_dir, "structured_transformer_tiny", *TINY, "--struct-rare", "2")
    src, lengths, tgt = _batch()
    out, _ = model(src, lengths, tgt)
    changed = tgt.clone()
    changed[:, 5:] = torch.flip(changed[:, 5:], dims=[1]) + 1
    out2, _ = model(src, lengths, changed)
    assert torch.allclose(out[:, :5], out2[:, :5], atol=1e-6)
    assert not torch.allclose(out[:, 5:], out2[:, 5:])


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("--struct-error", "sink:2"),
        ("--struct-heads", "rare:2,pos:1,syn:1", "--struct-window", "1"),
        ("--struct-cross-window", "1", "--struct-cross-slope", "0.7"),
        ("--struct-window", str(10**6), "--struct-cross-window", str(10**6)),  # bands past the sequence
        (
            "--struct-heads",
            "pos:2,rare:2",
            "--struct-window",
            "0",
            "--struct-pos-window",
            "0",
            "--struct-error",
            "sink:3",
        ),
    ],
)
def test_incremental_decoding_matches_teacher_forcing(dict_dir, extra):
    _, model = build(dict_dir, "structured_transformer_tiny", *TINY, "--struct-rare", "2", *extra)
    src, lengths, tgt = _batch(T=12)
    full, _ = model(src, lengths, tgt)
    enc = model.encoder(src, src_lengths=lengths)
    state: dict = {}
    steps = []
    for t in range(tgt.size(1)):
        out, _ = model.decoder.forward(tgt[:, : t + 1], encoder_out=enc, incremental_state=state)
        steps.append(out)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    # the self-attention cache is bounded: last w keys (or all, when fewer) + r rare + sinks, whatever the length
    sizes = {layer.self_attn._get_input_buffer(state)["cache_key"].size(2) for layer in model.decoder.layers}
    s = model.decoder.layers[0].self_attn.structure
    assert sizes == {min(s.max_window, tgt.size(1)) + s.rare + s.sinks}


CROSS_BAND = ("--struct-cross-window", "1")


# fairseq's dense cross-attention skips a reorder that keeps the batch size (in beam search such a reorder moves
# beams among those of one sentence, whose sources are the same): distinct sources reordered so are for the band
@pytest.mark.parametrize(
    ("extra", "order", "same_source"),
    [
        ((), [2, 0, 0], True),
        (CROSS_BAND, [2, 0, 0], True),
        ((), [2, 0], False),
        (CROSS_BAND, [2, 0], False),
        (CROSS_BAND, [2, 0, 0], False),
        (("--struct-apply", "encoder", *CROSS_BAND), [2, 0], False),  # dense self-attention, the band still steps
    ],
    ids=["beams", "beams-band", "shrunk", "shrunk-band", "sentences-band", "dense-self-band"],
)
def test_beam_reorder_keeps_incremental_state_consistent(dict_dir, extra, order, same_source):
    """Reordered (beam search's new order) or shrunk (finished sentences dropped) mid-decoding, the steps go on
    as teacher forcing on the reordered batch. Distinct sources too: with beams of one sentence, a cross-attention
    cache that was not reordered at all gave the same outputs."""
    _, model = build(dict_dir, "structured_transformer_tiny", *TINY, "--struct-rare", "2", *extra)
    src, lengths, tgt = _batch(T=10)
    if same_source:  # beams of one sentence, as in beam search
        src, lengths = src[:1].expand_as(src), lengths[:1].expand_as(lengths)
    new_order = torch.tensor(order)
    enc = model.encoder(src, src_lengths=lengths)
    state: dict = {}
    for t in range(5):
        model.decoder.forward(tgt[:, : t + 1], encoder_out=enc, incremental_state=state)
    model.decoder.reorder_incremental_state_scripting(state, new_order)
    enc = model.encoder.reorder_encoder_out(enc, new_order)
    tgt_r = tgt[new_order]
    outs = [model.decoder.forward(tgt_r[:, : t + 1], encoder_out=enc, incremental_state=state)[0] for t in range(5, 10)]
    full, _ = model(src[new_order], lengths[new_order], tgt_r)
    assert torch.allclose(torch.cat(outs, dim=1), full[:, 5:], atol=1e-5)
