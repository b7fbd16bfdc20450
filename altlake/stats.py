"""What a stage did with its rows, in one shape every stage fills and every summary reads.

In the manner of datatrove's per-step stats: a stage took rows `in`, `kept` some and `dropped` the
rest, counted by reason; rows it kept but flagged are counted in `marked` (a near-duplicate is kept and
named). The extraction (per WAT, per run), the worker (per batch), the merge and the release fill it;
the task summaries, the worker's `_SUCCESS`, the manifest and the report read it. Serialized as a
list in pipeline order (the manifest sorts its keys, so order cannot live in a dict):
`[{"stage", "in", "kept", "dropped": {reason: n}, "marked": {flag: n}}, ...]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageStats:
    """One stage's counts; `kept` is what is left of `taken` after the drops (checked, never negative)."""

    name: str
    taken: int
    dropped: Mapping[str, int] = field(default_factory=dict)
    marked: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        counts = [self.taken, *self.dropped.values(), *self.marked.values()]
        if any(not isinstance(n, int) or n < 0 for n in counts):
            raise ValueError(f"stage {self.name!r}: counts must be non-negative integers, got {self.to_dict()}")
        if self.kept < 0:
            raise ValueError(f"stage {self.name!r} dropped {sum(self.dropped.values())} of {self.taken} rows")

    @property
    def kept(self) -> int:
        return self.taken - sum(self.dropped.values())

    def to_dict(self) -> dict:
        """The serialized form: zero counts left out, reasons sorted (a stable manifest)."""
        return {
            "stage": self.name,
            "in": self.taken,
            "kept": self.kept,
            "dropped": {reason: n for reason, n in sorted(self.dropped.items()) if n},
            "marked": {flag: n for flag, n in sorted(self.marked.items()) if n},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> StageStats:
        name = data["stage"]
        stats = cls(name, int(data["in"]), {k: int(v) for k, v in data["dropped"].items()}, {k: int(v) for k, v in data.get("marked", {}).items()})
        if stats.kept != data["kept"]:
            raise ValueError(f"stage {name!r}: kept {data['kept']} is not in {data['in']} minus the drops {dict(data['dropped'])}")
        return stats

    def __add__(self, other: StageStats) -> StageStats:
        """The same stage over more rows (two WATs, two batches)."""
        if other.name != self.name:
            raise ValueError(f"cannot add stage {other.name!r} to stage {self.name!r}")
        return StageStats(self.name, self.taken + other.taken, _sum(self.dropped, other.dropped), _sum(self.marked, other.marked))

    def line(self) -> str:
        """`name: 10 in, 7 kept; dropped 2 too_short, 1 bad_url; marked 1 near_duplicate`."""
        text = f"{self.name}: {self.taken} in, {self.kept} kept"
        if any(self.dropped.values()):
            text += "; dropped " + ", ".join(f"{n} {reason}" for reason, n in _by_count(self.dropped))
        if any(self.marked.values()):
            text += "; marked " + ", ".join(f"{n} {flag}" for flag, n in _by_count(self.marked))
        return text


def chain(stages: Iterable[StageStats]) -> list[dict]:
    """Serialize stages that follow one another: each must take in exactly what the one before kept."""
    out: list[dict] = []
    previous: StageStats | None = None
    for stage in stages:
        if previous is not None and stage.taken != previous.kept:
            raise ValueError(f"stage {stage.name!r} took {stage.taken} rows, but {previous.name!r} kept {previous.kept}")
        if any(entry["stage"] == stage.name for entry in out):
            raise ValueError(f"stage {stage.name!r} appears twice")
        out.append(stage.to_dict())
        previous = stage
    return out


def parse(data: Iterable[Mapping]) -> list[StageStats]:
    """The serialized form back into stages, in order (each checked)."""
    return [StageStats.from_dict(entry) for entry in data]


def by_name(data: Iterable[Mapping]) -> dict[str, StageStats]:
    return {stage.name: stage for stage in parse(data)}


def combine(runs: Iterable[Iterable[Mapping]]) -> list[dict]:
    """Several runs of the same stages (batches merged in one task, WATs of one crawl) added up."""
    total: dict[str, StageStats] = {}
    for run in runs:
        for stage in parse(run):
            total[stage.name] = total[stage.name] + stage if stage.name in total else stage
    return chain(total.values())


def summary(data: Iterable[Mapping]) -> str:
    """One line for a person: each stage's line, joined."""
    return " | ".join(stage.line() for stage in parse(data))


def _sum(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in sorted(a.keys() | b.keys())}


def _by_count(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(((k, n) for k, n in counts.items() if n), key=lambda item: (-item[1], item[0]))


# The release's stages in order, each with what its kept rows are (spark_jobs.release fills them; the
# report, the demo and the publish task's summary read them).
RELEASE_STAGES = {
    "scored": "scored (page not opted out, worker result in scores)",
    "downloaded": "downloaded and embedded (ok)",
    "threshold": "similarity above threshold",
    "exact_dedup": "after exact dedup (url+text, sha256)",
    "takedowns": "after takedowns = pairs",
    "near_dedup": "pairs (near-duplicates marked, kept)",
}
