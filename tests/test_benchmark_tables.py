"""The robustness table's pass column: a row passes on what the issue asks of it."""

from __future__ import annotations

from benchmarks.watermark_robustness import ROWS, ClipOutcome, EditOutcome, edit_rows


def _results(exact: bool | None) -> list[ClipOutcome]:
    outcome = EditOutcome(True, exact, 1.0, False, 0.5)
    edits = {name: outcome for name in ROWS}
    return [
        ClipOutcome(f"{i}.flac", "speech", 5.5, 30.0, 4.0, 5.0, True, None, edits) for i in range(3)
    ]


def _row(lines: list[str], name: str) -> list[str]:
    return next(line for line in lines if line.startswith(f"| {name} |")).split(" | ")


def test_a_crop_too_short_for_the_payload_target_passes_on_detection():
    row = _row(edit_rows(_results(None), has_payload=True), "crop_3s")
    assert row[6] == "n/a" and row[-1] == "yes |"


def test_a_wrong_payload_fails_the_row():
    row = _row(edit_rows(_results(False), has_payload=True), "mp3_64k")
    assert row[-1] == "**no** |"
