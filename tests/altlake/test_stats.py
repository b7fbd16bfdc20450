"""The stage-stats contract: one shape for what every stage took in, kept and dropped."""

from __future__ import annotations

import json

import pytest

from altlake.stats import StageStats, by_name, chain, combine, parse, summary


def test_kept_is_what_the_drops_leave_and_the_serialized_form_round_trips():
    stage = StageStats("rules", 10, {"text_too_short": 3, "bad_extension": 0, "not_http": 1})
    assert stage.kept == 6
    data = stage.to_dict()
    assert data == {"stage": "rules", "in": 10, "kept": 6, "dropped": {"not_http": 1, "text_too_short": 3}, "marked": {}}
    assert StageStats.from_dict(json.loads(json.dumps(data))) == StageStats("rules", 10, {"text_too_short": 3, "not_http": 1})


@pytest.mark.parametrize(
    "bad",
    [
        lambda: StageStats("x", 2, {"a": 3}),  # more dropped than came in
        lambda: StageStats("x", -1),
        lambda: StageStats("x", 2, {"a": -1}),
        lambda: StageStats("x", 2.0),  # a count is an integer
        lambda: StageStats.from_dict({"stage": "x", "in": 5, "kept": 5, "dropped": {"a": 1}, "marked": {}}),  # kept disagrees
    ],
)
def test_impossible_counts_are_refused(bad):
    with pytest.raises(ValueError):
        bad()


def test_a_chain_checks_each_stage_takes_what_the_one_before_kept_and_keeps_its_order():
    read = StageStats("read", 10, {"invalid_input": 1})
    download = StageStats("download", 9, {"http_4xx": 2})
    stages = chain([read, download, StageStats("embed", 7)])
    assert [s["stage"] for s in stages] == ["read", "download", "embed"]
    assert list(by_name(stages)) == ["read", "download", "embed"] and by_name(stages)["embed"].kept == 7
    with pytest.raises(ValueError, match="took 8 rows, but 'read' kept 9"):
        chain([read, StageStats("download", 8)])
    with pytest.raises(ValueError, match="appears twice"):
        chain([StageStats("a", 1), StageStats("a", 1)])


def test_runs_of_the_same_stages_add_up_by_reason():
    one = chain([StageStats("results", 5, {"not_planned_in_this_batch": 1}), StageStats("merge", 4, {"not_newer_than_scores": 1})])
    two = chain([StageStats("results", 3), StageStats("merge", 3, {"not_newer_than_scores": 2})])
    total = parse(combine([one, two]))
    assert total == [StageStats("results", 8, {"not_planned_in_this_batch": 1}), StageStats("merge", 7, {"not_newer_than_scores": 3})]
    assert combine([]) == []
    with pytest.raises(ValueError):
        StageStats("a", 1) + StageStats("b", 1)


def test_the_summary_line_names_each_stage_with_drops_by_count_and_marks():
    stages = chain([StageStats("takedowns", 9, {"taken_down": 1}), StageStats("near_dedup", 8, marked={"near_duplicate": 2})])
    assert summary(stages) == "takedowns: 9 in, 8 kept; dropped 1 taken_down | near_dedup: 8 in, 8 kept; marked 2 near_duplicate"
    line = StageStats("download", 10, {"timeout": 1, "http_4xx": 3, "blocked_address": 3}).line()
    assert line == "download: 10 in, 3 kept; dropped 3 blocked_address, 3 http_4xx, 1 timeout"
