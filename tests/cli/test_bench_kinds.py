"""`portable-moe bench balance` and `portable-moe bench train`: the first word picks the benchmark, each
prints its table and writes it as a Markdown section, and bad input is one line with exit status 2."""

import re

import pytest

from portable_moe.cli.main import main
from portable_moe.models import PRESETS


def one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def rows(text: str, first: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first}")]


def test_no_preset_is_named_like_a_kind():
    assert not {"balance", "train"} & set(PRESETS)


@pytest.mark.slow      # ~20 s: plans up to 64 devices, best of 5
def test_balance_plan_times_table_and_markdown(tmp_path, capsys):
    md = tmp_path / "balance.md"
    assert main(["bench", "balance", "--only", "time", "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    clusters = ["16xH100", "8xH100+8xMI300X", "16xH100+16xMI300X", "32xH100+32xMI300X"]
    table = [r for r in rows(out, "") if r[0] in clusters]
    assert [r[0] for r in table] == clusters
    assert all(float(ms) > 0 for r in table for ms in r[1:])
    text = md.read_text()
    assert text.startswith("## Expert load balancer: ours beside EPLB\n")
    assert f"Regenerate: `portable-moe bench balance --only time --markdown {md}`" in text
    assert "- versions: Python 3." in text and "numpy" in text and "### Plan time, best of 5" in text
    assert all("| " + " | ".join(r) + " |" in text for r in table)


def test_balance_old_out_option_still_writes_the_tables(tmp_path, capsys):
    assert main(["bench", "balance", "--only", "drift", "--steps", "1", "--out", str(tmp_path / "d.md")]) == 0
    drift = rows(capsys.readouterr().out, "16xH100")
    assert len(drift) == 1 and re.fullmatch(r"\d+\.\d\d GB \(\d\.\d{4}\)", drift[0][1])
    text = (tmp_path / "d.md").read_text()
    assert "### Loads drifting, 1 re-plans" in text and "Regenerate: `portable-moe bench balance --only drift" in text


@pytest.mark.slow      # ~20 s: the step-time model on 24 cluster x placement cases per model
def test_train_projection_table_and_markdown(tmp_path, capsys):
    md = tmp_path / "p.md"
    assert main(["bench", "train", "--project", "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    mixtral = rows(out, "Mixtral-8x7B")
    assert {r[3] for r in mixtral} == {"even", "speed-proportional (compute only)", "EPLB-like", "island-aware"}
    effs = [int(p.strip().rstrip("%")) for r in mixtral if len(r) > 7 for p in r[7].split("/")]
    assert effs and all(0 < e <= 100 for e in effs)
    text = md.read_text()
    assert text.startswith("## Step-time model projections to GPU clusters\n") and mixtral[0][1] in text


@pytest.mark.slow
def test_train_efficiency_real_runs(tmp_path, capsys):
    """Two ranks (speeds 1 and 0.25) on the CPU, tiny model: even vs balanced placement, both measured."""
    assert main(["bench", "train", "--steps", "3", "--per-rank-batch", "2", "--seq", "8", "--hidden", "32",
                 "--expert-ffn", "64", "--markdown", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr().out
    bound = float(re.search(r"\(sum (\d+)\)", out).group(1))
    for placement in ("even", "balanced"):
        (row,) = rows(out, placement)
        tps, eff = float(row[1]), float(row[2].rstrip("%"))
        assert tps > 0 and eff == pytest.approx(100 * tps / bound, abs=0.2)
    assert "Heterogeneous expert-parallel training" in (tmp_path / "t.md").read_text()


@pytest.mark.parametrize("argv, says", [
    (["bench", "balance", "--steps", "0"], "--steps 0 must be at least 1"),
    (["bench", "train", "--speeds", "1,x"], "--speeds '1,x' must be positive numbers"),
    (["bench", "train", "--islands", "--pairs", "-1"], "--pairs -1 must be 0 or more"),
    (["bench", "train", "--islands", "--project"], "--islands or --project, not both"),
    (["bench", "train", "--islands", "--load", "/nonexistent/m.json"], "--load /nonexistent/m.json"),
    (["bench", "--repeat", "0"], "--repeat 0 must be at least 1"),
    (["bench", "debug", "--device", "cuda:0"], "no device 'cuda:0'"),
])
def test_bad_input_is_one_line(argv, says, capsys):
    assert says in one_line_error(argv, capsys)


def test_saved_measurements_that_are_not_a_list_of_runs(tmp_path, capsys):
    bad = tmp_path / "m.json"
    bad.write_text('{"step_s": 1}')
    assert "not a list of runs written by --save" in one_line_error(
        ["bench", "train", "--islands", "--load", str(bad)], capsys)


def test_each_kind_has_its_help(capsys):
    for argv, words in ((["bench", "--help"], ["--layer-shape", "bench balance --help"]),
                        (["bench", "balance", "--help"], ["--only", "--markdown"]),
                        (["bench", "train", "--help"], ["--islands", "--project", "--speeds"])):
        with pytest.raises(SystemExit) as e:
            main(argv)
        out = capsys.readouterr().out
        assert e.value.code == 0 and all(w in out for w in words), argv
