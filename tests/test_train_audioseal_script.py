"""The script that trains the shipped small AudioSeal pair still trains, saves, fine-tunes and
re-measures: it is how that pair was made, so it must not rot while nobody runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import load_script

from benchmarks.corpus import Clip
from watermark.backends import audioseal_backend as ab

script = load_script("train_audioseal_small")


def _tiny_pair(out: Path, filters: int, dimension: int, steps: int = 2) -> dict:
    """A pair trained for ``steps`` steps on noise and saved as the script saves one."""
    args = script.parse_args(
        ["--steps", str(steps), "--batch", "2", "--filters", str(filters)]
        + ["--dimension", str(dimension), "--log-every", "1"]
    )
    arch = script.pair_arch(args)
    audio = [torch.randn(2 * ab.MODEL_RATE) * 0.1 for _ in range(3)]
    gen_model, det_model = script.train(args, audio, arch)
    assert args.steps_done == steps  # it used to train one step more than asked
    script.save_pair(out, gen_model, det_model, arch, args.snr, args.mark_band_hz)
    return arch


def test_a_few_steps_from_scratch_save_a_pair_the_backend_loads(tmp_path: Path):
    arch = _tiny_pair(tmp_path, script.SMALL_ARCH["n_filters"], script.SMALL_ARCH["dimension"])
    assert arch == script.SMALL_ARCH
    backend = ab.AudioSealBackend(weights=tmp_path)
    host = torch.randn(1, ab.MODEL_RATE) * 0.1
    mark = backend._watermark(host, ab.MODEL_RATE, torch.ones(16, dtype=torch.long))
    assert mark.shape == (1, ab.MODEL_RATE) and torch.isfinite(mark).all()


def test_a_fine_tune_builds_the_shape_of_the_pair_it_loads(tmp_path: Path):
    """``--init`` of a pair narrower than a fresh one loads it, weights and all."""
    narrow = _tiny_pair(tmp_path, script.SMALL_ARCH["n_filters"] // 2, 8)
    args = script.parse_args(["--init", str(tmp_path)])
    assert script.pair_arch(args) == narrow != script.SMALL_ARCH
    _, det_model = script.build_pair(args.init, script.pair_arch(args))
    saved = ab.resolve_weights(tmp_path).detector
    x = torch.randn(1, 1, ab.MODEL_RATE) * 0.1
    with torch.no_grad():
        assert torch.equal(det_model.detector(x), saved.detector(x))


@pytest.mark.parametrize(
    "argv", [["--filters", "4"], ["--dimension", "16"], ["--steps", "0"]], ids=str
)
def test_a_fine_tune_refuses_a_shape_or_a_folder_it_cannot_load(tmp_path: Path, argv, capsys):
    if argv != ["--steps", "0"]:
        _tiny_pair(tmp_path, 4, 8)
    with pytest.raises(SystemExit):
        script.parse_args(["--init", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert ("--init keeps" in err) if argv[0] != "--steps" else (f"{tmp_path} holds no" in err)


def test_measuring_a_pair_in_place_keeps_its_shape_and_record(tmp_path: Path, monkeypatch):
    """``--steps 0 --init X --out X`` rewrites X: it must still load, as the same shape."""
    pair = tmp_path / "pair"
    arch = _tiny_pair(pair, 4, 8)
    (pair / "card.json").write_text(json.dumps({"training": {"steps": 2, "note": "tiny"}}))
    rng = np.random.default_rng(0)
    clips = []
    for i in range(8):
        path = tmp_path / f"{i}.wav"
        sf.write(path, rng.normal(0, 0.05, 6 * ab.MODEL_RATE).astype("float32"), ab.MODEL_RATE)
        clips.append(Clip(path, "sfx", "noise", "CC0"))
    monkeypatch.setattr(script, "build_clips", lambda corpus: clips)
    script.main(["--steps", "0", "--init", str(pair), "--out", str(pair), "--null-draws", "8"])
    card = json.loads((pair / "card.json").read_text())
    assert card["shrunk"] == arch
    assert card["training"]["note"] == "tiny" and "remeasured" in card["training"]
    assert script.pair_arch(script.parse_args(["--init", str(pair)])) == arch
    ab.AudioSealBackend(weights=pair)


@pytest.mark.parametrize("progress", [0.1, 0.9], ids=["with the bootstrap code", "edits"])
def test_a_crop_of_digital_silence_leaves_every_gradient_finite(progress):
    """One all-zero crop in a batch used to turn the generator's gradients (and then its
    weights) to NaN through the spectral hinge; 0.25 s crops met one within 3,000 steps."""
    args = script.parse_args(["--filters", "4", "--dimension", "8"])
    gen_model, det_model = script.build_pair(None, script.pair_arch(args))
    x = torch.randn(3, 1, ab.MODEL_RATE // 4) * 0.05
    x[1] = 0.0
    for seed in range(8):  # each seed draws one of the edits; together they draw every one
        gen = torch.Generator().manual_seed(seed)
        gen_model.zero_grad()
        det_model.zero_grad()
        script.train_step(gen_model, det_model, x, gen, args, progress)["loss"].backward()
        for p in [*gen_model.parameters(), *det_model.parameters()]:
            assert p.grad is None or torch.isfinite(p.grad).all(), f"seed {seed}"


def test_the_bootstrap_code_reads_the_bits_a_mark_writes_into_its_bands():
    """A mark with a tone in band 2i+b for each bit i reads back as those bits, and one with
    the opposite tones as their complement: the code the generator is taught is decodable."""
    bands = script.BANDS
    bits = torch.randint(0, 2, (ab.NBITS,), generator=torch.Generator().manual_seed(3))
    t = torch.arange(ab.MODEL_RATE // 2) / ab.MODEL_RATE

    def mark(chosen: torch.Tensor) -> torch.Tensor:
        tones = torch.zeros_like(t)
        for i, b in enumerate(chosen.tolist()):
            bins = bands[2 * i + b].nonzero().flatten().float()
            hz = float(bins.mean()) * ab.MODEL_RATE / script.BOOTSTRAP_FFT
            tones += torch.sin(2 * torch.pi * hz * t)
        return tones[None, None]

    both = torch.cat([mark(bits), mark(1 - bits)])
    read = (script.bootstrap_logits(both, bands) > 0).long()
    assert torch.equal(read[0], bits) and torch.equal(read[1], 1 - bits)


def test_the_bootstrap_code_teaches_a_fresh_pair_and_leaves_a_fine_tune_alone(tmp_path: Path):
    # a fine-tune's pair already has its own code; pulling it back to the bootstrap bands
    # would undo what the pair learnt, so --init turns the bootstrap off unless asked for
    _tiny_pair(tmp_path, 4, 8, steps=1)
    assert script.parse_args([]).bootstrap_weight == script.BOOTSTRAP_WEIGHT > 0
    assert script.parse_args(["--init", str(tmp_path)]).bootstrap_weight == 0.0
    asked = ["--init", str(tmp_path), "--bootstrap-weight", "2"]
    assert script.parse_args(asked).bootstrap_weight == 2.0


def test_the_detector_hears_the_mark_off_the_encoders_grid_when_asked():
    """Pairs trained on the grid they marked on lost the payload to any crop that did not
    start on a multiple of the encoder's 160-sample stride; ``--shift-share`` moves it."""
    heard: list[int] = []
    x = torch.randn(2, 1, ab.MODEL_RATE // 4) * 0.05
    for share in ("0", "1"):
        args = script.parse_args(["--filters", "4", "--dimension", "8", "--shift-share", share])
        gen_model, det_model = script.build_pair(None, script.pair_arch(args))
        det_model.detector.register_forward_pre_hook(
            lambda _, inputs: heard.append(inputs[0].shape[-1])
        )
        for seed in range(12):
            gen = torch.Generator().manual_seed(seed)
            script.train_step(gen_model, det_model, x, gen, args, progress=0.9 * seed / 12)
    assert script.stride(gen_model) == 160
    unshifted, shifted = heard[:12], heard[12:]
    assert set(unshifted) == {x.shape[-1]}
    dropped = {x.shape[-1] - n for n in shifted}
    assert len(dropped) > 6 and max(dropped) < 160
