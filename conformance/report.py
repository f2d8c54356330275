"""Reports of a conformance run: JSON (everything measured), JUnit XML (one testcase per sample, for
CI), and an HTML matrix a person reads at a glance: one table per backend x device, op rows x dtype
columns, each cell coloured by its worst status with counts, the worst error in its hover title."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from html import escape
from pathlib import Path

from .result import CaseResult, Report

COLOURS = {"failed": "#f4a6a6", "inconclusive": "#c9a6f4", "xfail": "#f7d98b", "passed": "#a8dba8",
           "declined": "#d9d9d9", "none": "#ffffff"}
WORST_FIRST = ("failed", "inconclusive", "xfail", "passed", "declined")


def write_json(report: Report, path: str | Path):
    Path(path).write_text(json.dumps(report.to_dict(), indent=1, default=finite) + "\n")


def finite(value):
    return str(value)


def write_junit(report: Report, path: str | Path):
    suites = ET.Element("testsuites", name="portable_moe conformance", time=f"{report.seconds:.3f}")
    for t in report.targets:
        cases = report.of(t.backend, t.device)
        suite = ET.SubElement(suites, "testsuite", name=f"{t.backend}.{t.device}", tests=str(max(len(cases), 1)),
                              failures=str(sum(r.status == "failed" for r in cases)),
                              errors=str(sum(r.status == "inconclusive" for r in cases)),
                              skipped=str(sum(r.status in ("declined", "xfail") for r in cases) + (not t.ran)))
        if not t.ran:
            tc = ET.SubElement(suite, "testcase", classname=f"{t.backend}.{t.device}", name="availability")
            ET.SubElement(tc, "skipped", message=t.verdict)
            continue
        for r in cases:
            junit_case(suite, r)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def junit_case(suite: ET.Element, r: CaseResult):
    tc = ET.SubElement(suite, "testcase", classname=f"{r.backend}.{r.device}.{r.dtype}.{r.op}", name=r.case,
                       time=f"{r.seconds:.3f}")
    ET.SubElement(ET.SubElement(tc, "properties"), "property", name="compared", value=str(r.compared))
    if r.status == "failed":
        f = ET.SubElement(tc, "failure", message="; ".join(f"[{c}] {m}" for c, m in r.failures)[:500],
                          type=",".join(r.checks))
        f.text = "\n".join(f"[{c}] {m}" for c, m in r.failures) + f"\nseed={r.seed}\nreproduce: {r.reproduce}"
    elif r.status == "inconclusive":
        e = ET.SubElement(tc, "error", message=f"inconclusive: {r.reason}"[:500], type="inconclusive")
        e.text = f"{r.reason}\nreproduce: {r.reproduce}"
    elif r.status in ("declined", "xfail"):
        ET.SubElement(tc, "skipped", message=f"{r.status}: {r.reason}")



def worst(results: list[CaseResult]) -> tuple[float, str]:
    best, where = 0.0, ""
    for r in results:
        for name, e in r.errors.items():
            ratio = e.get("worst_ratio", 0.0)
            if ratio > best or (math.isinf(ratio) and not math.isinf(best)):
                best, where = ratio, f"{r.case} {name}"
    return best, where


def cell(results: list[CaseResult]) -> str:
    if not results:
        return f'<td style="background:{COLOURS["none"]}" title="not run">&middot;</td>'
    counts = {s: sum(r.status == s for r in results) for s in COLOURS}
    status = next((s for s in WORST_FIRST if counts[s]), "none")
    ratio, where = worst(results)
    ran = [r for r in results if r.status != "declined"]
    least = min(ran, key=lambda r: r.compared) if ran else None
    title = [f"{counts['passed']} passed, {counts['failed']} failed, {counts['inconclusive']} inconclusive, "
             f"{counts['xfail']} known, {counts['declined']} declined", f"worst error {ratio:.3g}x the bound ({where})"]
    title += [f"output elements compared: {sum(r.compared for r in ran):,} in all, fewest {least.compared:,} "
              f"({least.case})"] if least else []
    title += [f"{r.case}: [{c}] {m[:160]}" for r in results if r.status == "failed" for c, m in r.failures[:1]][:6]
    title += [f"{r.case}: inconclusive, {r.reason[:200]}" for r in results if r.status == "inconclusive"][:4]
    title += [f"{r.status}: {r.reason[:160]}" for r in results if r.status in ("declined", "xfail")][:2]
    title += sorted({n for r in results for n in r.notes if n.startswith("ran on")})[:2]
    excluded = sum(r.excluded_tokens for r in results)
    title += [f"{excluded} token(s) excluded as router near-ties (see conformance/routing.py)"] if excluded else []
    if status == "declined":
        text = "declined"
    else:
        text = f"{counts['passed']}/{len(results) - counts['declined']}"
        text += f" <b>{counts['failed']} fail</b>" if counts["failed"] else ""
        text += f" <b>{counts['inconclusive']} inconclusive</b>" if counts["inconclusive"] else ""
        text += f" ({counts['xfail']} known)" if counts["xfail"] else ""
    return f'<td style="background:{COLOURS[status]}" title="{escape(chr(10).join(title))}">{text}</td>'


def case_table(report: Report) -> str:
    """Every case with its status and how many elements it compared, folded away under the matrix."""
    head = ("backend", "device", "dtype", "case", "status", "outputs compared", "gradients compared",
            "excluded tokens", "draws")
    rows = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in (
        r.backend, r.device, r.dtype, f"{r.op}/{r.case}", r.status, f"{r.compared:,}", f"{r.compared_grads:,}",
        r.excluded_tokens, r.draws)) + "</tr>" for r in report.results)
    return ("<details><summary>every case: status, elements compared, tokens excluded, draws</summary>"
            f"<table class=cases><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{rows}</table></details>")


def target_table(report: Report, backend: str, device: str) -> str:
    results = report.of(backend, device)
    ops = list(dict.fromkeys(r.op for r in results))
    head = "".join(f"<th>{escape(d)}</th>" for d in report.dtypes)
    rows = []
    for op in ops:
        cells = "".join(cell([r for r in results if r.op == op and r.dtype == d]) for d in report.dtypes)
        rows.append(f"<tr><th class=op>{escape(op)}</th>{cells}</tr>")
    return f"<table><tr><th>op \\ dtype</th>{head}</tr>{''.join(rows)}</table>"


def write_html(report: Report, path: str | Path):
    parts = [f"<h1>portable_moe conformance: {'PASSED' if report.passed else 'FAILED'}</h1>",
             f"<p>tier {report.tier}, {len(report.results)} case(s), {report.seconds:.1f} s; "
             "cells: passed/run; hover a cell for the worst error and the failures. "
             + " ".join(f'<span style="background:{c};padding:0 6px">{s}</span>' for s, c in COLOURS.items()
                        if s != "none") + "</p>"]
    for t in report.targets:
        info = t.device_info
        label = f"{escape(t.backend)} on {escape(t.device)}"
        if info:
            label += f" &mdash; {escape(str(info.get('vendor')))} {escape(str(info.get('name')))} " \
                     f"({escape(str(info.get('arch')))}, {escape(str(info.get('driver')))})"
        if not t.ran:
            parts.append(f"<h2>{label}</h2><p class=na>{escape(t.verdict)}</p>")
            continue
        parts.append(f"<h2>{label}</h2><p>scale: {escape(t.scale)}</p>{target_table(report, t.backend, t.device)}")
        if t.stale_known_failures:
            parts.append(f"<p>stale known-failure entries (matched nothing): {escape(str(t.stale_known_failures))}</p>")
    failures = "".join(f"<li><code>{escape(r.backend)} {escape(r.device)} {escape(r.dtype)} {escape(r.op)}/"
                       f"{escape(r.case)}</code>: {escape('; '.join(f'[{c}] {m}' for c, m in r.failures))}<br>"
                       f"<code>{escape(r.reproduce)}</code></li>" for r in report.failures()[:200])
    if failures:
        parts.append(f"<h2>Failures</h2><ul>{failures}</ul>")
    unsure = "".join(f"<li><code>{escape(r.backend)} {escape(r.device)} {escape(r.dtype)} {escape(r.op)}/"
                     f"{escape(r.case)}</code>: {escape(r.reason)}<br><code>{escape(r.reproduce)}</code></li>"
                     for r in report.inconclusive()[:200])
    if unsure:
        parts.append(f"<h2>Inconclusive (compared nothing: not a pass)</h2><ul>{unsure}</ul>")
    parts.append(case_table(report))
    style = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;margin-bottom:1em} "
             "td,th{border:1px solid #999;padding:3px 10px;text-align:center} th.op{text-align:left} "
             ".na{color:#777;font-style:italic}")
    Path(path).write_text(f"<!doctype html><html><head><meta charset=utf-8><title>portable_moe conformance</title>"
                          f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
