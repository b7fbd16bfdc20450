"""JPEG decode / resize / encode libraries side by side (python -m bench.images)."""
