"""The demo's balancer section: plans that fit memory, beside EPLB at the same memory."""

import re

from portable_moe.cli.demo_sections import balance


def test_demo_balance_section_fits_memory(tmp_path, capsys):
    balance(None, None, "cpu", tmp_path)
    out = capsys.readouterr().out
    budget, used, eplb = map(int, re.search(r"for both: (\d+) MiB \(ours places (\d+) MiB of copies; EPLB's equal "
                                            r"slots per GPU fit (\d+) MiB\)", out).groups())
    assert used <= budget and eplb <= budget
    assert "the same memory budget for both" in out and "with communication" in out
    moved = int(re.search(r"moved (\d+) MiB", out).group(1))
    assert 0 < moved <= 8
    assert (tmp_path / "placement.png").read_bytes()[:4] == b"\x89PNG"
