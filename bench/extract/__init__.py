"""Extraction benchmark: altlake's per-WAT extraction vs cc2dataset on the same generated WAT."""
