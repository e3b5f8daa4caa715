"""``structured_transformer``: fairseq's transformer with structured attention.

Built through fairseq's own construction hooks, as fairseq's linformer
example is: the encoder and decoder build their layers in
``build_encoder_layer``/``build_decoder_layer``, and a structured layer builds
its attention in ``build_self_attention``/``build_encoder_attention`` by
building fairseq's dense block exactly as fairseq would (same modules, same
initialisation order, same parameter names) and restricting it to the layer's
structure.  A dense baseline and a structured model of the same seed
therefore start from the same weights, and checkpoints load both ways.  The
layers are ordinary fairseq layers held in fairseq's own ``ModuleList`` or
``LayerDropModuleList``: LayerDrop, ``--*-layers-to-keep`` pruning and
checkpoint upgrades work as for the dense transformer.

Each encoder or decoder forward builds the :class:`TokenContext` of its tokens
and makes it current while its layers run (see :mod:`structmt.attention.context`);
nothing is stored on a module between forwards.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from fairseq.distributed import fsdp_wrap
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import (
    DEFAULT_MAX_SOURCE_POSITIONS,
    DEFAULT_MAX_TARGET_POSITIONS,
    TransformerConfig,
    TransformerDecoderBase,
    TransformerEncoderBase,
    TransformerModel,
    base_architecture,
    tiny_architecture,
    transformer_iwslt_de_en,
    transformer_wmt_en_de,
    transformer_wmt_en_de_big,
)
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase
from omegaconf import OmegaConf, open_dict
from torch import Tensor

from ..attention.context import TokenContext, active, current
from ..attention.multihead import StructuredCrossAttention, StructuredMultiheadAttention
from ..attention.options import (
    FAIRSEQ_NAMES,
    Naming,
    StructureConfig,
    add_arguments,
    describe,
    fill_defaults,
    misnamed_options,
)
from ..attention.structure import CrossBand, Structure, rarity_tables, roles_json
from ..checkpoints import checkpoint_state, model_setting, saved_model_settings

logger = logging.getLogger(__name__)


class StructuredEncoderLayer(TransformerEncoderLayerBase):
    """fairseq's encoder layer whose self-attention follows ``structure``."""

    def __init__(self, cfg: TransformerConfig, structure: Structure, impl: str, return_fc: bool = False) -> None:
        self.structure, self.impl = structure, impl  # read by build_self_attention, which the base __init__ calls
        super().__init__(cfg, return_fc=return_fc)

    def build_self_attention(self, embed_dim: int, cfg: TransformerConfig) -> StructuredMultiheadAttention:
        return StructuredMultiheadAttention.from_dense(
            super().build_self_attention(embed_dim, cfg), self.structure, self.impl
        )

    def forward(self, *args: Any, token_context: TokenContext | None = None, **kwargs: Any) -> Any:
        with active(token_context):
            return super().forward(*args, **kwargs)


class StructuredDecoderLayer(TransformerDecoderLayerBase):
    """fairseq's decoder layer with structured self-attention (``structure``) and/or
    structured cross-attention (``cross``); None keeps that block dense."""

    def __init__(
        self,
        cfg: TransformerConfig,
        structure: Structure | None,
        cross: CrossBand | None,
        impl: str,
        no_encoder_attn: bool = False,
    ) -> None:
        self.structure, self.cross, self.impl = structure, cross, impl  # read by the build_* hooks below
        super().__init__(cfg, no_encoder_attn)

    def build_self_attention(
        self, embed_dim: int, cfg: TransformerConfig, add_bias_kv: bool = False, add_zero_attn: bool = False
    ) -> Any:
        if self.structure is not None and cfg.cross_self_attention:
            raise ValueError(
                "--cross-self-attention: the decoder's self-attention then attends over source and target together, "
                "which a structured decoder does not support; add --struct-apply encoder (decoder self-attention "
                "stays dense)"
            )
        dense = super().build_self_attention(embed_dim, cfg, add_bias_kv, add_zero_attn)
        return (
            dense
            if self.structure is None
            else StructuredMultiheadAttention.from_dense(dense, self.structure, self.impl)
        )

    def build_encoder_attention(self, embed_dim: int, cfg: TransformerConfig) -> Any:
        dense = super().build_encoder_attention(embed_dim, cfg)
        return dense if self.cross is None else StructuredCrossAttention.from_dense(dense, self.cross, self.impl)

    def forward(self, *args: Any, token_context: TokenContext | None = None, **kwargs: Any) -> Any:
        with active(token_context):
            return super().forward(*args, **kwargs)


def _wrap_like_fairseq(layer: torch.nn.Module, cfg: TransformerConfig) -> torch.nn.Module:
    """What fairseq's ``build_*_layer`` does to a built layer: activation checkpointing and FSDP.

    A checkpointed layer re-runs its forward during the backward pass, after the
    forward's context is gone: it gets the context as an argument, which the
    checkpoint keeps for the re-run.
    """
    checkpoint = cfg.checkpoint_activations
    if checkpoint:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
        layer.forward = functools.partial(_with_current_context, layer.forward)
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not checkpoint else 0)


def _with_current_context(forward: Any, *args: Any, **kwargs: Any) -> Any:
    return forward(*args, token_context=current(), **kwargs)


class _StructuredStack:
    """What a structured encoder or decoder adds to fairseq's: the structures of its layers, consumed
    in order while fairseq's ``__init__`` builds them, and the corpus counts its tokens' rarity comes from."""

    token_counts: Tensor
    never_rare: Tensor
    _unbuilt: list[Structure] | None

    def _next_structure(self) -> Structure | None:
        return self._unbuilt.pop(0) if self._unbuilt is not None else None

    def _finish_stack(self, structures: list[Structure] | None, dictionary: Any) -> None:
        """After fairseq's ``__init__``: check every structure went to a layer, keep the rarity counts."""
        if self._unbuilt:
            raise ValueError(f"{len(self._unbuilt)} layer structures were not used")
        del self._unbuilt
        self.uses_rare = any(s.uses_rare for s in structures or [])
        counts, never = rarity_tables(dictionary)
        self.register_buffer("token_counts", counts, persistent=False)  # type: ignore[attr-defined]
        self.register_buffer("never_rare", never, persistent=False)  # type: ignore[attr-defined]

    def _token_context(self, tokens: Tensor, incremental: bool) -> TokenContext:
        return TokenContext.from_tokens(
            tokens, self.token_counts, self.never_rare, incremental=incremental, need_rarity=self.uses_rare
        )


class StructuredTransformerEncoder(_StructuredStack, TransformerEncoderBase):
    """fairseq's encoder whose layers have structured self-attention (one structure per layer);
    ``structures=None`` keeps every layer dense."""

    def __init__(
        self,
        cfg: TransformerConfig,
        dictionary: Any,
        embed_tokens: torch.nn.Embedding,
        structures: list[Structure] | None,
        impl: str = "auto",
    ) -> None:
        # consumed in order by build_encoder_layer, which the base __init__ calls once per layer
        self._unbuilt, self.impl = (list(structures) if structures else None), impl
        super().__init__(cfg, dictionary, embed_tokens)
        self.structured = structures is not None
        self._finish_stack(structures, dictionary)

    def build_encoder_layer(self, cfg: TransformerConfig) -> torch.nn.Module:
        if self._unbuilt is None:
            return super().build_encoder_layer(cfg)
        layer = StructuredEncoderLayer(cfg, self._next_structure(), self.impl, return_fc=self.return_fc)
        return _wrap_like_fairseq(layer, cfg)

    def forward_scriptable(
        self,
        src_tokens: Tensor,
        src_lengths: Tensor | None = None,
        return_all_hiddens: bool = False,
        token_embeddings: Tensor | None = None,
    ):
        context = self._token_context(src_tokens, incremental=False) if self.structured else None
        with active(context):
            return super().forward_scriptable(src_tokens, src_lengths, return_all_hiddens, token_embeddings)


class StructuredTransformerDecoder(_StructuredStack, TransformerDecoderBase):
    """fairseq's decoder with structured self-attention (one structure per layer, or None for dense)
    and optionally structured cross-attention (``cross``)."""

    def __init__(
        self,
        cfg: TransformerConfig,
        dictionary: Any,
        embed_tokens: torch.nn.Embedding,
        structures: list[Structure] | None,
        cross: CrossBand | None = None,
        impl: str = "auto",
        no_encoder_attn: bool = False,
    ) -> None:
        # consumed in order by build_decoder_layer, which the base __init__ calls once per layer
        self._unbuilt, self.cross, self.impl = (list(structures) if structures else None), cross, impl
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn)
        self.structured = structures is not None or cross is not None
        self._finish_stack(structures, dictionary)

    def build_decoder_layer(self, cfg: TransformerConfig, no_encoder_attn: bool = False) -> torch.nn.Module:
        if self._unbuilt is None and self.cross is None:
            return super().build_decoder_layer(cfg, no_encoder_attn)
        layer = StructuredDecoderLayer(cfg, self._next_structure(), self.cross, self.impl, no_encoder_attn)
        return _wrap_like_fairseq(layer, cfg)

    def extract_features_scriptable(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Any,
        incremental_state: Any = None,
        full_context_alignment: bool = False,
        alignment_layer: int | None = None,
        alignment_heads: int | None = None,
    ):
        context = None
        if self.structured:
            context = self._token_context(prev_output_tokens, incremental=incremental_state is not None)
        with active(context):
            return super().extract_features_scriptable(
                prev_output_tokens,
                encoder_out,
                incremental_state,
                full_context_alignment,
                alignment_layer,
                alignment_heads,
            )


def _layers_to_keep(args: Any, block: str) -> list[int] | None:
    """``--{block}-layers-to-keep`` in the order fairseq keeps the layers: sorted (``prune_state_dict`` gives
    the kept layers their weights in that order, whatever order the option lists them in)."""
    spec = getattr(args, f"{block}_layers_to_keep", None)
    if not spec:
        return None
    keep = [int(i) for i in str(spec).split(",")]
    if len(set(keep)) != len(keep):
        raise ValueError(f"--{block}-layers-to-keep {spec}: a layer is listed twice; list each layer kept once")
    return sorted(keep)


def block_structures(
    args: Any, options: StructureConfig, block: str, names: Naming = FAIRSEQ_NAMES
) -> list[Structure] | None:
    """The per-layer structures of ``block``'s self-attention, or None when it stays dense (an error names the
    options with ``names``). Read only after fairseq's ``build_model`` filled the architecture's defaults."""
    if block not in options.blocks():
        return None
    keep = _layers_to_keep(args, block)
    heads, layers = getattr(args, f"{block}_attention_heads"), getattr(args, f"{block}_layers")
    return options.layer_structures(block, heads, layers, keep, names)


def too_many_rare_columns(options: StructureConfig, uses_rare: bool, args: Any, names: Naming = FAIRSEQ_NAMES) -> str:
    """Why ``--struct-rare`` is too large for a model whose heads ``uses_rare`` (any rare-token head) and whose
    settings are ``args`` (with fairseq's defaults where they leave the positions unset, as its build does; ""
    when it is not)."""
    longest = max(
        getattr(args, "max_source_positions", None) or DEFAULT_MAX_SOURCE_POSITIONS,
        getattr(args, "max_target_positions", None) or DEFAULT_MAX_TARGET_POSITIONS,
    )
    if uses_rare and options.struct_rare > longest:
        return (
            f"{names.name('struct_rare')} {options.struct_rare}: more rare-token columns than the longest sequence "
            f"the model takes ({longest} positions: --max-source-positions, --max-target-positions), each a slot of "
            f"every query; at {longest} every token is one already"
        )
    return ""


@register_model("structured_transformer")
class StructuredTransformerModel(TransformerModel):
    """Transformer whose attention follows Σ = Σ₁ ∪ Σ₂(w) ∪ Σ₃(r) (``--struct-*`` options)."""

    @classmethod
    def add_args(cls, parser: Any) -> None:
        super().add_args(parser)
        add_arguments(parser)

    @property
    def uses_rare(self) -> bool:
        """Whether a head of the encoder or the decoder ranks tokens by rarity (the dictionaries' counts)."""
        return self.encoder.uses_rare or self.decoder.uses_rare

    @classmethod
    def build_model(cls, args: Any, task: Any) -> StructuredTransformerModel:
        if not OmegaConf.is_config(args):
            return cls._build(args, task)
        # fairseq-hydra-train, and loading a checkpoint it saved, give the settings as a DictConfig, of which
        # fairseq's TransformerConfig.from_namespace copies its own fields only: the --struct-* options would be
        # dropped (the default structure built, the given one logged and saved). Build from a Namespace of them,
        # as fairseq-train does, and write back what the build filled in, which the checkpoints save.
        given = OmegaConf.to_container(args, resolve=True)
        settings = argparse.Namespace(**given)
        model = cls._build(settings, task)
        with open_dict(args):
            for key, value in vars(settings).items():
                if key not in given or given[key] != value:
                    setattr(args, key, value)
        return model

    @classmethod
    def _build(cls, args: Any, task: Any) -> StructuredTransformerModel:
        if problem := misnamed_options(getattr(args, "__dict__", {})):
            raise ValueError(problem)
        fill_defaults(args)
        options = StructureConfig.from_args(args).validate()
        left_pad_target = getattr(args, "left_pad_target", None) or getattr(
            getattr(task, "cfg", None), "left_pad_target", False
        )
        if options.cross_band() is not None and left_pad_target:
            raise ValueError(
                "--struct-cross-window aligns target position i with source position round(slope * i), counting "
                "target positions from the first column of a batch; with --left-pad-target they would count the "
                "padding, and the band would move with how sentences are batched: leave targets right-padded "
                "(fairseq's default)"
            )
        for block in options.blocks():
            if getattr(args, f"{block}_xformers_att_config", None):
                raise ValueError(
                    f"--{block}-xformers-att-config: the {block}'s self-attention is structured and does not run "
                    f"through xFormers (the option would be ignored); leave it unset, or keep the {block} dense "
                    "(--struct-apply)"
                )
        if args.struct_heads_from:
            # keep the roles, not the file's path: the checkpoint rebuilds the model it was trained as
            args.struct_heads_from = roles_json(args.struct_heads_from)
        model = super().build_model(args, task)  # fills the architecture's defaults, then builds encoder and decoder
        if problem := too_many_rare_columns(options, model.uses_rare, args):
            raise ValueError(problem)
        _check_rarity_counts(args, model)
        # what this model attends with, in the log of every command that builds it (fairseq-generate's
        # --model-overrides of a --struct-* option included): the checkpoint's own options otherwise
        logger.info("structured attention: %s", describe(StructureConfig.from_args(args)))
        roles = {
            role
            for block in options.blocks()
            for mix in options.role_mixes(block, getattr(args, f"{block}_attention_heads"), None)
            for role in mix
        }
        for note in options.without_effect(roles):
            logger.warning(note)
        if getattr(args, "quant_noise_pq", 0):
            logger.warning(
                "--quant-noise-pq: as in fairseq's dense transformer, whose self-attention reads its projection "
                "weights directly, the self-attention projections get no quant noise; the cross-attention and "
                "feed-forward layers do"
            )
        return model

    @classmethod
    def build_encoder(cls, args: Any, src_dict: Any, embed_tokens: torch.nn.Embedding) -> StructuredTransformerEncoder:
        options = StructureConfig.from_args(args)
        cfg = TransformerConfig.from_namespace(args)
        return StructuredTransformerEncoder(
            cfg, src_dict, embed_tokens, block_structures(args, options, "encoder"), options.struct_impl
        )

    @classmethod
    def build_decoder(cls, args: Any, tgt_dict: Any, embed_tokens: torch.nn.Embedding) -> StructuredTransformerDecoder:
        options = StructureConfig.from_args(args)
        cfg = TransformerConfig.from_namespace(args)
        cross = options.cross_band()
        if cross is not None and cfg.no_cross_attention:
            raise ValueError("--struct-cross-window needs a decoder with cross-attention (not --no-cross-attention)")
        if cross is not None and "alignment" in str(getattr(args, "criterion", "")):
            raise ValueError(
                f"--criterion {args.criterion} supervises the cross-attention weights, but --struct-cross-window "
                "gives aligned source tokens outside its band zero weight (log 0 in that loss) and its fused kernels "
                "return weights without a gradient; leave --struct-cross-window unset (dense cross-attention)"
            )
        return StructuredTransformerDecoder(
            cfg,
            tgt_dict,
            embed_tokens,
            block_structures(args, options, "decoder"),
            cross,
            options.struct_impl,
            no_encoder_attn=cfg.no_cross_attention,
        )


#: the model's setting that records a digest of the token counts its rare-token heads were trained with
RARITY_COUNTS = "structmt_rarity_counts_sha256"


def _check_rarity_counts(args: Any, model: StructuredTransformerModel) -> None:
    """Rarity comes from the dictionaries' counts, which a checkpoint does not hold: a model built for training
    records their digest in its settings (``args``, saved in its checkpoints); one built from a checkpoint is
    refused when its dictionaries' counts differ and a rare-token head would read them (other tokens' columns,
    without an error). ``--model-overrides "{'structmt_rarity_counts_sha256': ''}"`` takes the new counts."""
    digest = hashlib.sha256()
    for stack in (model.encoder, model.decoder):
        digest.update(stack.token_counts.numpy().tobytes())
    now, trained = digest.hexdigest()[:16], getattr(args, RARITY_COUNTS, "")
    if trained and trained != now and model.uses_rare:
        raise ValueError(
            "the token counts of this data folder's dictionaries (dict.*.txt) differ from those the model was "
            "trained with: its rare-token heads would attend to other tokens. Use the dictionaries of the data it "
            "was trained on (the same symbols with other counts give another model), or pass --model-overrides "
            f"\"{{'{RARITY_COUNTS}': ''}}\" to take these counts"
        )
    setattr(args, RARITY_COUNTS, now)


def resume_problem(saved: Any, args: Any, model: Any) -> str:
    """Why a training of ``model`` (built from the settings ``args``) must not resume from a checkpoint whose model
    settings are ``saved`` ("" when it may): fairseq builds the model from the command line and loads the
    checkpoint's weights into it, so a structure other than the one the weights were trained with (the
    ``--struct-*`` options, ``--struct-impl`` aside, which only picks a kernel; the head counts), a dense
    checkpoint under a structured model or the reverse, or other token counts under rare-token heads
    (:data:`RARITY_COUNTS`) would train on silently, and the checkpoints after it would record the new settings
    only. (A dense model is checked for its head counts only.)"""
    from fairseq.models import ARCH_MODEL_REGISTRY

    arch = model_setting(saved, "arch") or model_setting(saved, "_name")
    saved_structured = issubclass(ARCH_MODEL_REGISTRY.get(arch, object), StructuredTransformerModel)
    structured = isinstance(model, StructuredTransformerModel)
    if saved_structured != structured:
        kind, now = (
            "a structured" if structured else "a dense",
            model_setting(args, "arch") or model_setting(args, "_name"),
        )
        return f"it holds a model of --arch {arch}, and this command trains {kind} one (--arch {now})"
    changed = []
    for key in ("encoder_attention_heads", "decoder_attention_heads"):  # same shapes: the weights load into other
        before, now = model_setting(saved, key), model_setting(args, key)  # heads, with another role mix
        if None not in (before, now) and before != now:
            changed.append(f"--{key.replace('_', '-')} {before} when trained, {now} now")
    if not structured:
        return f"its settings differ from this command's: {'; '.join(changed)}" if changed else ""
    for f in fields(StructureConfig):
        before, now = (
            f.default if v is None else v for v in (model_setting(saved, f.name), model_setting(args, f.name))
        )
        if f.name != "struct_impl" and before != now:
            changed.append(f"--{f.name.replace('_', '-')} {before!r} when trained, {now!r} now")
    trained, counts = model_setting(saved, RARITY_COUNTS), getattr(args, RARITY_COUNTS, "")
    if trained and trained != counts and model.uses_rare:
        changed.append(
            "the token counts of the dictionaries (dict.*.txt) differ from those it was trained with, which its "
            "rare-token heads rank tokens by"
        )
    return f"its structure differs from this command's: {'; '.join(changed)}" if changed else ""


def refuse_changed_structure_on_resume() -> None:
    """Wrap fairseq's ``Trainer.load_checkpoint`` (idempotent) so that resuming a training from a checkpoint whose
    model another structure (or, dense too, other head counts) trained (:func:`resume_problem`) is refused before
    its weights are loaded. A fine-tune's start (``--finetune-from-model``, or ``--restore-file`` with
    ``--reset-optimizer --reset-lr-scheduler --reset-meters``) may change the structure: it is not checked."""
    from fairseq.trainer import Trainer

    original = Trainer.load_checkpoint
    if getattr(original, "checks_structure", False):
        return

    @functools.wraps(original)
    def load_checkpoint(
        self: Any,
        filename: str,
        reset_optimizer: bool = False,
        reset_lr_scheduler: bool = False,
        optimizer_overrides: Any = None,
        reset_meters: bool = False,
    ) -> Any:
        fine_tune = reset_optimizer and reset_lr_scheduler and reset_meters
        if not fine_tune and os.path.isfile(filename):
            state = checkpoint_state(Path(filename))
            saved = saved_model_settings(state)
            if saved is not None and (problem := resume_problem(saved, self.cfg.model, self._model)):
                raise ValueError(
                    f"cannot resume from {filename}: {problem}. Resume with the options it was trained with, or "
                    f"start a new model from its weights with --finetune-from-model {filename} and another "
                    "--save-dir"
                )
        return original(self, filename, reset_optimizer, reset_lr_scheduler, optimizer_overrides, reset_meters)

    load_checkpoint.checks_structure = True  # type: ignore[attr-defined]
    Trainer.load_checkpoint = load_checkpoint  # type: ignore[method-assign]


def refuse_misnamed_overrides() -> None:
    """Wrap the ``overwrite_args_by_name`` fairseq's checkpoint loading applies ``--model-overrides`` with to a
    checkpoint saved with a DictConfig (fairseq-hydra-train's; idempotent): it sets the keys the checkpoint has
    and drops the others in silence, so a misspelt ``struct_*`` key, or structmt-run's short name of an option,
    left the saved value in use. Refused as from a Namespace checkpoint (:func:`misnamed_options`)."""
    from fairseq import checkpoint_utils

    original = checkpoint_utils.overwrite_args_by_name
    if getattr(original, "checks_option_names", False):
        return

    @functools.wraps(original)
    def overwrite_args_by_name(cfg: Any, overrides: dict[str, Any]) -> Any:
        if problem := misnamed_options(overrides):
            raise ValueError(problem)
        return original(cfg, overrides)

    overwrite_args_by_name.checks_option_names = True  # type: ignore[attr-defined]
    checkpoint_utils.overwrite_args_by_name = overwrite_args_by_name


def multi30k_architecture(args: Any) -> None:
    """A CPU-sized transformer for Multi30k (4+4 layers, 128 wide, FFN 256, 4 heads, shared embeddings)."""
    for side in ("encoder", "decoder"):
        setattr(args, f"{side}_embed_dim", getattr(args, f"{side}_embed_dim", 128))
        setattr(args, f"{side}_ffn_embed_dim", getattr(args, f"{side}_ffn_embed_dim", 256))
        setattr(args, f"{side}_layers", getattr(args, f"{side}_layers", 4))
        setattr(args, f"{side}_attention_heads", getattr(args, f"{side}_attention_heads", 4))
    args.share_all_embeddings = getattr(args, "share_all_embeddings", True)
    base_architecture(args)


register_model_architecture("transformer", "transformer_multi30k")(multi30k_architecture)

#: structured arch name → the dense fairseq arch function it mirrors
MIRRORED_ARCHS = {
    "structured_transformer": base_architecture,
    "structured_transformer_tiny": tiny_architecture,
    "structured_transformer_iwslt_de_en": transformer_iwslt_de_en,
    "structured_transformer_wmt_en_de": transformer_wmt_en_de,
    "structured_transformer_wmt_en_de_big": transformer_wmt_en_de_big,
    "structured_transformer_multi30k": multi30k_architecture,
}


def _mirror(dense_arch: Any) -> Any:
    def arch(args: Any) -> None:
        dense_arch(args)
        fill_defaults(args)

    arch.__doc__ = f"{dense_arch.__name__} hyperparameters with structured attention."
    return arch


for _name, _dense in MIRRORED_ARCHS.items():
    register_model_architecture("structured_transformer", _name)(_mirror(_dense))
