"""`python -m bench.search.breakdown`: where one embedding query's time goes inside `altlake serve`.

Times each stage of /knn-service in-process on a cached bench release (see __main__.py), then the
same queries over HTTP against one worker: what HTTP + ASGI + FastAPI add is the difference.
Prints a table and writes bench/out/search_breakdown.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import orjson
import pyarrow

from altlake.config import Settings
from bench.search.__main__ import OUT, make_queries, query_body, running, send_queries
from explore.service import KnnRequest, ServiceConfig, load_explorers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search.breakdown", description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000, help="which cached bench release")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args(argv)
    release = Path(Settings.from_env().cache_dir) / "bench" / "search" / f"n{args.vectors}-d{args.dim}"
    if not (release / "index" / "index_info.json").is_file():
        raise SystemExit(f"{release} is not built yet: run `python -m bench.search --sizes {args.vectors} --dim {args.dim}` first")
    faiss.omp_set_num_threads(1)
    pyarrow.set_cpu_count(1)
    (explorer,) = load_explorers([str(release)], ServiceConfig())
    knn = explorer.knn["image"]
    bodies = [query_body(q, release.name) for q in make_queries(release, args.queries)]
    requests = [KnnRequest.model_validate_json(b) for b in bodies]
    vectors = [explorer.query_vector(None, None, r.embedding_input, False) for r in requests]
    shortlist = knn.shortlist(10)
    neighbours = [knn.search(v[None, :], 10) for v in vectors]
    found = [explorer.results(s[0], i[0], 10, False, False, False) for s, i in neighbours]
    stages = {
        "parse JSON + validate (pydantic)": lambda i: KnnRequest.model_validate(json.loads(bodies[i])),
        "check + normalise the vector": lambda i: explorer.query_vector(None, None, requests[i].embedding_input, False),
        f"faiss shortlist ({shortlist} ids)": lambda i: knn.index.search(vectors[i][None, :], shortlist),
        "shortlist + exact rerank": lambda i: knn.search(vectors[i][None, :], 10),
        "metadata of 10 rows (mmap Arrow)": lambda i: explorer.metadata.take(neighbours[i][1][0]),
        "JSON response (orjson)": lambda i: orjson.dumps(found[i], option=orjson.OPT_SERIALIZE_NUMPY),
    }
    batch = np.stack(vectors[:16])
    rows = {name: _per_call_ms(stage, len(bodies)) for name, stage in stages.items()}
    rows["shortlist + rerank, per query in a batch of 16"] = _per_call_ms(lambda i: knn.search(batch, 10), 20) / 16
    command = [sys.executable, "-m", "altlake_cli.main", "serve", "--release", str(release), "--port", "{port}"]
    with running(command, ready_path="/indices-list") as url:
        asyncio.run(send_queries(url + "/knn-service", bodies[:50], 1, 50, 10.0))
        stats, _ = asyncio.run(send_queries(url + "/knn-service", bodies, 1, len(bodies), 10.0))
    rows["HTTP round trip, 1 client (p50)"] = stats["p50_ms"]
    print(f"\nper-query cost, {args.vectors} x {args.dim}, k=10, one thread:")
    for name, ms in rows.items():
        print(f"  {name:<48} {ms:8.3f} ms")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "search_breakdown.json").write_text(json.dumps({"vectors": args.vectors, "dim": args.dim, "ms": rows}, indent=2))
    return 0


def _per_call_ms(stage, calls: int) -> float:
    for i in range(min(calls, 20)):
        stage(i)  # warm: page cache, lazy views
    started = time.perf_counter()
    for i in range(calls):
        stage(i)
    return round(1000 * (time.perf_counter() - started) / calls, 3)


if __name__ == "__main__":
    sys.exit(main())
