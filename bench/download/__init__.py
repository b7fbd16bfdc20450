"""Download benchmark: altlake's downloader + decode + resize against img2dataset, per CPU core.

`python -m bench.download` (see README.md in this folder).
"""
