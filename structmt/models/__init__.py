"""Models registered with fairseq when the plugin is imported."""

from .structured_transformer import StructuredTransformerModel

__all__ = ["StructuredTransformerModel"]
