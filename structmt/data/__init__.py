"""Data preparation: fetch (verified), clean, SentencePiece, binarize."""
