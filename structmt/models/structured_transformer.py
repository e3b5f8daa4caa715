"""``structured_transformer``: fairseq's transformer with structured self-attention.

The model builds exactly the dense transformer (same modules, same
initialisation order, same parameter names) and then restricts the chosen
self-attention blocks to their structure, reusing their projections.  A dense
baseline and a structured model therefore differ only in attention, and
checkpoints load both ways.
"""

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import (
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
from torch import Tensor

from ..attention.functional import IMPLS
from ..attention.multihead import StructuredCrossAttention, StructuredMultiheadAttention
from ..attention.structure import CrossBand, Structure, parse_role_mix, rare_sets, rarity_keys, roles_from_file

BLOCKS = ("encoder", "decoder")


@dataclass
class StructureConfig(FairseqDataclass):
    """Options of the structured attention (``--struct-*``)."""

    struct_window: int = field(default=3, metadata={"help": "band half-width w of syntactic and rare heads"})
    struct_rare: int = field(default=2, metadata={"help": "number r of rare-token columns (rare heads)"})
    struct_heads: str = field(
        default="auto",
        metadata={
            "help": "head role mix per layer, e.g. 'pos:1,syn:2,rare:1'; ';' separates per-layer mixes; "
            "'auto' = H/4 positional, max(1, H/4) rare (if r > 0), the rest syntactic"
        },
    )
    struct_heads_from: str = field(
        default="",
        metadata={
            "help": "JSON file with per-layer role mixes {'encoder': [...], 'decoder': [...]} "
            "(written by structmt-analyze as roles.json); overrides --struct-heads"
        },
    )
    struct_pos_window: int = field(default=1, metadata={"help": "band half-width of positional heads (0 = identity)"})
    struct_error: str = field(
        default="none",
        metadata={
            "help": "sparse error term: 'none' or 'sink:K' (the first K keys, each weight <= --struct-error-eps)"
        },
    )
    struct_error_eps: float = field(default=0.05, metadata={"help": "weight bound of each error-term key"})
    struct_apply: str = field(
        default="encoder,decoder", metadata={"help": "attention blocks to structure: encoder,decoder"}
    )
    struct_cross_window: int = field(
        default=-1,
        metadata={
            "help": "structured cross-attention: band half-width around the aligned source position "
            "round(slope * i); -1 keeps cross-attention dense"
        },
    )
    struct_cross_slope: float = field(
        default=1.0, metadata={"help": "source/target length ratio of the cross-attention band's centre line"}
    )
    struct_impl: str = field(default="auto", metadata={"help": "kernel: auto|reference|efficient"})


def default_role_mix(num_heads: int, rare: int) -> str:
    pos = num_heads // 4
    rare_heads = max(1, num_heads // 4) if rare > 0 else 0
    syn = num_heads - pos - rare_heads
    if syn < 0:
        pos, syn = 0, num_heads - rare_heads
    return f"pos:{pos},syn:{syn},rare:{rare_heads}"


def _error_term(spec: str, eps: float) -> tuple[int, float]:
    if spec == "none":
        return 0, 0.0
    kind, _, count = spec.partition(":")
    if kind != "sink" or not count.isdigit() or int(count) < 1:
        raise ValueError(f"--struct-error {spec!r}: use 'none' or 'sink:K' with an integer K >= 1")
    return int(count), eps


def layer_structures(args: Any, block: str) -> list[Structure]:
    """Validate the ``--struct-*`` options and build one :class:`Structure` per layer of ``block``."""
    for name in ("struct_window", "struct_rare", "struct_pos_window"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.struct_impl not in IMPLS:
        raise ValueError(f"--struct-impl {args.struct_impl!r}: choose from {', '.join(IMPLS)}")
    sinks, eps = _error_term(args.struct_error, args.struct_error_eps)
    heads = getattr(args, f"{block}_attention_heads")
    layers = getattr(args, f"{block}_layers")
    if args.struct_heads_from:
        spec = ";".join(roles_from_file(args.struct_heads_from, block))
    elif args.struct_heads != "auto":
        spec = args.struct_heads
    else:
        spec = default_role_mix(heads, args.struct_rare)
    roles = parse_role_mix(spec, heads, layers)
    try:
        return [
            Structure.from_roles(
                r,
                window=args.struct_window,
                pos_window=args.struct_pos_window,
                rare=args.struct_rare,
                causal=block == "decoder",
                sinks=sinks,
                sink_eps=eps,
            )
            for r in roles
        ]
    except ValueError as e:
        raise ValueError(f"--struct-error-eps: {e}") from None


def cross_band(args: Any) -> CrossBand | None:
    """The ``--struct-cross-*`` options as a :class:`CrossBand`, or None for dense cross-attention."""
    if args.struct_cross_window < -1:
        raise ValueError(f"--struct-cross-window must be >= 0, or -1 for dense, got {args.struct_cross_window}")
    if args.struct_cross_window == -1:
        return None
    try:
        return CrossBand(args.struct_cross_window, args.struct_cross_slope)
    except ValueError as e:
        raise ValueError(f"--struct-cross-slope: {e}") from None


def structured_blocks(spec: str) -> list[str]:
    blocks = [b.strip() for b in spec.split(",") if b.strip()]
    unknown = [b for b in blocks if b not in BLOCKS]
    if unknown or not blocks:
        raise ValueError(
            f"--struct-apply {spec!r}: unknown attention block(s) {unknown}; choose from {', '.join(BLOCKS)} "
            "(cross-attention: --struct-cross-window)"
        )
    return blocks


class _RarityMixin:
    """Shares the rarity keys of the input tokens with the structured layers."""

    layers: torch.nn.ModuleList

    def _init_rarity(self, dictionary: Any) -> None:
        counts = torch.tensor(dictionary.count, dtype=torch.long)
        never = torch.zeros(len(dictionary), dtype=torch.bool)
        never[: dictionary.nspecial] = True
        never[dictionary.pad()] = True
        self.register_buffer("token_counts", counts, persistent=False)  # type: ignore[attr-defined]
        self.register_buffer("never_rare", never, persistent=False)  # type: ignore[attr-defined]

    def structured_attentions(self) -> list[StructuredMultiheadAttention]:
        return [layer.self_attn for layer in self.layers if isinstance(layer.self_attn, StructuredMultiheadAttention)]

    def apply_structure(self, structures: list[Structure], impl: str) -> None:
        for layer, structure in zip(self.layers, structures, strict=True):
            layer.self_attn = StructuredMultiheadAttention.from_dense(layer.self_attn, structure, impl)

    def _share_rarity(self, tokens: Tensor, incremental: bool = False) -> None:
        """Give every structured layer the rarity keys of ``tokens`` and, for a full pass, the rare
        sets (computed once per (r, causal), not once per layer); for a decoding step, a shared
        place for the step's plan (computed once per structure)."""
        attns = self.structured_attentions()
        plans: dict | None = {} if incremental else None  # one plan per structure for this step
        for attn in attns:
            attn.step_plans = plans
        if not any(a.structure.uses_rare for a in attns):
            return
        if incremental:  # a decoding step needs the key of its last token only
            tokens, first = tokens[:, -1:], tokens.size(1) - 1
        else:
            first = 0
        keys = rarity_keys(tokens, self.token_counts, self.never_rare, first)  # type: ignore[attr-defined]
        sets: dict[tuple[int, bool], Tensor] = {}
        for attn in attns:
            attn.token_rarity = keys
            attn.token_rare_sets = None
            if attn.structure.uses_rare and not incremental:
                key = (attn.structure.rare, attn.structure.causal)
                if key not in sets:
                    sets[key] = rare_sets(keys, *key)
                attn.token_rare_sets = sets[key]


class StructuredTransformerEncoder(_RarityMixin, TransformerEncoderBase):
    def __init__(self, cfg: TransformerConfig, dictionary: Any, embed_tokens: torch.nn.Embedding) -> None:
        super().__init__(cfg, dictionary, embed_tokens)
        self._init_rarity(dictionary)

    def forward_scriptable(
        self,
        src_tokens: Tensor,
        src_lengths: Tensor | None = None,
        return_all_hiddens: bool = False,
        token_embeddings: Tensor | None = None,
    ):
        self._share_rarity(src_tokens)
        return super().forward_scriptable(src_tokens, src_lengths, return_all_hiddens, token_embeddings)


class StructuredTransformerDecoder(_RarityMixin, TransformerDecoderBase):
    def __init__(
        self, cfg: TransformerConfig, dictionary: Any, embed_tokens: torch.nn.Embedding, no_encoder_attn: bool = False
    ) -> None:
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn)
        self._init_rarity(dictionary)

    def extract_features_scriptable(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Any,
        incremental_state: Any = None,
        full_context_alignment: bool = False,
        alignment_layer: int | None = None,
        alignment_heads: int | None = None,
    ):
        self._share_rarity(prev_output_tokens, incremental=incremental_state is not None)
        first_query = prev_output_tokens.size(1) - 1 if incremental_state is not None else 0
        for layer in self.layers:
            if isinstance(layer.encoder_attn, StructuredCrossAttention):
                layer.encoder_attn.first_query = first_query
        return super().extract_features_scriptable(
            prev_output_tokens, encoder_out, incremental_state, full_context_alignment, alignment_layer, alignment_heads
        )


@register_model("structured_transformer")
class StructuredTransformerModel(TransformerModel):
    """Transformer whose encoder/decoder self-attention follows Σ = Σ₁ ∪ Σ₂(w) ∪ Σ₃(r)."""

    @classmethod
    def add_args(cls, parser: Any) -> None:
        super().add_args(parser)
        gen_parser_from_dataclass(parser, StructureConfig(), delete_default=True, with_prefix="")

    @classmethod
    def build_model(cls, args: Any, task: Any) -> "StructuredTransformerModel":
        structured_base(args)
        structures = {block: layer_structures(args, block) for block in structured_blocks(args.struct_apply)}
        band = cross_band(args)
        model = super().build_model(args, task)
        for block, per_layer in structures.items():
            getattr(model, block).apply_structure(per_layer, args.struct_impl)
        if band is not None:
            for layer in model.decoder.layers:
                if layer.encoder_attn is None:
                    raise ValueError("--struct-cross-window needs a decoder with cross-attention")
                layer.encoder_attn = StructuredCrossAttention.from_dense(layer.encoder_attn, band, args.struct_impl)
        return model

    @classmethod
    def build_encoder(cls, args: Any, src_dict: Any, embed_tokens: torch.nn.Embedding) -> StructuredTransformerEncoder:
        return StructuredTransformerEncoder(TransformerConfig.from_namespace(args), src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, args: Any, tgt_dict: Any, embed_tokens: torch.nn.Embedding) -> StructuredTransformerDecoder:
        cfg = TransformerConfig.from_namespace(args)
        return StructuredTransformerDecoder(cfg, tgt_dict, embed_tokens, no_encoder_attn=cfg.no_cross_attention)


def structured_base(args: Any) -> None:
    """Fill the ``--struct-*`` defaults that the command line left unset."""
    for f in fields(StructureConfig):
        if getattr(args, f.name, None) is None:
            setattr(args, f.name, f.default)


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
        structured_base(args)

    arch.__doc__ = f"{dense_arch.__name__} hyperparameters with structured attention."
    return arch


for _name, _dense in MIRRORED_ARCHS.items():
    register_model_architecture("structured_transformer", _name)(_mirror(_dense))
