from __future__ import annotations

from typing import Any

import pytest

from fabric.sinks.clickhouse import Unavailable, insert_isolating


class FakeTable:
    """Refuses rows whose first cell is 'BAD'; can be made unavailable."""

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self.up = True
        self.attempts = 0

    def insert(self, rows: list[list[Any]]) -> None:
        self.attempts += 1
        if not self.up:
            raise ConnectionError("engine away")
        if any(r[0] == "BAD" for r in rows):
            raise ValueError("Cannot parse input")
        self.rows += rows

    def answers(self) -> bool:
        return self.up


def test_refused_rows_are_isolated_and_the_rest_land() -> None:
    t = FakeTable()
    rows = [["ok", i] for i in range(13)]
    rows[4] = ["BAD", 4]
    rows[11] = ["BAD", 11]
    refused = insert_isolating(t.insert, t.answers, rows)
    assert [r for r, _ in refused] == [["BAD", 4], ["BAD", 11]]
    assert "Cannot parse input" in refused[0][1]
    assert sorted(r[1] for r in t.rows) == [i for i in range(13) if i not in (4, 11)]


def test_an_unavailable_engine_is_not_mistaken_for_bad_rows() -> None:
    t = FakeTable()
    t.up = False
    with pytest.raises(Unavailable, match="engine away"):
        insert_isolating(t.insert, t.answers, [["ok", 1], ["ok", 2]])
    assert t.attempts == 1 and not t.rows
    t.up = True
    assert insert_isolating(t.insert, t.answers, [["ok", 1], ["ok", 2]]) == []
    assert len(t.rows) == 2
