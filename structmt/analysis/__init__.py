"""Attention analysis: extraction from fairseq checkpoints, projection onto Σ, figures."""
