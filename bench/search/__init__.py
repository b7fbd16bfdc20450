"""Search benchmark: altlake serve vs clip-retrieval's clip back over the same embeddings (see README.md)."""
