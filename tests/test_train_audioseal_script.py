"""The script that trains the shipped small AudioSeal pair still trains, saves and fine-tunes."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import load_script

from watermark.backends import audioseal_backend as ab


def test_a_fine_tune_builds_the_shape_of_the_pair_it_loads():
    """A fresh pair is wider than the shipped one; ``--init`` must still load the shipped one."""
    script = load_script("train_audioseal_small")
    shipped = script.pair_arch(ab.SMALL_DIR)
    assert shipped != script.SMALL_ARCH
    gen_model, det_model = script.build_pair(ab.SMALL_DIR)
    pair = ab.resolve_weights(ab.SMALL_DIR)
    x = torch.randn(1, 1, ab.MODEL_RATE) * 0.1
    with torch.no_grad():
        assert torch.equal(det_model.detector(x), pair.detector.detector(x))
    assert sum(p.numel() for p in gen_model.parameters()) == sum(
        p.numel() for p in pair.generator.parameters()
    )


def test_a_few_steps_from_scratch_save_a_pair_the_backend_loads(tmp_path: Path):
    """``--steps 3`` trains exactly three steps (it used to run one more) and writes a pair
    of the fresh shape that the backend builds from the files alone."""
    script = load_script("train_audioseal_small")
    args = script.parse_args(["--steps", "3", "--batch", "2", "--log-every", "1"])
    audio = [torch.randn(2 * ab.MODEL_RATE) * 0.1 for _ in range(3)]
    gen_model, det_model = script.train(args, audio)
    assert args.steps_done == 3
    arch = script.pair_arch(None)
    ab.save_model(
        gen_model,
        "generator",
        script.small_config("generator", arch),
        tmp_path / "generator.safetensors",
        args.snr,
        normalized_input=True,
        mark_band_hz=args.mark_band_hz,
    )
    ab.save_model(
        det_model,
        "detector",
        script.small_config("detector", arch),
        tmp_path / "detector.safetensors",
        normalized_input=True,
    )
    assert script.pair_arch(tmp_path) == arch
    backend = ab.AudioSealBackend(weights=tmp_path)
    host = torch.randn(1, ab.MODEL_RATE) * 0.1
    mark = backend._watermark(host, ab.MODEL_RATE, torch.ones(16, dtype=torch.long))
    assert mark.shape == (1, ab.MODEL_RATE) and torch.isfinite(mark).all()
