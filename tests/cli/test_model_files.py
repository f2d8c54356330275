"""MODEL files that are not what they seem: one error line, exit status 2."""

from __future__ import annotations

import pytest

from portable_moe.cli.main import main


@pytest.mark.parametrize("text", ["3", "[" * 100000, "{", '"format"'])
@pytest.mark.parametrize("argv", [["export", "{file}", "--dtype", "float16", "-o", "{out}"], ["ir", "print", "{file}"],
                                  ["compile", "{file}", "--target", "cpu", "-o", "{out}"]])
def test_junk_model_files_are_one_line(tmp_path, capsys, text, argv):
    file = tmp_path / "m.json"
    file.write_text(text)
    code = main([a.format(file=file, out=tmp_path / "out") for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
