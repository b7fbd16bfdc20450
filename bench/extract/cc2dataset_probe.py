"""Runs inside cc2dataset's own venv: times `extract_documents_from_wat` on one WAT.

Prints {"seconds", "links"} as JSON and writes the distinct (url, alt) pairs as JSON lines.
The file is read into memory first, as cc2dataset's own `process_wat` does; only extraction is timed.
"""

import json
import sys
import time
from io import BytesIO

from cc2dataset.main import extract_documents_from_wat

wat_path, pairs_out = sys.argv[1], sys.argv[2]
with open(wat_path, "rb") as f:
    stream = BytesIO(f.read())
started = time.process_time()
links = extract_documents_from_wat(stream, "image")
seconds = time.process_time() - started
with open(pairs_out, "w") as out:
    for url, alt in {(link["url"], link["alt"]) for link in links}:
        out.write(json.dumps([url, alt]) + "\n")
print(json.dumps({"seconds": seconds, "links": len(links)}))
