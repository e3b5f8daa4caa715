"""Issue-level guarantees of the architecture: context per forward (LayerDrop), building like
fairseq, one options schema, one candidate layout."""

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import REPO, TASK, build
from fairseq import options, tasks

from structmt.attention import structured_attention, structured_attention_with_weights
from structmt.attention.context import TokenContext
from structmt.attention.functional import reference_attention, unique_positions
from structmt.attention.multihead import StructuredMultiheadAttention
from structmt.attention.options import (
    StructureConfig,
    add_arguments,
    default_role_mix,
    flag,
    spec_fields,
    to_fairseq_args,
)
from structmt.attention.structure import CandidateLayout, CrossBand, Kind, Structure, make_supports
from structmt.models.structured_transformer import StructuredTransformerModel

SMALL = (
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "32",
    "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
)  # fmt: skip


def _batch(B=3, S=9, T=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 44, (B, S), generator=gen)
    src[1, :2] = 1
    src[:, -1] = 2
    tgt = torch.randint(4, 44, (B, T), generator=gen)
    tgt[:, 0] = 2
    return src, (src != 1).sum(1), tgt


# --------------------------------------------------------------------------
# Context with each forward


def test_training_forward_never_depends_on_the_batch_before(dict_dir):
    """LayerDrop in training mode: a warmed model (one forward on another batch first) and a fresh
    copy of the same weights give the same output for the same seed."""
    drop = (
        "--encoder-layers",
        "3",
        "--decoder-layers",
        "3",
        "--encoder-layerdrop",
        "0.5",
        "--decoder-layerdrop",
        "0.5",
    )
    _, fresh = build(dict_dir, "structured_transformer_tiny", *SMALL, *drop, "--struct-rare", "2", seed=1)
    _, warmed = build(dict_dir, "structured_transformer_tiny", *SMALL, *drop, "--struct-rare", "2", seed=1)
    warmed.load_state_dict(fresh.state_dict())
    fresh.train(), warmed.train()
    src, lengths, tgt = _batch(B=3, S=9, T=8)
    other_src, other_lengths, other_tgt = _batch(B=5, S=12, T=11, seed=7)
    for seed in range(6):  # several LayerDrop draws, so some keep different layers than the warm-up
        torch.manual_seed(100 + seed)
        warmed(other_src, other_lengths, other_tgt)
        torch.manual_seed(seed)
        want = fresh(src, lengths, tgt)[0]
        torch.manual_seed(seed)
        got = warmed(src, lengths, tgt)[0]
        assert torch.equal(got, want)


def _module_state(model):
    """Every plain attribute of every module, by identity (fairseq's decoder caches its causal mask)."""
    return {
        (name, key): id(value)
        for name, m in model.named_modules()
        for key, value in vars(m).items()
        if key != "_future_mask"
    }


def test_no_batch_state_is_left_on_modules(dict_dir):
    _, model = build(
        dict_dir, "structured_transformer_tiny", *SMALL, "--struct-rare", "2", "--struct-cross-window", "2"
    )
    src, lengths, tgt = _batch()
    model(src, lengths, tgt)  # the first forward may cache what does not depend on the batch
    before = _module_state(model)
    src, lengths, tgt = _batch(B=2, S=7, T=5, seed=3)
    model(src, lengths, tgt)
    enc = model.encoder(src, src_lengths=lengths)
    state: dict = {}
    for t in range(3):
        model.decoder(tgt[:, : t + 1], encoder_out=enc, incremental_state=state)
    assert _module_state(model) == before


def test_activation_checkpointing_sees_the_forwards_context(dict_dir):
    """--checkpoint-activations re-runs each layer in the backward pass: same loss and gradients."""
    args = (*SMALL, "--struct-rare", "2", "--struct-heads", "rare:4")
    _, plain = build(dict_dir, "structured_transformer_tiny", *args, seed=2)
    _, ckpt = build(dict_dir, "structured_transformer_tiny", *args, "--checkpoint-activations", seed=2)
    src, lengths, tgt = _batch()
    grads = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(0)
        model(src, lengths, tgt)[0].pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_the_layers_of_a_forward_share_one_plan(dict_dir, monkeypatch):
    """The candidates of a full pass are built once per forward and structure, not once per layer,
    and sharing them changes no output or gradient (training mode, dropout on)."""
    from structmt.attention import multihead

    args = (*SMALL, "--encoder-layers", "3", "--decoder-layers", "3", "--struct-rare", "2", "--struct-heads",
            "rare:4", "--struct-error", "sink:1", "--struct-cross-window", "2", "--dropout", "0.1",
            "--attention-dropout", "0.1")  # fmt: skip
    _, model = build(dict_dir, "structured_transformer_tiny", *args, seed=3)
    model.train()
    src, lengths, tgt = _batch()
    built = []
    for name in ("self_attention_plan", "cross_attention_plan"):
        real = getattr(multihead, name)
        monkeypatch.setattr(
            multihead, name, lambda *a, _real=real, _name=name, **kw: built.append(_name) or _real(*a, **kw)
        )

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(0)
        out = model(src, lengths, tgt)[0]
        out.pow(2).mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    shared_out, shared_grads = loss_and_grads()
    assert sorted(built) == ["cross_attention_plan", "self_attention_plan", "self_attention_plan"]  # 9 blocks
    monkeypatch.setattr(multihead, "_shared_plan", lambda context, key, mask, build: build())
    built.clear()
    own_out, own_grads = loss_and_grads()
    assert len(built) == 9
    assert torch.equal(shared_out, own_out)
    assert shared_grads.keys() == own_grads.keys()
    for name in shared_grads:
        assert torch.equal(shared_grads[name], own_grads[name]), name


def test_a_plan_is_shared_only_for_the_same_padding_mask():
    """A block run twice in one context with different padding masks attends with each mask."""
    attn = StructuredMultiheadAttention(8, 2, Structure.from_roles(["rare", "syntactic"], window=1, rare=1))
    x = torch.randn(6, 2, 8)
    tokens = torch.randint(4, 20, (2, 6))
    counts, never = torch.arange(20), torch.zeros(20, dtype=torch.bool)
    context = TokenContext.from_tokens(tokens, counts, never)
    no_pad = torch.zeros(2, 6, dtype=torch.bool)
    pad = no_pad.clone()
    pad[1, :2] = True
    attn(x, x, x, key_padding_mask=no_pad, context=context)
    got, _ = attn(x, x, x, key_padding_mask=pad, context=context)
    want, _ = attn(x, x, x, key_padding_mask=pad, context=TokenContext.from_tokens(tokens, counts, never))
    assert torch.equal(got, want)
    unpadded, _ = attn(x, x, x, key_padding_mask=no_pad, context=context)
    assert not torch.equal(got[:, 1], unpadded[:, 1])


def test_a_rare_head_outside_its_model_asks_for_the_context():
    attn = StructuredMultiheadAttention(8, 2, Structure.from_roles(["rare", "syntactic"], window=1, rare=1))
    x = torch.randn(5, 2, 8)
    with pytest.raises(RuntimeError, match="rarity of the input tokens"):
        attn(x, x, x)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.stack([torch.randperm(16, generator=gen)[:5] + 4 for _ in range(2)])  # distinct tokens
    context = TokenContext.from_tokens(tokens, torch.arange(20), torch.zeros(20, dtype=torch.bool))  # count = id
    without = TokenContext.from_tokens(tokens, torch.arange(20), torch.zeros(20, dtype=torch.bool), need_rarity=False)
    with pytest.raises(RuntimeError, match="rare-token heads need the rarity keys of the input tokens; none were"):
        attn(x, x, x, context=without)
    with pytest.raises(RuntimeError, match=r"the token context holds \(2, 4\) tokens, the input \(2, 5\)"):
        attn(x, x, x, context=TokenContext.from_tokens(tokens[:, :4], torch.arange(20), torch.zeros(20, dtype=bool)))
    out, _ = attn(x, x, x, context=context)
    # the rare head sees the column of each sentence's rarest token (its smallest id here), from every query
    rarest = tokens.argmin(-1).view(2, 1, 1).expand(2, 5, 1)
    q, k, v = (proj(x).view(5, 2, 2, 4).permute(1, 2, 0, 3) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    want = structured_attention(q, k, v, window=(1, 1), rare_index=rarest, structure=attn.structure, impl="reference")
    torch.testing.assert_close(out, attn.out_proj(want.permute(2, 0, 1, 3).reshape(5, 2, 8)))


def _train(data_bin, save_dir, *extra):
    cmd = [
        sys.executable, "-m", "fairseq_cli.train", str(data_bin), "--user-dir", str(REPO / "structmt"),
        "--arch", "structured_transformer_tiny", *TASK, "--encoder-layers", "3", "--decoder-layers", "2", *SMALL,
        "--optimizer", "adam", "--lr", "0.001", "--max-tokens", "500", "--max-update", "6", "--num-workers", "0",
        "--no-epoch-checkpoints", "--disable-validation", "--save-dir", str(save_dir), "--no-progress-bar",
        "--required-batch-size-multiple", "1", *extra,
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _generate(data_bin, checkpoint, *extra):
    cmd = [
        sys.executable, "-m", "fairseq_cli.generate", str(data_bin), "--user-dir", str(REPO / "structmt"),
        "--path", str(checkpoint), *TASK, "--gen-subset", "test", "--beam", "2", "--max-len-b", "5",
        "--batch-size", "16", "--required-batch-size-multiple", "1", *extra,
    ]  # fmt: skip
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return [line for line in done.stdout.splitlines() if line.startswith("H-")]


def test_layerdrop_train_then_generate_with_and_without_pruning(data_bin, tmp_path):
    """fairseq's test_transformer_layerdrop, with the structured arch (rare heads, cross band)."""
    _train(
        data_bin, tmp_path, "--encoder-layerdrop", "0.5", "--decoder-layerdrop", "0.5",
        "--struct-cross-window", "3", "--struct-heads", "pos:1,syn:1,rare:2",
    )  # fmt: skip
    checkpoint = tmp_path / "checkpoint_last.pt"
    full = _generate(data_bin, checkpoint)
    pruned = _generate(
        data_bin, checkpoint, "--model-overrides", "{'encoder_layers_to_keep':'0,2','decoder_layers_to_keep':'1'}"
    )
    assert len(full) == len(pruned) == 60


RARE_HEADS = ("--struct-heads", "pos:1,syn:1,rare:2")


def _count_every_symbol_100(folder: Path, *langs: str) -> None:
    """Rewrite ``folder``'s dict.<lang>.txt with the same symbols, each counted 100 (a dictionary rebuilt as
    ``cut -f1 spm.vocab | sed 's/$/ 100/'``)."""
    for lang in langs:
        lines = (folder / f"dict.{lang}.txt").read_text().splitlines()
        (folder / f"dict.{lang}.txt").write_text("".join(f"{line.rsplit(' ', 1)[0]} 100\n" for line in lines))


@pytest.fixture(scope="module")
def rare_heads_checkpoint(data_bin, tmp_path_factory) -> Path:
    """A model with rare-token heads trained 6 updates (each test copies it: a resume writes it again)."""
    folder = tmp_path_factory.mktemp("rare_heads")
    _train(data_bin, folder, *RARE_HEADS)
    return folder / "checkpoint_last.pt"


def test_a_checkpoint_is_refused_with_dictionaries_of_other_counts(data_bin, tmp_path, rare_heads_checkpoint):
    """Rarity comes from dict.*.txt's counts, which the checkpoint does not hold: the same symbols with other
    counts (a dictionary rebuilt as ``cut -f1 spm.vocab | sed 's/$/ 100/'``) changed most translations, in
    silence. The checkpoint records their digest; other counts are refused, or taken when overridden."""
    checkpoint = Path(shutil.copy(rare_heads_checkpoint, tmp_path))
    assert len(_generate(data_bin, checkpoint)) == 60
    other = tmp_path / "other_bin"
    shutil.copytree(data_bin, other)
    _count_every_symbol_100(other, "en", "de")
    with pytest.raises(subprocess.CalledProcessError) as err:
        _generate(other, checkpoint)
    assert "token counts of this data folder's dictionaries (dict.*.txt) differ" in err.value.stderr
    overridden = _generate(other, checkpoint, "--model-overrides", "{'structmt_rarity_counts_sha256': ''}")
    assert len(overridden) == 60


def test_a_training_resumed_under_another_structure_is_refused(data_bin, tmp_path, rare_heads_checkpoint):
    """fairseq-train builds the model from its command line and loads a checkpoint's weights into it: resumed with
    other --struct-* options, other dictionary counts under rare-token heads, or a dense --arch, the weights
    trained on under another structure, in silence, and the checkpoints after it recorded the new settings only;
    so did another head count (the projections keep their shape). Refused before anything is loaded;
    --struct-impl (a kernel choice) may change."""
    heads = RARE_HEADS
    checkpoint = Path(shutil.copy(rare_heads_checkpoint, tmp_path))
    before = checkpoint.read_bytes()
    other = tmp_path / "other_bin"
    shutil.copytree(data_bin, other)
    _count_every_symbol_100(other, "en", "de")
    counts = "the token counts of the dictionaries (dict.*.txt) differ from those it was trained with"
    dense = "it holds a model of --arch structured_transformer_tiny, and this command trains a dense one"
    # (other --struct-* options and head counts, compared the same way: the resume_problem tests below)
    refusals = [
        (other, heads, f"its structure differs from this command's: {counts}"),
        (data_bin, ("--arch", "transformer_tiny"), f"{dense} (--arch transformer_tiny)"),
    ]
    for data, extra, message in refusals:
        with pytest.raises(subprocess.CalledProcessError) as err:
            _train(data, tmp_path, *extra, "--max-update", "8")
        assert f"cannot resume from {checkpoint}: {message}" in err.value.stderr
        assert checkpoint.read_bytes() == before
    _train(data_bin, tmp_path, *heads, "--struct-impl", "reference", "--max-update", "8")
    assert torch.load(checkpoint, map_location="cpu")["optimizer_history"][-1]["num_updates"] == 8


def test_a_resume_under_other_head_counts_is_refused_for_a_dense_model_too():
    """The projections keep their shape: fairseq loaded the weights into other heads, in silence."""
    from argparse import Namespace

    from structmt.models.structured_transformer import resume_problem

    heads = dict(arch="transformer_tiny", encoder_attention_heads=4, decoder_attention_heads=4)
    assert resume_problem(Namespace(**heads), Namespace(**heads), torch.nn.Module()) == ""
    now = Namespace(**heads | {"decoder_attention_heads": 8})
    assert resume_problem(Namespace(**heads), now, torch.nn.Module()) == (
        "its settings differ from this command's: --decoder-attention-heads 4 when trained, 8 now"
    )
    assert resume_problem({"_name": "transformer_tiny"}, now, torch.nn.Module()) == ""  # not recorded: no claim
    # a checkpoint of settings saved as a DictConfig names its arch in _name
    assert resume_problem({"_name": "structured_transformer_tiny"}, now, torch.nn.Module()) == (
        "it holds a model of --arch structured_transformer_tiny, and this command trains a dense one "
        "(--arch transformer_tiny)"
    )


def test_a_resume_names_each_setting_changed_taking_unrecorded_ones_at_their_defaults(dict_dir):
    """A checkpoint saved before an option existed was trained at its default (no change); the dictionaries'
    counts matter to a model with rare-token heads only; other heads or --struct-* options are each named."""
    from argparse import Namespace

    from structmt.models.structured_transformer import RARITY_COUNTS, resume_problem

    base = [str(dict_dir), "--user-dir", str(REPO / "structmt"), "--arch", "structured_transformer_tiny", *TASK, *SMALL]
    for heads, counts_matter in [("pos:2,syn:2", False), ("pos:1,syn:1,rare:2", True)]:
        args = options.parse_args_and_arch(options.get_training_parser(), [*base, "--struct-heads", heads])
        model = tasks.setup_task(args).build_model(args)
        saved = Namespace(**vars(args))
        del saved.struct_error  # not recorded: at its default ('none'), as now
        assert resume_problem(saved, args, model) == ""
        setattr(saved, RARITY_COUNTS, "0" * 16)
        assert resume_problem(saved, args, model) == (
            "its structure differs from this command's: the token counts of the dictionaries (dict.*.txt) differ "
            "from those it was trained with, which its rare-token heads rank tokens by"
            if counts_matter
            else ""
        )
    # the same weights split into other heads, or under another structure: each difference named (the head mix must
    # change with the heads); --struct-impl only picks a kernel
    trained = Namespace(**vars(args) | {"encoder_attention_heads": 8, "struct_window": 0, "struct_impl": "reference"})
    assert resume_problem(trained, args, model) == (
        "its structure differs from this command's: --encoder-attention-heads 8 when trained, 4 now; "
        "--struct-window 0 when trained, 3 now"
    )


def test_bf16_trains_without_a_tpu(data_bin, tmp_path):
    """fairseq 0.12 turns --bf16 into --tpu; with the plugin loaded it trains in bfloat16 where it runs."""
    _train(data_bin, tmp_path, "--bf16", "--cpu", "--max-update", "2", "--struct-heads", "pos:1,syn:1,rare:2")
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")
    assert state["cfg"]["common"]["bf16"] and not state["cfg"]["common"]["tpu"]
    assert state["optimizer_history"][-1]["num_updates"] == 2
    assert state["optimizer_history"][-1]["optimizer_name"] == "FP16Optimizer"  # fairseq's half-precision path


def test_a_target_dictionary_of_other_counts_is_refused_under_rare_heads_only(dict_dir, tmp_path):
    """The digest a model records covers both dictionaries' counts: other counts in dict.de.txt alone (the
    decoder's) are refused where a head ranks tokens by them; a model without rare-token heads builds."""
    from structmt.models.structured_transformer import RARITY_COUNTS

    other = tmp_path / "other"
    other.mkdir()
    for lang in ("en", "de"):
        shutil.copy(dict_dir / f"dict.{lang}.txt", other / f"dict.{lang}.txt")
    _count_every_symbol_100(other, "de")
    for heads, refused in [("pos:1,syn:1,rare:2", True), ("pos:2,syn:2", False)]:
        argv = ["--user-dir", str(REPO / "structmt"), "--arch", "structured_transformer_tiny", *TASK, *SMALL]
        argv += ["--struct-heads", heads]
        trained = options.parse_args_and_arch(options.get_training_parser(), [str(dict_dir), *argv])
        tasks.setup_task(trained).build_model(trained)
        args = options.parse_args_and_arch(options.get_training_parser(), [str(other), *argv])
        setattr(args, RARITY_COUNTS, getattr(trained, RARITY_COUNTS))  # as loading its checkpoint sets it
        if refused:
            with pytest.raises(ValueError, match=r"token counts of this data folder's dictionaries \(dict.\*.txt\)"):
                tasks.setup_task(args).build_model(args)
        else:
            tasks.setup_task(args).build_model(args)


def test_more_rare_columns_than_positions_is_refused_naming_the_option(dict_dir):
    """``--struct-rare 100000`` died at the first batch in the allocator (a (B, T, r, r) tensor), naming no option.
    More rare columns than the model's longest sequence is refused when the model is built; as many is taken."""
    base = [str(dict_dir), "--user-dir", str(REPO / "structmt"), "--arch", "structured_transformer_tiny", *TASK, *SMALL]
    base += ["--max-source-positions", "64", "--max-target-positions", "48"]
    for rare, heads in [("65", "auto"), ("100000", "syn:2,rare:2")]:
        extra = ["--struct-rare", rare, "--struct-heads", heads]
        args = options.parse_args_and_arch(options.get_training_parser(), [*base, *extra])
        with pytest.raises(ValueError, match=rf"--struct-rare {rare}: more rare-token columns than the longest .* "
                           r"\(64 positions"):  # fmt: skip
            tasks.setup_task(args).build_model(args)
    for extra in (["--struct-rare", "64"], ["--struct-rare", "100000", "--struct-heads", "pos:2,syn:2"]):
        args = options.parse_args_and_arch(options.get_training_parser(), [*base, *extra])
        tasks.setup_task(args).build_model(args)  # as many as positions; or no rare-token head to use them


def test_pruned_layers_keep_their_own_role_mix(dict_dir):
    """``--model-overrides "{'encoder_layers_to_keep': '0,2'}"``: each kept layer keeps its own role mix."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        [str(dict_dir), "--user-dir", str(REPO / "structmt"), "--arch", "structured_transformer_tiny", *TASK, *SMALL,
         "--encoder-layers", "3", "--struct-apply", "encoder", "--struct-heads", "pos:4;syn:4;rare:4"],
    )  # fmt: skip
    args.encoder_layers_to_keep = "0,2"  # as fairseq-generate's --model-overrides sets it
    model = tasks.setup_task(args).build_model(args)
    kept = [layer.self_attn.structure for layer in model.encoder.layers]
    assert [s.window for s in kept] == [(1,) * 4, (3,) * 4]
    assert [s.rare_heads for s in kept] == [(False,) * 4, (True,) * 4]
    # fairseq's prune_state_dict gives the kept layers their weights in sorted order, whatever the option's order:
    # their roles follow the same order (listed '2,0', new layer 0 got layer 2's mix and layer 0's weights)
    args.encoder_layers_to_keep = "2,0"
    assert [layer.self_attn.structure for layer in tasks.setup_task(args).build_model(args).encoder.layers] == kept
    args.encoder_layers_to_keep = "0,0"
    with pytest.raises(ValueError, match="--encoder-layers-to-keep 0,0: a layer is listed twice"):
        tasks.setup_task(args).build_model(args)
    args.encoder_layers, args.encoder_layers_to_keep = 3, "0,3"
    with pytest.raises(ValueError, match="layers-to-keep \\[0, 3\\]: the role mixes cover 3 layers"):
        tasks.setup_task(args).build_model(args)


# --------------------------------------------------------------------------
# Build like fairseq


def test_a_misspelt_structure_override_is_refused(dict_dir):
    """fairseq-generate --model-overrides "{'struct_windw': 5}" set an attribute no option reads: the checkpoint's
    window was used, in silence."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(dict_dir), "--user-dir", str(REPO / "structmt"), "--arch", "structured_transformer_tiny", *TASK]
    )
    args.struct_windw = 5
    with pytest.raises(ValueError, match="struct_windw: no structmt option of that name .*struct_window"):
        tasks.setup_task(args).build_model(args)
    # structmt-run's names (model.window, model.cross_window) were set beside the options and ignored
    del args.struct_windw
    args.window, args.cross_window = 0, 2
    with pytest.raises(ValueError, match=r"cross_window, window: structmt-run's name of an option; fairseq's "
                       r"settings \(and --model-overrides\) name it struct_cross_window, struct_window"):  # fmt: skip
        tasks.setup_task(args).build_model(args)


def test_settings_given_as_a_dictconfig_build_the_structure_they_name(dict_dir):
    """fairseq-hydra-train, and loading a checkpoint it saved, give the model's settings as a DictConfig, from
    which fairseq's TransformerConfig copies only its own fields: the --struct-* options were dropped (the default
    structure built, the given one logged and saved). The model built is the one a Namespace of the same settings
    builds; the settings record what the build filled in; a misspelt key is refused as from a Namespace."""
    from fairseq.models import build_model
    from omegaconf import OmegaConf

    from structmt.models.structured_transformer import RARITY_COUNTS

    argv = [str(dict_dir), "--user-dir", str(REPO / "structmt"), "--arch", "structured_transformer_tiny", *TASK]
    struct = ["--struct-window", "5", "--struct-rare", "0", "--struct-cross-window", "2"]
    args = options.parse_args_and_arch(options.get_training_parser(), argv + struct)
    task = tasks.setup_task(args)
    cfg = OmegaConf.create({"_name": "structured_transformer_tiny", "struct_window": 5, "struct_rare": 0,
                            "struct_cross_window": 2, RARITY_COUNTS: ""})  # fmt: skip
    hydra_model, namespace_model = build_model(cfg, task), task.build_model(args)
    assert [str(m) for m in hydra_model.modules()] == [str(m) for m in namespace_model.modules()]
    assert hydra_model.encoder.layers[0].self_attn.structure.window == (5, 5)
    # what checkpoints save: the settings the build added (struct_heads) and those it changed (the counts' digest,
    # given "" as --model-overrides gives it to take new counts)
    assert cfg.struct_heads == "auto" and cfg[RARITY_COUNTS] == getattr(args, RARITY_COUNTS) != ""
    for key, message in [("struct_windw", "struct_windw: no structmt option"), ("window", "window: structmt-run's")]:
        with pytest.raises(ValueError, match=message):
            build_model(OmegaConf.create({"_name": "structured_transformer_tiny", key: 5}), task)


def test_structured_archs_take_the_hyperparameters_of_the_dense_archs_they_mirror(dict_dir):
    """Each structured arch is its dense fairseq arch with structured attention: a dense baseline of the mirrored
    arch has the same hyperparameters (transformer_multi30k: 4+4 layers, 128 wide, FFN 256, 4 heads, shared
    embeddings)."""
    from structmt.models.structured_transformer import MIRRORED_ARCHS

    def settings(arch: str) -> dict:
        argv = [str(dict_dir), "--user-dir", str(REPO / "structmt"), "--arch", arch, *TASK]
        return vars(options.parse_args_and_arch(options.get_training_parser(), argv))

    for structured in MIRRORED_ARCHS:
        dense = settings(structured.replace("structured_", "", 1))
        ours = settings(structured)
        assert {k: ours[k] for k in dense if k != "arch"} == {k: v for k, v in dense.items() if k != "arch"}
    multi30k = settings("structured_transformer_multi30k")
    for side in ("encoder", "decoder"):
        assert [multi30k[f"{side}_{key}"] for key in ("layers", "embed_dim", "ffn_embed_dim", "attention_heads")] == [
            4, 128, 256, 4
        ]  # fmt: skip
    assert multi30k["share_all_embeddings"]


def test_build_model_from_a_partial_namespace(dict_dir):
    """As fairseq's own sequence-generator tests build models: the arch defaults are filled first."""
    args = argparse.Namespace(encoder_layers=2, decoder_layers=1)
    parser = argparse.ArgumentParser()
    tasks.TASK_REGISTRY["translation"].add_args(parser)
    task_args = parser.parse_args([str(dict_dir), *TASK[2:]])
    task = tasks.TASK_REGISTRY["translation"].setup_task(task_args)
    model = StructuredTransformerModel.build_model(args, task)
    assert len(model.encoder.layers) == 2 and len(model.decoder.layers) == 1
    assert isinstance(model.encoder.layers[0].self_attn, StructuredMultiheadAttention)
    assert model.encoder.layers[0].self_attn.structure.rare == StructureConfig.struct_rare  # the schema's default


# --------------------------------------------------------------------------
# One options schema


def test_flags_come_from_the_schema():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"}
    assert flags == {flag(f.name) for f in fields(StructureConfig)}
    assert {name for name, _, _ in spec_fields()} == {f.name.removeprefix("struct_") for f in fields(StructureConfig)}
    assert to_fairseq_args(StructureConfig(struct_window=5, struct_rare=2, struct_cross_slope=0.5)) == [
        "--struct-window", "5", "--struct-cross-slope", "0.5",
    ]  # fmt: skip


@pytest.mark.reliability  # docs/reliability.md
def test_a_checkpoint_keeps_the_roles_not_the_roles_files_path(data_bin, tmp_path):
    """Trained with --struct-heads-from, a checkpoint rebuilds the same heads after the file changed or went."""
    from fairseq import checkpoint_utils

    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"encoder": ["rare:1,syn:3"] * 3, "decoder": ["pos:1,syn:3"] * 2}))
    _train(data_bin, tmp_path, "--struct-heads-from", str(roles), "--struct-window", "2", "--max-update", "1")

    def loaded_windows() -> list[tuple[int, ...]]:
        (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "checkpoint_last.pt")])
        layers = [*model.encoder.layers, *model.decoder.layers]
        return [layer.self_attn.structure.window for layer in layers]

    trained = [(2, 2, 2, 2)] * 3 + [(1, 2, 2, 2)] * 2
    assert loaded_windows() == trained
    roles.write_text(json.dumps({"encoder": ["pos:4"] * 3, "decoder": ["pos:4"] * 2}))  # e.g. analyze ran again
    assert loaded_windows() == trained
    roles.unlink()
    assert loaded_windows() == trained


def test_every_problem_is_named_in_the_users_terms():
    bad = StructureConfig(struct_window=-1, struct_cross_slope=0.0, struct_error="sink:x")
    problems = bad.problems(lambda name: "model." + name.removeprefix("struct_"))
    assert problems == [
        "model.window=-1 must be >= 0",
        "model.cross_slope=0.0 must be finite and > 0 (source/target length ratio)",
        "model.error='sink:x' must be 'none' or 'sink:K' with an integer K >= 1",
    ]
    assert StructureConfig().problems() == []
    assert StructureConfig(struct_cross_slope=float("inf")).problems() == [
        "--struct-cross-slope=inf must be finite and > 0 (source/target length ratio)"
    ]


def test_error_term_and_block_values_at_their_boundaries_are_refused_up_front():
    """An error-key bound of 0, ``sink:0``, ``sinks * eps`` of exactly 1 and a ``--struct-apply`` naming no block
    are each refused before any model is built, naming the option; the values just inside are taken."""
    assert StructureConfig(struct_error="sink:1", struct_error_eps=0.99).problems() == []
    assert StructureConfig(struct_error_eps=0.0).problems() == ["--struct-error-eps=0.0 must lie in (0, 1)"]
    assert StructureConfig(struct_error="sink:0").problems() == [
        "--struct-error='sink:0' must be 'none' or 'sink:K' with an integer K >= 1"
    ]
    assert StructureConfig(struct_error="sink:2", struct_error_eps=0.5).problems() == [
        "--struct-error-eps=0.5: sinks * eps must lie in (0, 1), got 2 * 0.5"
    ]
    for apply in ("", " , "):
        assert StructureConfig(struct_apply=apply).problems() == [
            f"--struct-apply={apply!r} names no attention block; choose one or both of encoder, decoder (a model "
            "with none structured is the dense transformer: --arch transformer_…, structmt-run model=dense_…)"
        ]


def test_a_cross_window_of_zero_is_a_band_of_half_width_zero_and_uses_the_slope():
    """``--struct-cross-window 0`` structures the cross-attention (each target position sees its aligned source
    position only); only -1 keeps it dense, so a slope set with window 0 has an effect and is not warned about."""
    assert StructureConfig(struct_cross_window=0, struct_cross_slope=0.5).cross_band() == CrossBand(0, 0.5)
    assert StructureConfig().cross_band() is None
    assert StructureConfig(struct_cross_window=0, struct_cross_slope=0.5).without_effect({"syntactic"}) == []


def test_auto_roles_keep_one_rare_head_under_four_heads():
    """``--struct-heads auto`` with r > 0 gives a model of fewer than four heads one rare head (H/4 rounds to 0),
    and none with r = 0."""
    assert default_role_mix(2, 2) == "pos:0,syn:1,rare:1"
    assert default_role_mix(3, 1) == "pos:0,syn:2,rare:1"
    assert default_role_mix(2, 0) == "pos:0,syn:2,rare:0"
    assert default_role_mix(8, 2) == "pos:2,syn:4,rare:2"


def test_roles_from_a_roles_file_set_aside_the_struct_heads_option():
    """With --struct-heads-from the roles come from the file: --struct-heads is not checked (its value is only
    warned about), and --struct-rare with no rare head in the file is said to have no effect."""
    roles = json.dumps({"encoder": ["syn:2"], "decoder": ["syn:2"]})
    assert StructureConfig(struct_heads="diag:2", struct_heads_from=roles).problems() == []
    assert StructureConfig(struct_heads_from=roles, struct_rare=3).without_effect({"syntactic"}) == [
        "--struct-rare=3 has no effect: no head is rare"
    ]


def test_one_role_mix_serves_every_kept_layer_of_a_pruned_stack():
    """With one mix for all layers, fairseq's layers-to-keep pruning keeps any layers: the mix covers the whole
    stack, not just one layer."""
    kept = StructureConfig(struct_heads="pos:1,syn:1").layer_structures("encoder", 2, 3, layers_to_keep=[0, 2])
    assert [s.window for s in kept] == [(1, 3), (1, 3)]


# --------------------------------------------------------------------------
# One candidate layout


def test_kind_codes_match_the_cpp_kernel():
    source = (REPO / "structmt" / "attention" / "csrc" / "candidates.cpp").read_text()
    enum = re.search(r"enum Kind : int8_t \{([^}]*)\}", source).group(1)
    cpp = {name.strip(): int(value) for name, value in (item.split("=") for item in enum.split(","))}
    assert cpp == {k.name: k.value for k in Kind}


def test_layout_sizes_and_segments():
    s = Structure.from_roles(["positional", "syntactic", "rare"], window=3, rare=2, causal=True, sinks=1, sink_eps=0.1)
    layout = CandidateLayout.of(s)
    assert (layout.band, layout.rare, layout.error) == (4, 2, 1)
    assert s.keys_per_query == layout.size == 7
    assert CandidateLayout.of(CrossBand(4)).size == CrossBand(4).keys_per_query == 9
    with pytest.raises(ValueError, match="the rare segment has 1 slots, the layout 2"):
        layout.assemble(torch.zeros(1, 4), torch.zeros(1, 1), torch.zeros(1, 1))


def test_layout_kinds_follow_the_supports():
    s = Structure.from_roles(["syntactic", "rare"], window=1, rare=1, causal=False, sinks=1, sink_eps=0.1)
    T = 6
    sets = torch.full((1, T, 1), 4)
    sinks = torch.zeros(1, 1, dtype=torch.long)
    supports = make_supports(s, num_keys=T, rare_sets=sets, key_padding_mask=None, sink_pos=sinks, device="cpu")
    layout = CandidateLayout.of(s)
    q = torch.arange(T)
    positions = layout.assemble((q.view(1, T, 1) + torch.arange(-1, 2)), sets, sinks.unsqueeze(1).expand(1, T, 1))
    kinds = layout.kinds(positions, supports, q, 2)
    # query 0: band keys -1 (none), 0, 1; rare key 4; error key 0 is in the band already
    assert kinds[0, 0, 0].tolist() == [Kind.NOT_ALLOWED, Kind.SUPPORT, Kind.SUPPORT, Kind.NOT_ALLOWED, 0]
    assert kinds[0, 1, 0].tolist() == [Kind.NOT_ALLOWED, Kind.SUPPORT, Kind.SUPPORT, Kind.SUPPORT, 0]
    assert kinds[0, 0, 3].tolist() == [Kind.SUPPORT] * 3 + [Kind.NOT_ALLOWED, Kind.ERROR]


@pytest.mark.parametrize("impl", ["reference", "efficient"])
def test_an_error_key_that_is_a_rare_key_belongs_to_the_rare_group_only(impl):
    """A key that is both a query's rare key (outside its band) and an error key is a structured key only: it is
    not given the error term's weight on top of its softmax share, so the rare head attends as without sinks."""
    s = Structure.from_roles(["syntactic", "rare"], window=1, rare=1, sinks=1, sink_eps=0.1)
    T = 6
    sets = torch.zeros(1, T, 1, dtype=torch.long)  # the rare key of every query is position 0, the error key
    supports = make_supports(s, num_keys=T, rare_sets=sets, key_padding_mask=None, sink_pos=sets[:, 0], device="cpu")
    b, h = torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.arange(2).view(1, 2, 1, 1)
    q, kv = torch.arange(T).view(1, 1, T, 1), torch.arange(T).view(1, 1, 1, T)
    assert supports.rare(b, h, q, kv)[0, :, :, 0].int().tolist() == [[0] * T, [0, 0, 1, 1, 1, 1]]
    assert supports.error(b, h, q, kv)[0, :, :, 0].int().tolist() == [[0, 0, 1, 1, 1, 1], [0] * T]
    gen = torch.Generator().manual_seed(0)
    qkv = [torch.randn(1, 2, T, 8, generator=gen) for _ in range(3)]
    given = dict(window=1, rare_index=torch.tensor([[0]]), rare_heads=[False, True], impl=impl)
    _, with_sink = structured_attention_with_weights(*qkv, **given, sinks=1, sink_eps=0.1)
    _, without = structured_attention_with_weights(*qkv, **given)
    torch.testing.assert_close(with_sink[0, 1], without[0, 1])
    torch.testing.assert_close(with_sink.sum(-1), torch.ones(1, 2, T))


# --------------------------------------------------------------------------
# Repeated rare positions count once


@pytest.mark.parametrize("impl", ["reference", "efficient"])
def test_repeated_rare_positions_count_once(impl):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 12, 8, generator=gen) for _ in range(3))
    repeated = torch.tensor([[3, 3, 9], [5, 1, 5]])
    once = torch.tensor([[3, -1, 9], [5, 1, -1]])
    got = structured_attention(q, k, v, window=0, rare_index=repeated, impl=impl)
    want = structured_attention(q, k, v, window=0, rare_index=once, impl=impl)
    assert torch.allclose(got, want, atol=1e-6)
    s = Structure((0, 0), (True, True), rare=3)
    sets = once.unsqueeze(1).expand(2, 12, 3)
    supports = make_supports(s, num_keys=12, rare_sets=sets, key_padding_mask=None, sink_pos=None, device="cpu")
    pos = torch.arange(12)
    assert torch.allclose(got, reference_attention(q, k, v, supports, 0.0, pos, pos)[0], atol=1e-6)


def test_unique_positions_keeps_the_first_of_each():
    sets = torch.tensor([[[3, 3, 9, 3, -1, -1]]])
    assert unique_positions(sets).tolist() == [[[3, -1, 9, -1, -1, -1]]]
    # against the definition, slot by slot, on random sets with many repeats and empty slots
    gen = torch.Generator().manual_seed(0)
    sets = torch.randint(-1, 6, (3, 7, 9), generator=gen)
    want = [[[-1 if p >= 0 and p in row[:i] else p for i, p in enumerate(row)] for row in b] for b in sets.tolist()]
    assert unique_positions(sets).tolist() == want


@pytest.mark.parametrize("attend", [structured_attention, structured_attention_with_weights])
def test_rare_index_of_the_wrong_shape_is_rejected(attend):
    q = torch.randn(2, 2, 6, 4)
    s = Structure((1, 1), (True, True), rare=2)
    with pytest.raises(ValueError, match="rare_index: expected shape"):
        attend(q, q, q, window=1, rare_index=torch.zeros(3, 2, dtype=torch.long), structure=s)
    with pytest.raises(ValueError, match="rare_index: the structure has 2 rare columns"):
        attend(q, q, q, window=1, structure=s)


def test_a_plan_of_another_shape_is_rejected():
    from structmt.attention.functional import attend, self_attention_plan

    q = torch.randn(2, 2, 6, 4)
    with pytest.raises(ValueError, match="the structure has 3 heads, q 2"):
        structured_attention(q, q, q, window=1, structure=Structure((1, 1, 1), (False,) * 3))
    plan = self_attention_plan(Structure((1, 1), (False, False)), q, None, None)
    for other in (torch.randn(3, 2, 6, 4), torch.randn(2, 2, 5, 4)):
        with pytest.raises(ValueError, match="the plan is for 2 sequences, 2 heads, 6 queries and 6 keys"):
            attend(other, other, other, plan)


def test_the_options_page_is_the_schemas_own_table():
    """The page's table is what its command prints, and the command prints nothing else (no runpy warning)."""
    page = (REPO / "docs" / "plugin.md").read_text(encoding="utf-8")
    command = "python -m structmt.attention"
    generated = page.split(f"<!-- generated: {command} -->\n")[1].split("<!-- end")[0]
    done = subprocess.run([sys.executable, *command.split()[1:]], capture_output=True, text=True, cwd=REPO)
    assert (done.returncode, done.stderr) == (0, "")
    assert generated == done.stdout
    flags = [line.split("`")[1] for line in generated.splitlines()[2:]]
    assert flags == [flag(f.name) for f in fields(StructureConfig)]


def test_a_cross_band_refuses_left_padded_targets(dict_dir):
    """The band's centre is round(slope * i) for target position i counted from a batch's first column: with
    --left-pad-target it would count the padding and move with how sentences are batched."""
    with pytest.raises(ValueError, match=r"--struct-cross-window aligns .*with --left-pad-target they would count"):
        build(dict_dir, "structured_transformer_tiny", "--struct-cross-window", "2", "--left-pad-target")
    build(dict_dir, "structured_transformer_tiny", "--left-pad-target")  # no cross band: nothing counts positions


def test_a_role_mix_that_does_not_fit_names_its_block_and_the_per_block_form(dict_dir):
    with pytest.raises(ValueError, match=r"the decoder's self-attention: --struct-heads 'pos:1,syn:1': .* has 8\. "):
        build(
            dict_dir, "structured_transformer_tiny", "--decoder-attention-heads", "8", "--struct-heads", "pos:1,syn:1"
        )
    roles = '{"encoder": ["pos:1,syn:1"], "decoder": ["pos:2,syn:4,rare:2"]}'
    _, model = build(
        dict_dir, "structured_transformer_tiny", "--decoder-attention-heads", "8", "--struct-heads-from", roles
    )
    assert model.decoder.layers[0].self_attn.structure.num_heads == 8


@pytest.mark.parametrize(
    "given, expected",
    [({"struct_window": "5"}, 5), ({"struct_window": 5.0}, 5), ({"struct_cross_slope": "0.5"}, 0.5)],
)
def test_overrides_given_as_text_are_numbers_of_the_options_type(given, expected):
    """fairseq's --model-overrides and load_model's overrides may give numbers as text."""
    from types import SimpleNamespace

    from structmt.attention.options import StructureConfig

    ((name, _),) = given.items()
    value = getattr(StructureConfig.from_args(SimpleNamespace(**given)), name)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("given", [{"struct_window": "abc"}, {"struct_window": 1.5}, {"struct_window": True}])
def test_overrides_that_are_not_numbers_of_the_options_type_are_named(given):
    from types import SimpleNamespace

    from structmt.attention.options import StructureConfig

    with pytest.raises(ValueError, match=r"^--struct-window=.* is not an integer$"):
        StructureConfig.from_args(SimpleNamespace(**given))


def test_options_set_but_without_effect_are_warned_about(dict_dir, caplog, tmp_path):
    """A value the user set that changes nothing (the slope of a dense cross-attention, r with no rare head, ...)
    is said once when the model is built; options at their default are not."""
    import logging

    with caplog.at_level(logging.WARNING, logger="structmt.models.structured_transformer"):
        build(dict_dir, "structured_transformer_tiny", "--struct-heads", "syn:2", "--struct-rare", "4",
              "--struct-cross-slope", "0.5", "--struct-error-eps", "0.1", "--struct-pos-window", "2")  # fmt: skip
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "--struct-rare=4 has no effect: no head is rare",
        "--struct-pos-window=2 has no effect: no head is positional",
        "--struct-error-eps=0.1 has no effect: there is no error term (--struct-error none)",
        "--struct-cross-slope=0.5 has no effect: cross-attention is dense (no --struct-cross-window)",
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="structmt.models.structured_transformer"):
        build(dict_dir, "structured_transformer_tiny", "--struct-heads", "syn:2")
        build(dict_dir, "structured_transformer_tiny", "--struct-rare", "0")  # auto: r = 0 makes no rare head
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="structmt.models.structured_transformer"):
        build(dict_dir, "structured_transformer_tiny", "--struct-heads", "syn:1,rare:1", "--struct-rare", "0")
    assert [r.getMessage() for r in caplog.records] == [
        "--struct-rare=0: the rare-token heads have no rare column, so they attend as syntactic heads (band w=3); "
        "set --struct-rare above 0, or give them the syn role"
    ]
    caplog.clear()
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"encoder": ["syn:1,pos:1"] * 2, "decoder": ["pos:1,syn:1"] * 2}))
    with caplog.at_level(logging.WARNING, logger="structmt.models.structured_transformer"):
        build(dict_dir, "structured_transformer_tiny", "--struct-heads-from", str(roles), "--struct-heads", "syn:2")
    assert [r.getMessage() for r in caplog.records] == [
        "--struct-heads='syn:2' has no effect: --struct-heads-from gives the heads' roles"
    ]


def test_bf16_means_a_tpu_only_where_the_command_line_asks_for_one(dict_dir, monkeypatch):
    """fairseq-train parses sys.argv (no input_args), and a caller may parse_known: --bf16 alone sets no --tpu
    either way; --bf16 --tpu keeps it."""
    given = [str(dict_dir), "--user-dir", str(REPO / "structmt"), "--arch", "structured_transformer_tiny", *TASK]
    for extra, tpu in ((["--bf16"], False), (["--bf16", "--tpu"], True)):
        known, _ = options.parse_args_and_arch(options.get_training_parser(), [*given, *extra], parse_known=True)
        assert (known.bf16, known.tpu) == (True, tpu)
        monkeypatch.setattr(sys, "argv", ["fairseq-train", *given, *extra])
        args = options.parse_args_and_arch(options.get_training_parser())
        assert (args.bf16, args.tpu) == (True, tpu)


def test_fp16_with_bf16_is_refused_naming_both(dict_dir):
    """fairseq turned --bf16 into --tpu and then said it "cannot combine --fp16 and --tpu", naming a TPU nobody
    asked for."""
    with pytest.raises(ValueError, match=r"^--fp16 \(or --memory-efficient-fp16\) and --bf16 .* cannot be combined"):
        build(dict_dir, "structured_transformer_tiny", "--fp16", "--bf16")
    with pytest.raises(ValueError, match="Cannot combine --fp16 and --tpu"):  # a TPU asked for: fairseq's own words
        build(dict_dir, "structured_transformer_tiny", "--fp16", "--tpu")
