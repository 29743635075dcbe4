"""Calibrate the keyed detector's p-values on thousands of unmarked windows.

For one hypothesis and shift the detector's score is standard normal on unmarked audio (the
key's signs are independent of it). The detector reports the best of many shifts and stretch
hypotheses, so its null is the maximum of many *correlated* normals: P(max ≥ z) ≈ M·Φ̄(z) with
an effective number of tests M far below the grid size. This script measures M for both
stages (the untouched grid, and the full stretch search) on real unmarked speech, music,
sound effects and noise under random keys, keeps the most conservative ratio seen in the
tail, adds a safety factor, and writes ``watermark/keyed_calibration.json``, which
``watermark.keyed`` reads. A second, disjoint set of windows (another seed) then checks that
p < α happens at most about α of the time.

    python scripts/calibrate_keyed.py [--windows 3000] [--check 1000] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import ndtr

from benchmarks.corpus import build_clips, unmarked_windows
from watermark import keyed_dsp as dsp
from watermark.keyed import KeyedBackend

OUT = Path(__file__).resolve().parent.parent / "watermark" / "keyed_calibration.json"
SAFETY = 2.0  # M is multiplied by this, so the p-values stay conservative
LENGTHS = (3.0, 8.0)


def _scores(job: tuple[torch.Tensor, int, int]) -> tuple[float, float]:
    """(quick, full) maximum scores of one unmarked window under a fresh random key."""
    torch.set_num_threads(1)
    audio, rate, seed = job
    return KeyedBackend(np.random.default_rng(seed).bytes(32)).null_scores(audio, rate)


def _windows(clips, count: int, seed: int):
    for i, seconds in enumerate(LENGTHS):
        for j, (audio, rate) in enumerate(
            unmarked_windows(clips, seconds, count // len(LENGTHS), seed + i)
        ):
            yield audio, rate, seed * 1_000_003 + i * 100_000 + j


def _effective_tests(scores: np.ndarray, min_exceed: int = 10) -> tuple[float, list[dict]]:
    """Largest ratio of empirical exceedance to Φ̄(z) over the tail where it is measurable."""
    ordered = np.sort(scores)[::-1]
    table = []
    worst = 1.0
    for k in range(min_exceed, len(ordered) // 5):
        z = float(ordered[k - 1])
        empirical = k / len(ordered)
        ratio = empirical / float(ndtr(-z))
        worst = max(worst, ratio)
        if k in (min_exceed, 20, 50, 100, 200, len(ordered) // 10):
            table.append({"z": round(z, 3), "exceedance": empirical, "ratio": round(ratio, 1)})
    return worst, table


def _p(z: float, tests: float) -> float:
    return min(1.0, tests * float(ndtr(-z)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=3000)
    parser.add_argument("--check", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=Path(".cache/corpus"))
    args = parser.parse_args()
    began = time.time()
    clips = build_clips(args.corpus)
    with multiprocessing.Pool(args.workers) as pool:
        fit = np.array(pool.map(_scores, _windows(clips, args.windows, seed=1), chunksize=8))
        check = np.array(pool.map(_scores, _windows(clips, args.check, seed=2), chunksize=8))
    m_quick, table_quick = _effective_tests(fit[:, 0])
    m_full, table_full = _effective_tests(fit[:, 1])
    m_quick, m_full = SAFETY * m_quick, SAFETY * m_full
    held_out = {}
    for alpha in (0.1, 0.01, 0.001):
        p_quick = np.array([2 * _p(z, m_quick) for z in check[:, 0]])
        p_full = np.array([2 * _p(z, m_full) for z in check[:, 1]])
        reported = np.minimum(p_quick, p_full)
        held_out[str(alpha)] = float(np.mean(reported < alpha))
    result = {
        "what": "effective number of tests M for P(max score >= z) = M * normal_tail(z)",
        "quick_tests": round(m_quick, 1),
        "search_tests": round(m_full, 1),
        "safety_factor": SAFETY,
        "params": repr(dsp.KeyedParams()),
        "fit_windows": len(fit),
        "check_windows": len(check),
        "window_seconds": list(LENGTHS),
        "sources": sorted({f"{c.kind}:{c.source}" for c in clips}) + ["white noise", "pink noise"],
        "fit_tail_quick": table_quick,
        "fit_tail_search": table_full,
        "max_score_seen": {"quick": float(fit[:, 0].max()), "search": float(fit[:, 1].max())},
        "held_out_fraction_below_alpha": held_out,
        "union_bound_tests": {
            "quick": dsp.KeyedParams().slots,
            "search": dsp.KeyedParams().slots * len(dsp.hypotheses(dsp.KeyedParams())),
        },
        "seconds": round(time.time() - began),
        "machine": platform.processor() or platform.machine(),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("quick_tests", "search_tests")}))
    print("held-out fraction with p < alpha:", held_out)
    if any(held_out[a] > 2 * float(a) + 3 / len(check) for a in held_out):
        raise SystemExit("p-values are not conservative on held-out windows")
    assert math.isfinite(m_full)


if __name__ == "__main__":
    main()
