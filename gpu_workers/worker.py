"""The scoring worker: one batch of candidates -> downloads -> decode/resize -> CLIP -> safety heads -> files.

Stages overlap in one bounded pipeline, so a 100k-row batch runs in flat memory:

    reader ──rows──> downloader (asyncio thread, <= max_in_flight pulled ahead)
           ──bodies──> decode pool (threads, <= decode_workers * 4 pending; on a GPU: batches of
                       batch_size decoded by nvJPEG, <= 2 batches pending plus the one filling)
           ──pixels──> inference thread (one batch running, one being filled)
           ──scores──> results in memory (one small row + two float16 vectors per uid)
    writer: results.parquet, clip-retrieval embeddings, optional webdataset shards, then _SUCCESS.

The same `score_batch` runs from the `altlake score` command, inside an Airflow task and in the
worker container on a GPU node. A batch whose _SUCCESS exists is skipped; a batch killed halfway
is simply run again: outputs are sorted by uid and every file is atomic, so the re-run writes the
same bytes (timing columns aside).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from altlake import logs
from altlake.config import Settings
from altlake.paths import RESULTS_FILE
from altlake.profiles import MODEL_FLAGS, ProfileError, load_profiles, select_profile
from altlake.schemas import STATUS_OK, STATUS_OPTED_OUT
from altlake.stats import StageStats, chain
from gpu_workers.batch_decode import DECODE_CHOICES, BatchDecoder, uses_batch_decoder
from gpu_workers.downloader import DownloadConfig, FetchResult, download
from gpu_workers.images import DecodedImage, ImageConfig, ImageRejected, decode
from gpu_workers.models import DEMO, Models, ModelSpec, similarity
from gpu_workers.profiles import ModelLoadError, load_checked, model_spec
from gpu_workers.reader import BatchInputError, InputRow, default_batch_id, read_batch
from gpu_workers.stage_clock import NO_CLOCK, StageClock
from gpu_workers.writer import (
    TIMING_COLUMNS,
    ImageSpool,
    OutputDir,
    Sample,
    metadata_table,
    parquet_bytes,
    read_success,
    results_table,
    sample_key,
    write_embeddings,
    write_success,
    write_webdataset,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    """How much work may be in flight at each stage (the memory bound) and what to write."""

    batch_size: int = 64  # images per model call
    max_in_flight: int = 256  # downloads pulled ahead of what has been consumed
    decode_workers: int = 2  # threads decoding / resizing / preprocessing (Pillow releases the GIL)
    decode: str = "auto"  # cpu | gpu (batched nvJPEG + resize on the device) | auto: gpu when the models run on CUDA
    webdataset: bool = False
    samples_per_shard: int = 10_000
    # torch's CPU threads for the model calls; 0: one per CPU this process may use. A CPU model's
    # results change in their last bits with it, so the worker sets it for the batch rather than
    # inheriting what the host process (an Airflow task, a test) last left there.
    model_threads: int = 0

    def __post_init__(self) -> None:
        if self.decode not in DECODE_CHOICES:
            raise ValueError(f"decode must be one of {DECODE_CHOICES}, not {self.decode!r}")
        if self.model_threads < 0:
            raise ValueError(f"model_threads must be 0 (one per CPU) or more, not {self.model_threads}")

    @property
    def torch_threads(self) -> int:
        return self.model_threads or len(os.sched_getaffinity(0))

    @property
    def decode_window(self) -> int:
        """Rows handed to the decode threads and not yet collected: at least a batch, so that the
        threads keep a full batch coming while the model works on the previous one."""
        return max(self.decode_workers * 4, self.batch_size)


@dataclass
class Scored:
    """One finished input row: the results.parquet row, plus embeddings when the row is ok."""

    row: dict
    stage: str  # where the row finished: read | download | decode | embed (datatrove-style counters)
    img_emb: np.ndarray | None = None  # float16, L2-normalised
    text_emb: np.ndarray | None = None
    stored_image: bytes | None = None  # the resized, re-encoded image for webdataset shards


# --- the bounded pipeline -------------------------------------------------------------------------


def score_rows(
    rows: Iterable[InputRow],
    models: Models,
    download_config: DownloadConfig,
    image_config: ImageConfig,
    pipeline: PipelineConfig,
    batch_id: str,
    clock: StageClock = NO_CLOCK,
    traffic: Counter | None = None,
) -> Iterator[Scored]:
    """Score rows lazily; yields one Scored per input row, in completion order. `traffic` counts
    the image bytes received ("bytes_downloaded"), for the batch's throughput record.

    At any time at most max_in_flight + decode_window + 3 * batch_size rows have been pulled from
    `rows` without being yielded, however long `rows` is (up to two batches decoded and waiting
    while the model works on a third; with GPU decoding the decode stage holds up to
    2 * batch_size instead of decode_window).
    """
    waiting: dict[str, InputRow] = {}  # pulled by the downloader, not yet yielded
    unusable: list[InputRow] = []  # rows with a mistyped cell or a withdrawn uid: recorded, never downloaded

    def items() -> Iterator[tuple[str, str]]:
        for row in rows:
            if row.problem or row.withdrawn:
                unusable.append(row)
                continue
            waiting[row.uid] = row
            yield row.uid, row.url

    def refused() -> Iterator[Scored]:
        while unusable:
            row = unusable.pop()
            if row.withdrawn:  # "<signal>: <detail>", as every opt-out's error reads
                fetch = FetchResult(key=row.uid, url=row.url, status=STATUS_OPTED_OUT)
                error = f"{row.withdrawn}: the page opted out after the batch was planned"
                yield Scored(_failure(row, batch_id, fetch, STATUS_OPTED_OUT, error), "read")
                continue
            fetch = FetchResult(key=row.uid, url=row.url, status="invalid_input")
            yield Scored(_failure(row, batch_id, fetch, "invalid_input", row.problem), "read")

    stages = _Stages(models, image_config, pipeline, batch_id, clock)
    with stages:
        for fetch in download(items(), download_config, pipeline.max_in_flight, clock):
            yield from refused()
            row = waiting.pop(fetch.key)
            if fetch.status != STATUS_OK:
                yield Scored(_failure(row, batch_id, fetch, fetch.status, fetch.error), "download")
                continue
            if traffic is not None:
                traffic["bytes_downloaded"] += len(fetch.body or b"")
            yield from stages.feed(row, fetch)
        yield from refused()
        yield from stages.finish()


class _Stages:
    """Decode pool + single inference thread, each with a fixed bound on pending work.

    Bodies are decoded in groups: of one on the CPU path (each decode its own task), of batch_size
    with GPU decoding (one batched nvJPEG call per group).
    """

    def __init__(self, models: Models, image_config: ImageConfig, pipeline: PipelineConfig, batch_id: str, clock: StageClock):
        self.models, self.image_config, self.pipeline, self.batch_id = models, image_config, pipeline, batch_id
        self.clock = clock
        # Every decoded image has the same square size and the models preprocess on the GPU: hand
        # over raw uint8 pixels, one array per image, and let one batched call do CLIP's and the
        # watermark head's resize and normalisation (no per-image PIL work on the CPU).
        self.raw_pixels = models.preprocesses_on_device and image_config.square_output
        batched = uses_batch_decoder(pipeline.decode, models.device)
        self.batch_decoder = BatchDecoder(image_config, models.device) if batched else None
        self.group_size = pipeline.batch_size if batched else 1
        self.window = 2 * pipeline.batch_size if batched else pipeline.decode_window  # rows submitted, not collected
        self.filling: list[tuple[InputRow, FetchResult, bytes]] = []  # the next group
        self.decoding: deque[tuple[list[tuple[InputRow, FetchResult]], Future]] = deque()
        self.submitted = 0  # rows in self.decoding
        self.ready: list[tuple[InputRow, FetchResult, DecodedImage, object]] = []
        self.inferring: Future | None = None
        self.decoders = ThreadPoolExecutor(pipeline.decode_workers, thread_name_prefix="altlake-decode")
        self.inference = ThreadPoolExecutor(1, thread_name_prefix="altlake-inference")

    def __enter__(self) -> _Stages:
        return self

    def __exit__(self, *exc) -> None:
        for future in (f for _, f in self.decoding):
            future.cancel()
        self.decoders.shutdown(wait=True, cancel_futures=True)
        self.inference.shutdown(wait=True, cancel_futures=True)

    def feed(self, row: InputRow, fetch: FetchResult) -> list[Scored]:
        body, fetch.body = fetch.body, None  # the decode task owns the bytes now
        self.filling.append((row, fetch, body))
        if len(self.filling) >= self.group_size:
            self._submit_group()
        return self._collect(block=self.submitted > self.window)

    def finish(self) -> list[Scored]:
        if self.filling:
            self._submit_group()
        done = self._collect(block=True, drain=True)
        while self.ready:
            done += self._start_inference()
        if self.inferring is not None:
            done += self.inferring.result()
            self.inferring = None
        return done

    def _submit_group(self) -> None:
        group, self.filling = self.filling, []
        future = self.decoders.submit(self._decode, [body for _, _, body in group])
        self.decoding.append(([(row, fetch) for row, fetch, _ in group], future))
        self.submitted += len(group)

    def _decode(self, bodies: list[bytes]) -> list[tuple[DecodedImage, object] | Exception]:
        """Runs in the decode pool: check, decode, resize, and CLIP's own preprocessing; one outcome per body."""
        if self.batch_decoder is not None:
            decoded: list[DecodedImage | Exception] = list(self.batch_decoder.decode(bodies, self.clock))
        else:
            decoded = [_attempt(decode, body, self.image_config, self.clock) for body in bodies]
        return [outcome if isinstance(outcome, Exception) else _attempt(self._with_pixels, outcome) for outcome in decoded]

    def _with_pixels(self, decoded: DecodedImage) -> tuple[DecodedImage, object]:
        with self.clock.stage("preprocess"):
            if self.raw_pixels:
                return decoded, decoded.pixels
            return decoded, self.models.preprocess([decoded.image])

    def _collect(self, block: bool, drain: bool = False) -> list[Scored]:
        """Move finished decodes on to inference; wait for the oldest group when over the bound."""
        done: list[Scored] = []
        while self.decoding and (self.decoding[0][1].done() or block):
            items, future = self.decoding.popleft()
            self.submitted -= len(items)
            try:
                outcomes = future.result()
            except Exception as exc:  # noqa: BLE001 - a decoder bug fails its rows, recorded, never lost
                outcomes = [exc] * len(items)
            for (row, fetch), outcome in zip(items, outcomes, strict=True):
                if isinstance(outcome, ImageRejected):
                    done.append(Scored(_failure(row, self.batch_id, fetch, outcome.status, outcome.message), "decode"))
                elif isinstance(outcome, Exception):
                    error = f"{type(outcome).__name__}: {outcome}"
                    done.append(Scored(_failure(row, self.batch_id, fetch, "decode_error", error), "decode"))
                else:
                    self.ready.append((row, fetch, *outcome))
                    if len(self.ready) >= self.pipeline.batch_size:
                        # While the model is busy, decoding goes on: wait for it only with two batches ready.
                        done += self._start_inference(wait=len(self.ready) >= 2 * self.pipeline.batch_size)
            block = drain or self.submitted > self.window
        if len(self.ready) >= self.pipeline.batch_size and (self.inferring is None or self.inferring.done()):
            done += self._start_inference()  # the model went idle with a batch waiting
        return done

    def _start_inference(self, wait: bool = True) -> list[Scored]:
        """Hand a batch of `ready` to the inference thread, after collecting the batch it ran before;
        with wait=False a busy inference thread leaves the rows ready for the next call."""
        done: list[Scored] = []
        if self.inferring is not None:
            if not wait and not self.inferring.done():
                return done
            done = self.inferring.result()
            self.inferring = None
        size = self.pipeline.batch_size
        batch, self.ready = self.ready[:size], self.ready[size:]
        self.inferring = self.inference.submit(self._infer, batch)
        return done

    def _infer(self, batch: list[tuple[InputRow, FetchResult, DecodedImage, object]]) -> list[Scored]:
        """Embed and tag one batch, padded to batch_size so every model call has the same shapes.

        Batches are filled in download-completion order, which differs between runs; with fixed
        shapes a row's scores do not depend on its batch-mates (kernels pick the same code path),
        so a re-run with the same model_threads reproduces results bit for bit.
        """
        models, n, size, clock = self.models, len(batch), self.pipeline.batch_size, self.clock
        pad = size - n
        with clock.stage("rows"):
            if self.raw_pixels:  # (size, H, W, 3) uint8, copied to the device once for CLIP and the watermark head
                arrays = [p for _, _, _, p in batch]
                images = pixels = models.upload(torch.from_numpy(np.stack(arrays + [np.zeros_like(arrays[0])] * pad)))
            else:
                pixels = torch.cat([p for _, _, _, p in batch])
                pixels = torch.cat([pixels, pixels.new_zeros((pad, *pixels.shape[1:]))])
                if models.device.type == "cuda":
                    pixels = pixels.pin_memory()  # per-image tensors come from the decode threads
                images = [decoded.image for _, _, decoded, _ in batch]
                images += [Image.new("RGB", images[0].size, (255, 255, 255))] * pad
        with clock.stage("model"):
            img = models.embed_images(pixels).astype(np.float16)
            txt = self._embed_texts([r.text for r, _, _, _ in batch], [r.language for r, _, _, _ in batch]).astype(np.float16)
            # Scores come from the stored float16 vectors, so anyone can recompute them from the release.
            img32, txt32 = img.astype(np.float32), txt.astype(np.float32)
            sims = similarity(img32[:n], txt32)
        with clock.stage("heads"):
            punsafe = models.punsafe(img32)
            pwatermark = models.pwatermark(images)
            aesthetic = models.aesthetic(img32)
        with clock.stage("rows"):
            return self._rows(batch, sims, punsafe, pwatermark, aesthetic, img, txt)

    def _rows(
        self,
        batch: list[tuple[InputRow, FetchResult, DecodedImage, object]],
        sims: np.ndarray,
        punsafe: np.ndarray | None,
        pwatermark: np.ndarray | None,
        aesthetic: np.ndarray | None,
        img: np.ndarray,
        txt: np.ndarray,
    ) -> list[Scored]:
        """The results rows of one embedded batch."""
        models = self.models
        scored = []
        for i, (row, fetch, decoded, _) in enumerate(batch):
            result = _result(row, self.batch_id, fetch, STATUS_OK, None)
            result.update(
                original_width=decoded.original_width,
                original_height=decoded.original_height,
                width=decoded.width,
                height=decoded.height,
                sha256=decoded.sha256,
                md5=decoded.md5,
                pdq=decoded.pdq,
                pdq_quality=decoded.pdq_quality,
                similarity=float(sims[i]),
                punsafe=None if punsafe is None else float(punsafe[i]),
                pwatermark=None if pwatermark is None else float(pwatermark[i]),
                aesthetic=None if aesthetic is None else float(aesthetic[i]),
                clip_model=models.clip_id,
                text_model=models.text_model_for(row.language),
                nsfw_model=models.nsfw_id,
                watermark_model=models.watermark_id,
                aesthetic_model=models.aesthetic_id,
            )
            scored.append(Scored(result, "embed", img[i], txt[i], decoded.stored_bytes))
        return scored

    def _embed_texts(self, texts: list[str], languages: list[str]) -> np.ndarray:
        """models.embed_texts per text-encoder group (English / other languages), each padded to batch_size."""
        size = self.pipeline.batch_size
        groups: dict[str, list[int]] = {}
        for i, language in enumerate(languages):
            groups.setdefault(self.models.text_model_for(language), []).append(i)
        out = np.zeros((len(texts), self.models.embed_dim), np.float32)
        for rows in groups.values():
            language = languages[rows[0]]
            padded = [texts[i] for i in rows] + [""] * (size - len(rows))
            out[rows] = self.models.embed_texts(padded, [language] * size)[: len(rows)]
        return out


def _attempt(function, *args):
    """function(*args), or the exception it raised: one bad image must not fail its group."""
    try:
        return function(*args)
    except Exception as exc:  # noqa: BLE001 - turned into that row's failure status by _collect
        return exc


def _result(row: InputRow, batch_id: str, fetch: FetchResult, status: str, error: str | None) -> dict:
    """The results.parquet columns every row has; ok rows add their measurements and scores."""
    return {
        "uid": row.uid,
        "url": row.url,
        "status": status,
        "error": error,
        "http_status": fetch.http_status,
        "batch_id": batch_id,
        "download_s": fetch.elapsed_s,
        "scored_at": datetime.now(UTC),
    }


def _failure(row: InputRow, batch_id: str, fetch: FetchResult, status: str, error: str | None) -> dict:
    """A failed row: never without a reason, even when the failing stage gave none."""
    return _result(row, batch_id, fetch, status, error or status)


# --- one batch, end to end ------------------------------------------------------------------------


def score_batch(
    input_path: str,
    output_dir: str,
    spec: ModelSpec,
    download: DownloadConfig,
    images: ImageConfig,
    pipeline: PipelineConfig = PipelineConfig(),
    *,
    batch_id: str | None = None,
    s3_endpoint: str = "",
    models: Models | None = None,
    progress: bool = False,
) -> dict:
    """Score one batch parquet into `output_dir`; returns the summary that _SUCCESS records.

    Pass `models` to reuse loaded models across batches (an Airflow worker scoring many batches).
    """
    out = OutputDir(output_dir, s3_endpoint)
    recorded = read_success(out)
    if recorded is not None:
        log.info("batch already scored, skipping: %s", output_dir)
        return {**recorded, "skipped": True}
    started_at, started = datetime.now(UTC), time.perf_counter()
    swept = out.remove_stale_temps()
    batch = read_batch(input_path, s3_endpoint, batch_id)
    if batch.duplicate_rows:
        log.warning("%s: %d duplicated uid row(s) collapsed", input_path, batch.duplicate_rows)
    models = models or load_checked(spec)
    if not pipeline.webdataset:
        images = dataclasses.replace(images, encode_format=None)  # nothing will store the pixels
    loaded = time.perf_counter()
    clock = StageClock()
    clock.start()

    results: list[dict] = []
    finished: Counter[tuple[str, str]] = Counter()  # (stage, status) -> rows
    traffic: Counter[str] = Counter()
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    spool = ImageSpool() if pipeline.webdataset else None
    bar = tqdm(total=len(batch.rows), desc=f"score {batch.batch_id}", unit="row", file=sys.stderr, disable=not progress)
    main_thread = time.thread_time()  # the loop below: handing rows between the stages, collecting results
    host_threads = torch.get_num_threads()
    torch.set_num_threads(pipeline.torch_threads)  # process-wide: the inference thread started below runs with it
    try:
        for scored in score_rows(batch.rows, models, download, images, pipeline, batch.batch_id, clock, traffic):
            results.append({**scored.row, "profile": spec.profile})
            finished[scored.stage, scored.row["status"]] += 1
            if scored.row["status"] == STATUS_OK:
                embeddings[scored.row["uid"]] = (scored.img_emb, scored.text_emb)
                if spool is not None:
                    spool.add(scored.row["uid"], scored.stored_image)
            bar.update()
        bar.close()
        clock.add("orchestrate", time.thread_time() - main_thread)
        scored_s = time.perf_counter() - loaded
        with clock.stage("write"):
            shards = _write_outputs(out, batch.rows, results, embeddings, models.embed_dim, spool, images.encode_format, pipeline)
        clock.stop()
    finally:
        torch.set_num_threads(host_threads)
        bar.close()
        if spool is not None:
            spool.close()

    statuses = Counter(row["status"] for row in results)
    wall_s = time.perf_counter() - started
    summary = {
        "batch_id": batch.batch_id,
        "input": input_path,
        "output": output_dir,
        "rows": len(results),
        "statuses": dict(sorted(statuses.items())),
        "opted_out_by_signal": opted_out_by_signal(results),
        # How hosts were treated (per-host concurrency, rate, Retry-After cap, refusal limit): merge_scores and SQL see it here.
        "politeness": download.politeness(),
        "stages": _stage_counts(batch.input_rows, batch.duplicate_rows, finished),
        "profile": spec.profile,  # the model profile every row records (None: models chosen by flags)
        "models": {
            "clip": models.clip_id,
            "text": models.text_id,
            "multilingual_text": models.multilingual_text_id,
            "nsfw": models.nsfw_id,
            "watermark": models.watermark_id,
            "aesthetic": models.aesthetic_id,
        },
        "webdataset_shards": shards,
        "stale_temp_files_removed": swept,
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),  # which machine scored it, for "which worker is slow" in SQL
        "model_threads": pipeline.torch_threads,  # with the models and the device, what a bit-exact re-run needs
        "bytes_downloaded": traffic["bytes_downloaded"],
        "seconds": {
            "load": round(loaded - started, 3),
            "score": round(scored_s, 3),
            "write": round(wall_s - scored_s - (loaded - started), 3),
        },
        "wall_s": round(wall_s, 3),
        # Where the CPU went, per ok image: what sizes the CPUs a GPU needs (bench/clip reads it).
        "cpu_ms_per_image": clock.ms_per_image(statuses[STATUS_OK]),
        "images_per_s": round(statuses[STATUS_OK] / scored_s, 2) if scored_s else 0.0,
        "rows_per_s": round(len(results) / scored_s, 2) if scored_s else 0.0,
    }
    write_success(out, summary)
    return {**summary, "skipped": False}


def opted_out_by_signal(results: Iterable[dict]) -> dict[str, int]:
    """opted_out rows per signal: the error's text before its first ":" (altlake.schemas.OPT_OUT_SIGNALS)."""
    signals = Counter((row["error"] or "").split(":", 1)[0].strip() for row in results if row["status"] == STATUS_OPTED_OUT)
    return dict(sorted(signals.items()))


def _stage_counts(input_rows: int, duplicate_rows: int, finished: Counter) -> list[dict]:
    """What each step took in, kept, and dropped by reason (altlake.stats)."""
    read_dropped = {status: n for (where, status), n in finished.items() if where == "read"}
    if duplicate_rows:
        read_dropped["duplicate_uid"] = duplicate_rows
    stages = [StageStats("read", input_rows, read_dropped)]
    for stage in ("download", "decode", "embed"):
        dropped = {status: n for (where, status), n in finished.items() if where == stage and status != STATUS_OK}
        stages.append(StageStats(stage, stages[-1].kept, dropped))
    return chain(stages)


def _write_outputs(
    out: OutputDir,
    rows: list[InputRow],
    results: list[dict],
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]],
    embed_dim: int,
    spool: ImageSpool | None,
    image_ext: str | None,
    pipeline: PipelineConfig,
) -> list[str]:
    """Embeddings (and shards) first, results.parquet after; the caller writes _SUCCESS last."""
    table = results_table(results)
    if table.num_rows != len(rows):
        raise RuntimeError(f"scored {table.num_rows} rows for {len(rows)} input uids")  # a bug, never silent
    ok = table.filter(np.asarray(table.column("status").to_pylist()) == STATUS_OK)
    ok_uids = ok.column("uid").to_pylist()
    inputs = {row.uid: row for row in rows}
    empty = np.zeros((0, embed_dim), np.float16)
    img = np.stack([embeddings[uid][0] for uid in ok_uids]) if ok_uids else empty
    txt = np.stack([embeddings[uid][1] for uid in ok_uids]) if ok_uids else empty
    captions = [inputs[uid].text for uid in ok_uids]
    write_embeddings(out, img, txt, metadata_table(ok, captions, [inputs[uid].language for uid in ok_uids]))
    shards: list[str] = []
    if spool is not None:
        deterministic = ok.drop_columns(list(TIMING_COLUMNS)).to_pylist()
        samples = (
            Sample(sample_key(i), spool.get(meta["uid"]), captions[i], meta) for i, meta in enumerate(deterministic)
        )
        shards = write_webdataset(out, samples, pipeline.samples_per_shard, image_ext)
    out.write_bytes(RESULTS_FILE, parquet_bytes(table))
    return shards


# --- `altlake score` ------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="batch parquet (local path or s3:// URL)")
    parser.add_argument("--output", required=True, help="output directory (local path or s3:// prefix)")
    parser.add_argument("--profile", help="model profile: every model and the thresholds that fit them, by name: 'demo' or a "
                        "[profiles.<name>] of ALTLAKE_MODEL_PROFILES (default: ALTLAKE_MODEL_PROFILE, else demo); "
                        "the flags choosing models one by one below conflict with it")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", help=f"open_clip architecture (default: the demo model {ModelSpec.clip_model})")
    model.add_argument("--checkpoint", help="a local open_clip checkpoint file instead of --model/--pretrained")
    parser.add_argument("--pretrained", help="open_clip pretrained tag for --model (weights must be local)")
    parser.add_argument("--text-model", help="multilingual text encoder for non-English captions: 'demo', a path or "
                        "s3:// URL (default: demo with the demo CLIP, none otherwise: CLIP's own text tower)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                        help="host, IP or CIDR the SSRF guard may reach although private (repeatable)")
    parser.add_argument("--allow-listed-only", action="store_true",
                        help="refuse every host not given with --allow-host, before any DNS lookup (offline demos)")
    parser.add_argument("--per-host-concurrency", type=at_least_one, default=None,
                        help="open requests per host at any time (default: ALTLAKE_PER_HOST_CONCURRENCY, else 8)")
    parser.add_argument("--per-host-rate", type=at_least_zero, default=None,
                        help="request starts per second per host, 0 = no limit (default: ALTLAKE_PER_HOST_RATE, else 0)")
    parser.add_argument("--max-retry-after", type=at_least_zero, default=None, metavar="SECONDS",
                        help="cap on the host-wide pause a 429/503 Retry-After asks for (default: ALTLAKE_MAX_RETRY_AFTER_S, else 30)")
    parser.add_argument("--host-refusal-limit", type=at_least_zero_int, default=None, metavar="N",
                        help="give a host up for the batch after N consecutive 429/503 answers, its other URLs end "
                        "host_refused; 0 = never (default: ALTLAKE_HOST_REFUSAL_LIMIT, else 5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=ModelSpec.device)
    parser.add_argument("--batch-size", type=at_least_one, default=PipelineConfig.batch_size, help="images per model call")
    parser.add_argument("--max-in-flight", type=at_least_one, default=PipelineConfig.max_in_flight, help="downloads ahead")
    parser.add_argument("--decode-workers", type=at_least_one, default=PipelineConfig.decode_workers)
    parser.add_argument("--model-threads", type=at_least_zero_int, default=PipelineConfig.model_threads,
                        help="torch's CPU threads for the models; scores on the CPU depend on it in their last bits "
                        "(default 0: one per CPU this process may use)")
    parser.add_argument("--decode", choices=DECODE_CHOICES, default=None,
                        help="where JPEGs are decoded and resized: cpu, gpu (batched nvJPEG, needs --device cuda) or "
                        "auto = gpu when the models run on CUDA (default: ALTLAKE_WORKER_DECODE, else auto)")
    parser.add_argument("--min-side", type=at_least_one, default=ImageConfig.min_side,
                        help=f"refuse images whose shorter side is below this many pixels (default {ImageConfig.min_side})")
    parser.add_argument("--max-aspect-ratio", type=float, default=ImageConfig.max_aspect_ratio,
                        help=f"refuse images whose longer side exceeds this many times the shorter (default {ImageConfig.max_aspect_ratio:g})")
    # The demo heads fit the demo CLIP and the demo's generated images only: with another CLIP
    # (--model / --checkpoint) a head runs when it is named.
    nsfw = parser.add_mutually_exclusive_group()
    nsfw.add_argument("--nsfw-head", metavar="PATH|demo",
                      help="LAION CLIP-based-NSFW-Detector MLP state dict (a path or s3:// URL) or 'demo' (default: demo with the demo CLIP)")
    nsfw.add_argument("--no-nsfw", action="store_true", help="skip the NSFW head (punsafe stays null)")
    watermark = parser.add_mutually_exclusive_group()
    watermark.add_argument("--watermark-head", metavar="PATH|demo",
                           help="LAION-5B-WatermarkDetection's efficientnet_b3a state dict (a path or s3:// URL) or 'demo' "
                           "(default: demo with the demo CLIP)")
    watermark.add_argument("--no-watermark", action="store_true", help="skip the watermark head (pwatermark stays null)")
    aesthetic = parser.add_mutually_exclusive_group()
    aesthetic.add_argument("--aesthetic-head", metavar="PATH|demo",
                           help="LAION-Aesthetics predictor weights (LAION-AI/aesthetic-predictor's linear or improved-aesthetic-predictor's "
                           "MLP state dict: a path or s3:// URL) or 'demo' (default: demo with the demo CLIP)")
    aesthetic.add_argument("--no-aesthetic", action="store_true", help="skip the aesthetic head (aesthetic stays null)")
    parser.add_argument("--webdataset", action="store_true", help="also write webdataset tar shards of the ok images")
    parser.add_argument("--batch-id", help="default: the folder of .../<batch_id>/input.parquet, else the file name")


def whole_number_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type of whole numbers of at least `minimum`: 1 for counts where 0 would score
    nothing (or hang), 0 for limits where 0 means "no limit"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


at_least_one = whole_number_at_least(1)
at_least_zero_int = whole_number_at_least(0)


def at_least_zero(text: str) -> float:
    """argparse type of rates and durations: a number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, not {text}")
    return value


def download_config(args: argparse.Namespace, settings: Settings) -> DownloadConfig:
    """Settings (ALTLAKE_*), then the flags given: allow-list and per-host politeness."""
    return DownloadConfig.from_settings(
        settings,
        allow_hosts=tuple(args.allow_host),
        allow_listed_only=args.allow_listed_only,
        per_host_concurrency=args.per_host_concurrency,
        per_host_rate=args.per_host_rate,
        max_retry_after_s=args.max_retry_after,
        host_refusal_limit=args.host_refusal_limit,
    )


def run(args: argparse.Namespace) -> int:
    flags = [flag for dest, flag in MODEL_FLAGS.items() if getattr(args, dest)]
    if args.profile and flags:
        print(f"altlake score: --profile {args.profile} chooses every model, so it conflicts with {', '.join(flags)}: "
              "give the profile or the model flags, not both", file=sys.stderr)  # fmt: skip
        return 2
    if args.pretrained and not args.model:
        print("altlake score: --pretrained needs --model", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    try:
        spec = spec_from_args(args) if flags else spec_from_profile(args.profile or settings.model_profile, settings, args.device)
    except ProfileError as exc:
        print(f"altlake score: {exc}", file=sys.stderr)
        return 2
    decode_on = args.decode or settings.worker_decode
    if decode_on not in DECODE_CHOICES or (decode_on == "gpu" and not spec.device.startswith("cuda")):
        print(f"altlake score: decode must be auto, cpu, or gpu with --device cuda, not {decode_on!r} on {spec.device}", file=sys.stderr)
        return 2
    with logs.batch(args.batch_id or default_batch_id(args.input)):
        try:
            summary = score_batch(
                args.input,
                args.output,
                spec,
                download_config(args, settings),
                ImageConfig(min_side=args.min_side, max_aspect_ratio=args.max_aspect_ratio),
                PipelineConfig(
                    batch_size=args.batch_size,
                    max_in_flight=args.max_in_flight,
                    decode_workers=args.decode_workers,
                    decode=decode_on,
                    model_threads=args.model_threads,
                    webdataset=args.webdataset,
                ),
                batch_id=args.batch_id,
                s3_endpoint=settings.s3_endpoint,
                progress=sys.stderr.isatty(),  # a bar on a terminal, nothing in a pipe or a log
            )
        except (BatchInputError, ModelLoadError) as exc:
            print(f"altlake score: {exc}", file=sys.stderr)
            return 2
        # The batch's throughput in one structured line (ALTLAKE_LOG_FORMAT), beside the JSON summary on stdout.
        log.info("batch scored", extra={k: summary.get(k) for k in ("rows", "statuses", "wall_s", "images_per_s", "bytes_downloaded", "skipped")})
    print(json.dumps(summary, sort_keys=True))
    return 0


def spec_from_profile(name: str, settings: Settings, device: str) -> ModelSpec:
    """The models of the deployment's profile `name` (ProfileError for a bad file or an unknown name)."""
    profiles = load_profiles(settings.model_profiles)
    return model_spec(select_profile(profiles, name, settings.model_profiles or "built-in profiles"), device)


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    """The flags given over ModelSpec's defaults (the demo models). With a CLIP other than the demo's,
    the demo text tower and heads are not defaults: they only fit the demo CLIP's embeddings."""
    changes: dict[str, object] = {"device": args.device}
    default = DEMO if not args.model and not args.checkpoint else None
    changes["multilingual_text_model"] = args.text_model or default
    if args.model:
        changes.update(clip_model=args.model, pretrained=args.pretrained)
    if args.checkpoint:
        changes["checkpoint"] = args.checkpoint
    for head, given, skipped in (
        ("nsfw_head", args.nsfw_head, args.no_nsfw),
        ("watermark_head", args.watermark_head, args.no_watermark),
        ("aesthetic_head", args.aesthetic_head, args.no_aesthetic),
    ):
        changes[head] = None if skipped else (given or default)
    return dataclasses.replace(ModelSpec(), **changes)
