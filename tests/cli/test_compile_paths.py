"""A refused target creates nothing: its name never becomes a folder before it is known."""

from __future__ import annotations

import pytest

from portable_moe.cli.main import main


@pytest.mark.parametrize("argv", [["--backend", "tvm", "--target", "cpu/../../X"],
                                  ["--backend", "triton", "--target", "cuda:sm_90/../../../X"],
                                  ["--backend", "null", "--target", "../X"]])
def test_a_refused_target_creates_nothing(tmp_path, capsys, argv):
    out = tmp_path / "a" / "b" / "out"
    code = main(["compile", "debug", *argv, "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown target" in err and err.count("\n") == 1
    assert list(tmp_path.rglob("*")) == []
