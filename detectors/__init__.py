"""Synthetic-speech detection on AST embeddings."""
