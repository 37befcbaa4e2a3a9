"""Validation on held-out data: exact-match and scored accuracy per difficulty, and for free text,
perplexity on real documents and the diversity of what the model writes."""
