"""The auditor's report: one self-contained HTML file that can be mailed, archived or printed.

Everything is drawn here in Python as inline SVG and inline CSS: no script, no font, no image
and no stylesheet is fetched, so the file renders the same offline in ten years, and a
Content-Security-Policy forbids the browser from running or loading anything even if a value
slipped through unescaped. File names, messages and payloads come from users and are hostile;
every one of them passes through :func:`_e` (HTML escaping, quotes included) before it reaches
the page, in text and in attributes alike.

The same scan results also give a plain summary (:func:`summarize`), which ``--json`` prints
and the report's header shows, so the numbers on the page and in a pipeline always agree.
"""

from __future__ import annotations

import datetime
import html
import os
import secrets
import shlex
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from guard.audio import printable_name
from policies import ACTIONS

"""Policy actions from the mildest to the strictest."""

HISTOGRAM_BINS = 10

_ACTION_COLOURS = {
    "allow": "#2e7d32",
    "label": "#1565c0",
    "review": "#ef6c00",
    "block": "#c62828",
    "error": "#616161",
}
_MARK_COLOUR = "#6a1b9a"

# Timeline geometry (px): one lane per set of non-overlapping detector windows, then marks.
_TIMELINE_WIDTH = 320
_LANE_HEIGHT = 9
_LANE_GAP = 2


def summarize(
    results: Sequence[dict[str, Any]],
    versions: dict[str, Any],
    *,
    inputs: Sequence[str] = (),
    audit_log: str | None = None,
    head_hash: str | None = None,
    generated: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The numbers an auditor cites: counts by decision, score histogram, marks, versions.

    ``results`` are scan lines (a verdict's fields, or ``path`` and ``error``); ``versions``
    is ``Guard.versions()``, so the summary names the policy and model that decided.
    """
    screened = [r for r in results if "error" not in r]
    decisions = Counter(r["decision"] for r in screened)
    scores = [
        r["synthetic_probability"] for r in screened if r["synthetic_probability"] is not None
    ]
    marks = Counter(
        _mark_name(w) for r in screened for w in r.get("watermarks", ()) if w.get("detected")
    )
    generated = generated or datetime.datetime.now(datetime.UTC)
    return {
        "generated": generated.isoformat(timespec="seconds"),
        "inputs": [printable_name(i) for i in inputs],
        "files": len(results),
        "screened": len(screened),
        "errors": len(results) - len(screened),
        "decisions": {a: decisions.get(a, 0) for a in ACTIONS},
        "audio_seconds": round(sum(r.get("duration") or 0.0 for r in screened), 3),
        "synthetic_probability": {
            "scored": len(scores),
            "mean": round(sum(scores) / len(scores), 4) if scores else None,
            "histogram": {"edges": _bin_edges(), "counts": _histogram(scores)},
        },
        "watermarks": {
            "files_marked": sum(
                any(w.get("detected") for w in r.get("watermarks", ())) for r in screened
            ),
            "by_backend": dict(sorted(marks.items())),
        },
        "policy": versions.get("policy"),
        "model": versions.get("model"),
        "watermark_backends": list(versions.get("watermark_backends", [])),
        "audit_log": (
            {
                "path": printable_name(audit_log),
                "head_hash": head_hash,
                "verify_command": shell_command(
                    ["audioguard", "audit", "verify", os.fspath(audit_log), "--anchor", head_hash]
                )
                if head_hash
                else None,
            }
            if audit_log
            else None
        ),
    }


def shell_command(words: Sequence[str]) -> str:
    """``words`` as one line to paste into a shell, which runs exactly them.

    A file name with bytes that are not UTF-8 cannot be shown as it is; the escaped name the
    rest of the report shows (``a\\xff``) would name another file in a shell, so such a word
    is written in bash's ``$'a\\xff'`` quoting, which gives the byte back.
    """
    return " ".join(_shell_word(word) for word in words)


def _shell_word(word: str) -> str:
    if printable_name(word) == word:
        return shlex.quote(word)
    kept = (
        chr(byte) if 0x20 <= byte < 0x7F and chr(byte) not in "'\\" else f"\\x{byte:02x}"
        for byte in os.fsencode(word)
    )
    return "$'" + "".join(kept) + "'"


def render_report(results: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The whole page as one string; ``results`` in the order the table should list them."""
    policy = summary.get("policy") or {}
    audit = summary.get("audit_log")
    facts = [
        ("Generated", summary["generated"]),
        ("Inputs", ", ".join(summary["inputs"]) or "(none named)"),
        ("Policy", f"{policy.get('name', '?')} version {policy.get('version', '?')}"),
        ("Detector model", summary["model"] or "not used (no synthetic-voice scores)"),
        ("Watermark checks", ", ".join(summary["watermark_backends"]) or "none"),
        ("Files", f"{summary['files']} ({summary['errors']} could not be screened)"),
        ("Audio", f"{summary['audio_seconds']:.1f} s"),
    ]
    if audit:
        facts.append(("Audit log", audit["path"]))
        facts.append(("Audit log head hash", audit["head_hash"] or "(empty log)"))
        if audit["verify_command"]:
            facts.append(("Check the log later with", audit["verify_command"]))
    else:
        facts.append(("Audit log", "none (decisions were not logged)"))
    rows = "\n".join(_file_row(i, r) for i, r in enumerate(results, 1))
    return _PAGE.format(
        style=_STYLE,
        facts="\n".join(
            f'<tr><th scope="row">{_e(k)}</th><td class="mono">{_e(v)}</td></tr>' for k, v in facts
        ),
        counts=_counts_table(summary),
        histogram=_histogram_svg(summary["synthetic_probability"]),
        marks=_marks_list(summary["watermarks"]),
        legend=_legend_svg(),
        rows=rows,
    )


def report_path_problem(
    path: str | Path, protected: Iterable[tuple[str, str | Path]] = ()
) -> str | None:
    """Why no report can be written at ``path``, or None.

    Checked before the scan, so a mistyped folder costs a second rather than the whole scan.
    ``protected`` are ``(what, file)`` pairs the report must never replace: the inputs, key
    files, the audit log (which need not exist yet: the scan creates it). A path is the same
    file as another when both name one inode (a symlink or hard link included). Any other
    existing file is replaced only if it is a report this tool wrote (:func:`is_report`).
    """
    path = Path(path)
    shown = printable_name(path)
    if path.is_dir():
        return f"{shown}: is a folder; give the report a file name"
    folder = path.parent
    if not folder.is_dir():
        return (
            f"{shown}: cannot write the report there, "
            f"the folder {printable_name(folder)} does not exist"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        return (
            f"{shown}: cannot write the report there, "
            f"the folder {printable_name(folder)} is not writable"
        )
    target = _identity(path)
    for what, other in protected:
        if _identity(Path(other)) == target:
            return f"{shown}: is {what}; refusing to overwrite it with the report"
    if os.path.lexists(path) and not is_report(path):
        return (
            f"{shown}: already exists and is not an audioguard report; refusing to overwrite it "
            "(name a new file, or remove it first)"
        )
    return None


def is_report(path: str | Path) -> bool:
    """Whether ``path`` is a page that :func:`write_report` wrote: it begins with the head
    that every report begins with, byte for byte (a file that cannot be read is not one)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_REPORT_HEAD)) == _REPORT_HEAD
    except OSError:
        return False


def _identity(path: Path) -> tuple[object, ...]:
    """The file ``path`` names: its device and inode where it exists, else where it would be."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return ("path", os.path.realpath(path))
    return ("inode", st.st_dev, st.st_ino)


def write_report(path: str | Path, results: Sequence[dict[str, Any]], summary: dict) -> Path:
    """Write the page next to where it will live, then rename, so no half page is left behind.

    An existing file at ``path`` that is not a report is refused again here, right before the
    rename, in case one appeared while the scan ran.
    """
    path = Path(path)
    if os.path.lexists(path) and not is_report(path):
        raise OSError(
            f"{printable_name(path)}: already exists and is not an audioguard report; "
            "refusing to overwrite it"
        )
    page = render_report(results, summary)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        # Every value is escaped by _e; "backslashreplace" is only the last line of defence,
        # so a name nobody thought of cannot lose a finished scan's report.
        with open(tmp, "x", encoding="utf-8", errors="backslashreplace") as f:
            f.write(page)
        tmp.replace(path)
    except OSError as exc:  # name the report, not the temporary file beside it
        raise OSError(
            f"{printable_name(path)}: cannot write the report ({exc.strerror or exc})"
        ) from exc
    finally:
        with suppress(OSError):  # in a folder we may not write, this fails too; keep the above
            tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# Pieces of the page


def _e(value: object) -> str:
    """Escape anything for HTML text and quoted attributes alike; a byte of a file name that
    is not UTF-8 shows as ``\\xff``."""
    return html.escape(printable_name(str(value)), quote=True)


def _bin_edges() -> list[float]:
    return [round(i / HISTOGRAM_BINS, 2) for i in range(HISTOGRAM_BINS + 1)]


def _histogram(scores: Sequence[float]) -> list[int]:
    """Counts per bin of width 0.1; 1.0 falls into the last bin."""
    counts = [0] * HISTOGRAM_BINS
    for p in scores:
        counts[min(HISTOGRAM_BINS - 1, max(0, int(p * HISTOGRAM_BINS)))] += 1
    return counts


def probability_colour(p: float) -> str:
    """Green for 0 through amber to red for 1, so a glance finds the synthetic stretches."""
    return f"hsl({120 * (1 - min(1.0, max(0.0, p))):.0f}, 70%, 42%)"


def _mark_name(finding: dict[str, Any]) -> str:
    key = finding.get("key_id")
    return f"{finding['backend']}:{key}" if key else str(finding["backend"])


def _counts_table(summary: dict[str, Any]) -> str:
    cells = [(a, n) for a, n in summary["decisions"].items()]
    if summary["errors"]:
        cells.append(("error", summary["errors"]))
    rows = "\n".join(
        f'<tr class="count" data-decision="{_e(a)}"><th scope="row">'
        f'<span class="badge" style="background:{_ACTION_COLOURS.get(a, "#424242")}">{_e(a)}'
        f'</span></th><td class="num">{n}</td></tr>'
        for a, n in cells
    )
    return (
        '<table id="decision-counts"><caption>Files by decision</caption>'
        f"<thead><tr><th>decision</th><th>files</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _histogram_svg(scores: dict[str, Any]) -> str:
    counts: list[int] = scores["histogram"]["counts"]
    if not scores["scored"]:
        return (
            '<p class="note" id="histogram">No synthetic-voice scores: the detector was not '
            "used, or no file held sound loud enough to judge.</p>"
        )
    width, height, left, bottom, top = 460, 210, 36, 30, 16
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max(counts) or 1
    bar_w = plot_w / HISTOGRAM_BINS
    parts = [
        f'<svg id="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Histogram of synthetic probability over {scores["scored"]} files">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#555"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#555"/>',
    ]
    for i, n in enumerate(counts):
        h = plot_h * n / peak
        x = left + i * bar_w
        lo, hi = i / HISTOGRAM_BINS, (i + 1) / HISTOGRAM_BINS
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{probability_colour((lo + hi) / 2)}">'
            f"<title>{lo:.1f}–{hi:.1f}: {n} file(s)</title></rect>"
        )
        if n:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - h - 3:.1f}" '
                f'text-anchor="middle" font-size="11">{n}</text>'
            )
    for i in range(0, HISTOGRAM_BINS + 1, 2):
        x = left + i * bar_w
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
            f'font-size="11">{i / HISTOGRAM_BINS:.1f}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 2}" text-anchor="middle" '
        'font-size="11">synthetic probability (file level)</text>'
    )
    parts.append(
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="11">{peak}</text>'
    )
    parts.append(
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _marks_list(marks: dict[str, Any]) -> str:
    if not marks["by_backend"]:
        return '<p id="watermark-summary">No watermark was detected in any file.</p>'
    items = "".join(
        f"<li><strong>{_e(name)}</strong>: {n} file(s)</li>"
        for name, n in marks["by_backend"].items()
    )
    return (
        f'<div id="watermark-summary"><p>{marks["files_marked"]} file(s) carry a detected '
        f"watermark:</p><ul>{items}</ul></div>"
    )


def _legend_svg() -> str:
    stops = "".join(
        f'<stop offset="{p:.1f}" stop-color="{probability_colour(p)}"/>'
        for p in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="30" role="img" '
        'aria-label="Colour scale: synthetic probability from 0 (green) to 1 (red)">'
        f'<defs><linearGradient id="scale">{stops}</linearGradient></defs>'
        '<rect x="0" y="0" width="160" height="10" fill="url(#scale)"/>'
        '<text x="0" y="24" font-size="11">0</text>'
        '<text x="160" y="24" font-size="11" text-anchor="end">1</text>'
        f'<rect x="190" y="0" width="30" height="10" fill="{_MARK_COLOUR}"/>'
        '<text x="190" y="24" font-size="11">watermark</text></svg>'
    )


def _lanes(segments: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Spread overlapping detector windows over as few lanes as keep each lane disjoint."""
    lanes: list[list[dict[str, Any]]] = []
    for seg in sorted(segments, key=lambda s: (s["start"], s["end"])):
        for lane in lanes:
            if lane[-1]["end"] <= seg["start"] + 1e-9:
                lane.append(seg)
                break
        else:
            lanes.append([seg])
    return lanes


def _timeline_svg(result: dict[str, Any]) -> str:
    """The file drawn to scale: detector windows coloured by score, then detected marks."""
    duration = float(result.get("duration") or 0.0)
    if duration <= 0:
        return ""
    lanes = _lanes(result.get("segments") or [])
    marks = [
        (w, s)
        for w in result.get("watermarks", ())
        if w.get("detected")
        for s in (w.get("segments") or [{"start": 0.0, "end": duration}])
    ]
    n_lanes = max(1, len(lanes)) + (1 if marks else 0)
    height = n_lanes * (_LANE_HEIGHT + _LANE_GAP) + 12
    scale = _TIMELINE_WIDTH / duration

    def rect(y: float, start: float, end: float, fill: str, title: str, cls: str) -> str:
        x = max(0.0, start) * scale
        w = max(1.0, (min(end, duration) - max(0.0, start)) * scale)
        return (
            f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" '
            f'height="{_LANE_HEIGHT}" fill="{fill}"><title>{_e(title)}</title></rect>'
        )

    parts = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{_TIMELINE_WIDTH}" '
        f'height="{height}" viewBox="0 0 {_TIMELINE_WIDTH} {height}" role="img" '
        f'aria-label="Timeline of {duration:.1f} s">',
        f'<rect x="0" y="0" width="{_TIMELINE_WIDTH}" '
        f'height="{max(1, len(lanes)) * (_LANE_HEIGHT + _LANE_GAP) - _LANE_GAP}" fill="#e0e0e0"/>',
    ]
    for i, lane in enumerate(lanes):
        y = i * (_LANE_HEIGHT + _LANE_GAP)
        for seg in lane:
            p = float(seg["synthetic_probability"])
            parts.append(
                rect(
                    y,
                    seg["start"],
                    seg["end"],
                    probability_colour(p),
                    f"{seg['start']:.2f}–{seg['end']:.2f} s: synthetic probability {p:.2f}",
                    "segment",
                )
            )
    if marks:
        y = max(1, len(lanes)) * (_LANE_HEIGHT + _LANE_GAP)
        for finding, seg in marks:
            parts.append(
                rect(
                    y,
                    seg["start"],
                    seg["end"],
                    _MARK_COLOUR,
                    f"{_mark_name(finding)} mark {seg['start']:.2f}–{seg['end']:.2f} s",
                    "mark",
                )
            )
    parts.append(
        f'<text x="0" y="{height - 1}" font-size="9" fill="#555">0 s</text>'
        f'<text x="{_TIMELINE_WIDTH}" y="{height - 1}" font-size="9" fill="#555" '
        f'text-anchor="end">{duration:.1f} s</text></svg>'
    )
    return "".join(parts)


def _format_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 or p == 0 else f"{p:.1e}"


def _watermark_cell(result: dict[str, Any]) -> str:
    found, failed = [], []
    for w in result.get("watermarks", ()):
        name = _e(_mark_name(w))
        if w.get("error"):
            failed.append(f'<li class="muted">{name}: not checked ({_e(w["error"])})</li>')
        elif w.get("detected"):
            payload = w.get("payload")
            payload = f', payload <span class="mono">{_e(payload)}</span>' if payload else ""
            spans = ", ".join(
                f"{s['start']:.1f}–{s['end']:.1f} s" for s in (w.get("segments") or [])
            )
            found.append(
                f'<li class="found"><strong>{name}</strong> p={_e(_format_p(w.get("p_value")))}'
                f"{payload}{f' ({_e(spans)})' if spans else ''}</li>"
            )
    if not found and not failed:
        return '<span class="muted">none</span>'
    return f"<ul>{''.join(found + failed)}</ul>"


def _file_row(index: int, result: dict[str, Any]) -> str:
    path = _e(result["path"])
    if "error" in result:
        return (
            f'<tr class="file" data-decision="error"><td class="num">{index}</td>'
            f'<td class="path mono">{path}</td><td><span class="badge" '
            f'style="background:{_ACTION_COLOURS["error"]}">error</span></td>'
            f'<td colspan="4" class="error">{_e(result["error"])}</td></tr>'
        )
    decision = result["decision"]
    rules = ", ".join(result.get("matched_rules") or [])
    p = result.get("synthetic_probability")
    score = (
        f'<span style="color:{probability_colour(p)}">{p:.2f}</span>'
        if p is not None
        else '<span class="muted">n/a</span>'
    )
    sha = result.get("sha256") or ""
    message = result.get("message")
    return (
        f'<tr class="file" data-decision="{_e(decision)}"><td class="num">{index}</td>'
        f'<td class="path mono">{path}<div class="muted" title="{_e(sha)}">'
        f"sha256 {_e(sha[:16])}…</div></td>"
        f'<td><span class="badge" style="background:{_ACTION_COLOURS.get(decision, "#424242")}">'
        f"{_e(decision)}</span>"
        + (f'<div class="rule mono">{_e(rules)}</div>' if rules else "")
        + (f'<div class="message">{_e(message)}</div>' if message else "")
        + f'</td><td class="num">{score}</td>'
        f'<td class="num">{float(result.get("duration") or 0):.1f} s</td>'
        f"<td>{_timeline_svg(result)}</td><td>{_watermark_cell(result)}</td></tr>"
    )


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #212121; }
h1 { font-size: 22px; margin: 0 0 12px; } h2 { font-size: 17px; margin: 24px 0 8px; }
table { border-collapse: collapse; } th, td { padding: 4px 8px; vertical-align: top; }
#facts th { text-align: left; color: #555; font-weight: normal; }
#files { width: 100%; } #files thead th { text-align: left; border-bottom: 2px solid #999; }
#files tbody tr { border-bottom: 1px solid #ddd; }
.mono { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
.num { text-align: right; white-space: nowrap; } .muted { color: #777; font-size: 12px; }
.badge { color: #fff; border-radius: 3px; padding: 1px 6px; font-weight: 600; }
.rule { margin-top: 2px; } .message { font-size: 12px; max-width: 260px; }
.error { color: #b71c1c; } .summary { display: flex; gap: 40px; flex-wrap: wrap; }
ul { margin: 0; padding-left: 16px; } .note { color: #555; }
@media print { body { margin: 0; } tr { page-break-inside: avoid; } }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>audioguard audit report</title>
<style>{style}</style>
</head>
<body>
<h1>audioguard audit report</h1>
<table id="facts">
{facts}
</table>
<div class="summary">
<section><h2>Decisions</h2>{counts}</section>
<section><h2>Synthetic probability</h2>{histogram}</section>
<section><h2>Watermarks</h2>{marks}</section>
</div>
<h2>Files</h2>
<p class="muted">Timeline: detector windows coloured by synthetic probability (overlapping
windows on separate lanes), detected watermarks below them. {legend}</p>
<table id="files">
<thead><tr><th>#</th><th>file</th><th>decision</th><th>synthetic</th><th>length</th>
<th>timeline</th><th>watermarks</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""

# What every report begins with, byte for byte: how an earlier report is told from a file
# that --report must not replace.
_REPORT_HEAD = _PAGE[: _PAGE.index("<style>")].encode("utf-8")
