"""The backend-agnostic tuning race and tuned-config table."""

from __future__ import annotations

import json
import time

from portable_moe.backends.tuned import TunedTable, race


def test_race_picks_the_fastest_and_stops_building_when_half_the_budget_is_spent(capsys):
    built = []

    def build(delay):
        built.append(delay)
        time.sleep(0.05)                     # each build costs 50 ms of a 150 ms budget
        return lambda: time.sleep(delay)

    winner, rate = race("x: tuning thing", [0.004, 0.001, 0.003, 0.002], build, 0.15, lambda s: 1 / s, "runs/s")
    assert built == [0.004, 0.001] and winner == 0.001 and 0 < rate <= 1000
    err = capsys.readouterr().err
    assert "x: tuning thing: compiled 2/4 candidates" in err and "0.001 wins" in err and "0.004 " in err


def test_table_round_trips_and_damaged_files_read_as_empty(tmp_path, capsys):
    path = tmp_path / "t" / "tuned.json"
    table = TunedTable(path, "fmt", 2)
    assert table.entries == {}
    table.put("a", {"tile": 1})
    TunedTable(path, "fmt", 2).put("b", {"tile": 2})       # a second writer's entry is kept
    table.put("c", {"tile": 3})
    assert json.loads(path.read_text()) == {"format": "fmt", "version": 2, "entries": {"a": {"tile": 1},
                                                                                      "b": {"tile": 2},
                                                                                      "c": {"tile": 3}}}
    path.write_text("{not json")
    assert TunedTable(path, "fmt", 2).entries == {} and "ignored" in capsys.readouterr().err
    path.write_text('{"entries": [1]}')
    table = TunedTable(path, "fmt", 2)
    assert table.entries == {}
    table.put("d", {"tile": 4})                            # rewritten whole
    assert TunedTable(path, "fmt", 2).entries == {"d": {"tile": 4}}


def test_a_table_that_cannot_be_written_serves_this_process(tmp_path, capsys):
    (tmp_path / "file").write_text("a file where the cache folder should be")
    for path in (tmp_path / "file" / "tuned.json", None):
        table = TunedTable(path, "fmt", 2)
        table.put("a", {"tile": 1})
        assert table.entries == {"a": {"tile": 1}}
    assert capsys.readouterr().err.count("not saved") == 1
