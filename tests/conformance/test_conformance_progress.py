"""Progress: plain lines, one per backend x device x dtype, when stderr is not a terminal; one redrawn
line on a terminal; an ETA weighted by what each case is expected to cost."""

import io

from portable_moe.conformance.progress import Progress, expected_cost
from portable_moe.conformance.runner import run_suite


def test_plain_lines_per_group_when_stderr_is_not_a_terminal(capsys):
    report = run_suite("reference", "cpu", ["float32", "float16"], ops=["swiglu"], progress=True, record=False)
    assert report.passed
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("reference cpu float32: ") and "passed" in lines[0] and "ETA" in lines[0]
    assert lines[1].startswith("reference cpu float16: ")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_one_redrawn_line_on_a_terminal():
    stream = Terminal()
    p = Progress(total_cost=3.0, total_cases=2, stream=stream)
    p.step(1.0, "reference cpu float32 swiglu")
    p.step(2.0, "reference cpu float32 swiglu")
    p.group_done("reference cpu float32", "passed 2")
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1


def test_eta_is_weighted_by_expected_cost():
    assert expected_cost("triton", "cpu", "model") > 100 * expected_cost("reference", "cpu", "op")
    p = Progress(total_cost=100.0, total_cases=2, enabled=False)
    p.start -= 10                 # 10 s spent on the first 1% of the expected cost: 990 s to go
    p.step(1.0, "x")
    minutes, seconds = p.eta().split(":")
    assert 16 <= int(minutes) <= 17
