"""A damaged detector head file is refused when it loads, in one sentence that names the file
and what is wrong, before any audio is read; a head that loads gives only scores in 0..1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detectors import DetectorError, load_detector
from detectors.detector import SHIPPED_HEAD
from detectors.head import LogisticHead

SHIPPED = json.loads(SHIPPED_HEAD.read_text())


def damaged(tmp_path: Path, **changes) -> Path:
    data = {**SHIPPED, **changes}
    for key in [k for k, v in changes.items() if v is None]:
        del data[key]
    path = tmp_path / "h.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"pooling": "weird"}, "unknown pooling 'weird' (one of mean, cls, mean+cls)"),
        ({"scale": [0] * 768}, '"scale" must not be 0'),
        ({"scale": [1.0] * 767 + [0.0]}, '"scale" must not be 0'),
        ({"mean": [float("nan")] * 768}, '"mean" holds a number that is not finite'),
        ({"coef": [1e400] * 768}, '"coef" holds a number that is not finite'),
        ({"coef": [0.1] * 700}, "must have one length, got mean 768, scale 768, coef 700"),
        ({"coef": [[0.1] * 768]}, '"coef" must be a non-empty list of numbers'),
        ({"coef": ["x"] * 768}, '"coef" must be a non-empty list of numbers'),
        ({"layers": [-1, 2, 3, 4]}, '"layers" must be 0 (the patch embedding) or more'),
        ({"layers": []}, '"layers" must be a non-empty list of layer numbers'),
        ({"layers": [1.5]}, '"layers" must be a non-empty list of layer numbers'),
        ({"layers": [1, 2, 3, 4, 5]}, "768 weights cannot be 5 layer(s) of mean pooling"),
        ({"intercept": "x"}, '"intercept" must be a finite number'),
        ({"intercept": float("inf")}, '"intercept" must be a finite number'),
        ({"calibration": [1.0]}, '"calibration" must be [slope, offset]'),
        ({"calibration": [1.0, None]}, '"calibration" must be a finite number'),
        ({"backbone": 3}, '"backbone" must be the name of a backbone'),
        ({"intercept": None}, "missing 'intercept'"),
        ({"card": []}, '"card" must be a mapping'),
    ],
)
def test_a_damaged_head_is_one_sentence_naming_the_file(tmp_path, changes, problem):
    path = damaged(tmp_path, **changes)
    with pytest.raises(DetectorError) as err:
        LogisticHead.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: damaged detector head: ")
    assert problem in message
    assert "\n" not in message and "Error(" not in message


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"layers": [99]},
            "layers [99] go beyond backbone 'compact-ast-2', whose layers are "
            "0 (the patch embedding) to 4",
        ),
        (
            {"pooling": "mean+cls"},
            "the head reads 768 numbers per window, but 4 layer(s) of mean+cls pooling "
            "from backbone 'compact-ast-2' give 1536",
        ),
        (
            {"backbone": "other-ast"},
            "the head was fitted on backbone 'other-ast', not 'compact-ast-2'",
        ),
    ],
)
def test_a_head_that_does_not_fit_its_backbone_is_refused_when_loaded(tmp_path, changes, problem):
    path = damaged(tmp_path, **changes)
    with pytest.raises(DetectorError) as err:
        load_detector(head=path)
    assert str(err.value) == f"{path}: {problem}"


def test_the_shipped_head_loads_and_fits_its_backbone():
    detector = load_detector()
    assert detector.head.source == str(SHIPPED_HEAD)
    assert detector.head.layers == SHIPPED["layers"]


def test_the_cli_blames_the_head_not_the_audio(tmp_path):
    head = damaged(tmp_path, pooling="weird")
    audio = tmp_path / "never-read.wav"  # does not exist: the head must fail first
    out = subprocess.run(
        [sys.executable, "-c", "from guard.cli import main; main()"]
        + ["detect", str(audio), "--head", str(head), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr == (
        f"error: {head}: damaged detector head: unknown pooling 'weird' "
        "(one of mean, cls, mean+cls)\n"
    )


def test_extreme_logits_still_give_probabilities_in_0_1():
    from detectors.detector import _sigmoid

    logits = np.array([-np.inf, -1e6, -800.0, 0.0, 800.0, 1e6, np.inf])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = _sigmoid(logits)
        middle = float(_sigmoid(np.float64(-1e6)))
    assert np.all((p >= 0) & (p <= 1)) and p[3] == 0.5
    assert middle == 0.0
