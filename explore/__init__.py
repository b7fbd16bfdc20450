"""Explore a release: KNN indices, a clip-retrieval-compatible search service, a web page, subsets.

Modules, in dependency order:
    release   find a release's embedding shards and metadata (clip-retrieval layout), memory-mapped
    knn       the one search path (faiss shortlist + exact rerank) shared by index tuning and serving
    index     `altlake index`: build, tune and record the image/text indices of a release
    encoder   query embeddings with the release's own CLIP (text, image bytes, SSRF-safe image URLs)
    search    a clip back query end to end: encode, search, filter, attach metadata
    service   `altlake serve`: the FastAPI app (clip back protocol, metrics, web page)
    subset    `altlake subset`: img2dataset-ready parquet of the pairs nearest to some queries
"""
