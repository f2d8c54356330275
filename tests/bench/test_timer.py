"""The benchmarks' one timer: times what it calls, warms up once, and interleaves side-by-side variants."""

import time

from portable_moe.timing import side_by_side_ms, time_ms


def test_time_ms_measures_each_call_after_one_warm_up():
    calls = []
    times = time_ms(lambda: (calls.append(1), time.sleep(0.01)), repeat=3)
    assert len(calls) == 4 and len(times) == 3
    assert all(9.0 <= t < 1000 for t in times)


def test_side_by_side_interleaves_the_variants():
    order = []
    times = side_by_side_ms({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeat=3)
    assert order == ["a", "b"] + ["a", "b"] * 3           # warm-ups, then one call of each per round
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
