"""Reader: one scoring batch (a parquet of candidates, local or s3://) -> validated, unique rows.

The worker's promise is "every input uid appears exactly once in the results", so the reader is
where that promise starts: it refuses input it cannot account for (missing columns, rows without a
uid) with a clear reason, collapses duplicated uids (counting them), and sorts by uid so that two
runs over the same file produce the same output, whatever order the downloads finish in. A row
whose url, text or language cell has the wrong type (a number, a list) is kept with its `problem`,
which the worker records as that row's failure: one bad cell never costs the rest of the batch.
"""

from __future__ import annotations

import dataclasses
import io
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from altlake import storage
from altlake.paths import BATCH_INPUT_FILE, WITHDRAWN_FILE
from altlake.schemas import CANDIDATES, NO_LANGUAGE

# The CANDIDATES columns the worker needs; every other column of the batch is ignored.
REQUIRED_COLUMNS = ("uid", "url", "text", "language")


class BatchInputError(ValueError):
    """The batch file cannot be scored as given (the message says why)."""


@dataclass(frozen=True)
class InputRow:
    uid: str
    url: str  # "" when the input had none: scored as invalid_url, never dropped
    text: str
    language: str
    problem: str | None = None  # why the row cannot be scored as given (a mistyped cell), if so
    withdrawn: str | None = None  # the opt-out signal of a page that opted out after planning: never downloaded


@dataclass(frozen=True)
class Batch:
    batch_id: str
    rows: list[InputRow]  # unique uids, sorted by uid
    input_rows: int  # rows in the file, duplicates included
    duplicate_rows: int  # rows collapsed because their uid was already seen


def default_batch_id(input_path: str) -> str:
    """The lake writes batches as .../batches/<batch_id>/input.parquet; elsewhere use the file stem."""
    name = posixpath.basename(input_path.rstrip("/"))
    if name == BATCH_INPUT_FILE:
        return posixpath.basename(posixpath.dirname(input_path.rstrip("/"))) or "batch"
    return name.removesuffix(".parquet") or "batch"


def read_batch(input_path: str, s3_endpoint: str = "", batch_id: str | None = None) -> Batch:
    """Read and validate a batch parquet (local path or s3:// URL)."""
    try:
        data = storage.read_bytes(input_path, storage.S3Options(endpoint=s3_endpoint))
    except FileNotFoundError as exc:
        raise BatchInputError(f"batch input not found: {input_path}") from exc
    except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        raise BatchInputError(f"batch input {input_path} is not a readable file: {exc.strerror}") from exc
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
    except pa.ArrowInvalid as exc:
        raise BatchInputError(f"{input_path} is not a parquet file: {exc}") from exc
    present = parquet.schema_arrow.names
    missing = [name for name in REQUIRED_COLUMNS if name not in present]
    if missing:
        raise BatchInputError(
            f"{input_path} lacks the candidate column(s) {missing} "
            f"(found {present}; expected the columns of {CANDIDATES.name})"
        )
    table = parquet.read(columns=list(REQUIRED_COLUMNS))
    batch = rows_to_batch(table.to_pylist(), batch_id or default_batch_id(input_path), input_path)
    withdrawn = read_withdrawn(input_path, s3_endpoint)
    if not withdrawn:
        return batch
    rows = [dataclasses.replace(row, withdrawn=withdrawn[row.uid]) if row.uid in withdrawn else row for row in batch.rows]
    return dataclasses.replace(batch, rows=rows)


def read_withdrawn(input_path: str, s3_endpoint: str = "") -> dict[str, str]:
    """uid -> opt-out signal from the `withdrawn.parquet` beside a batch input (none: {})."""
    path = posixpath.join(posixpath.dirname(input_path.rstrip("/")), WITHDRAWN_FILE)
    try:
        data = storage.read_bytes(path, storage.S3Options(endpoint=s3_endpoint))
    except FileNotFoundError:
        return {}
    try:
        table = pq.read_table(io.BytesIO(data), columns=["uid", "opt_out"])
    except (pa.ArrowInvalid, KeyError) as exc:
        raise BatchInputError(f"{path} is not a list of withdrawn uids (uid, opt_out): {exc}") from exc
    return dict(zip(table.column("uid").to_pylist(), table.column("opt_out").to_pylist()))


def rows_to_batch(records: list[dict], batch_id: str, source: str = "batch") -> Batch:
    """Validate records, collapse duplicated uids (first one wins) and sort by uid."""
    unusable = [i for i, r in enumerate(records) if not isinstance(r.get("uid"), str) or not r["uid"]]
    if unusable:
        raise BatchInputError(
            f"{source}: {len(unusable)} row(s) have no uid, so their outcome could not be recorded "
            f"(first row indexes: {unusable[:10]})"
        )
    unique: dict[str, InputRow] = {}
    for record in records:
        if record["uid"] in unique:
            continue
        cells = {name: record.get(name) for name in ("url", "text", "language")}
        mistyped = [f"{name} is {type(value).__name__} {_short(value)}, not a string" for name, value in cells.items()
                    if value is not None and not isinstance(value, str)]  # fmt: skip
        unique[record["uid"]] = InputRow(
            uid=record["uid"],
            url=_text(cells["url"], ""),
            text=_text(cells["text"], ""),
            language=_text(cells["language"], NO_LANGUAGE),
            problem="; ".join(mistyped) or None,
        )
    rows = [unique[uid] for uid in sorted(unique)]
    return Batch(batch_id=batch_id, rows=rows, input_rows=len(records), duplicate_rows=len(records) - len(rows))


def _text(value: object, default: str) -> str:
    return value if isinstance(value, str) and value else default


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
