"""Structured attention: supports, kernels and the fairseq-compatible module."""

from .functional import (
    aligned_cross_attention,
    reference_attention,
    structured_attention,
    structured_attention_with_weights,
    structured_softmax,
)
from .structure import CrossBand, Structure, parse_role_mix, rare_sets, rarity_keys

__all__ = [
    "CrossBand",
    "aligned_cross_attention",
    "Structure",
    "parse_role_mix",
    "rare_sets",
    "rarity_keys",
    "reference_attention",
    "structured_attention",
    "structured_attention_with_weights",
    "structured_softmax",
]
