"""Structured attention: supports, kernels and the fairseq-compatible module."""

from .functional import reference_attention, structured_attention, structured_softmax
from .structure import Structure, parse_role_mix, rare_sets, rarity_keys

__all__ = [
    "Structure",
    "parse_role_mix",
    "rare_sets",
    "rarity_keys",
    "reference_attention",
    "structured_attention",
    "structured_softmax",
]
