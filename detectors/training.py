"""Training the compact AST and fitting heads on a corpus built by ``detectors.corpus``.

The notes in ``shared/notes/detector-findings.md`` shaped this: a model trained naively on
these sources learns *which package a clip came from*. Three levers fight that here:

- batches balanced by class and then by source, so no single package dominates a class;
- channel augmentation in the feature domain on every step (random tilt, band limit, level,
  noise floor, SpecAugment masks), so brightness and loudness carry no label;
- a source-adversarial branch (gradient reversal) over clips whose *origin* is a real-speech
  package: real clips and their WORLD / Griffin-Lim / LPC re-syntheses share an origin, so
  removing origin information removes the channel while leaving the synthesis artefacts.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn
from transformers import ASTModel

from detectors.backbone import compact_config, layer_outputs, pool_all, select
from detectors.frontend import SAMPLE_RATE, fbank, fit_frames, frames_for
from detectors.head import LogisticHead

RESYNTHESIS_FAMILIES = ("world", "griffinlim", "lpc")


@dataclass(frozen=True)
class Clip:
    """One corpus clip with its fbank features held in memory as float16."""

    features: torch.Tensor
    label: int
    family: str
    source: str
    origin: str
    row: dict[str, object] = field(repr=False)


@dataclass(frozen=True)
class TrainSettings:
    minutes: float = 20.0
    batch: int = 32
    lr: float = 3e-4
    window_s: float = 3.0
    adversarial_weight: float = 0.3
    seed: int = 0
    exclude_families: tuple[str, ...] = ()
    max_steps: int | None = None
    validate_every: int = 100
    device: str = "cpu"


def origin_of(row: dict[str, object]) -> str:
    """The real package a clip's audio came from, or the TTS engine for text-to-speech.

    Real clips name their package as ``source``; re-syntheses name ``family:package``.
    """
    source = str(row["source"])
    if row["family"] in RESYNTHESIS_FAMILIES:
        return source.split(":", 1)[-1]
    if row["label"] == "real":
        return source
    return str(row["family"])


def load_clips(corpus_dir: Path, rows: Sequence[dict[str, object]]) -> list[Clip]:
    """Decode every clip once and keep its features; training then never touches disk."""
    clips = []
    for row in rows:
        audio, rate = sf.read(str(corpus_dir / str(row["path"])), dtype="float32", always_2d=True)
        mono = torch.from_numpy(audio.mean(axis=1))
        if rate != SAMPLE_RATE:
            raise ValueError(f"{row['path']}: corpus clips must be {SAMPLE_RATE} Hz, not {rate}")
        label = 1 if row["label"] == "synthetic" else 0
        clips.append(
            Clip(
                fbank(mono).half(),
                label,
                str(row["family"]),
                str(row["source"]),
                origin_of(row),
                dict(row),
            )
        )
    return clips


class GradientReversal(torch.autograd.Function):
    """Identity forward, negated gradient backward: the encoder learns to *hide* the origin."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.weight * grad, None


class TrainingModel(nn.Module):
    """The compact AST with a synthetic/real classifier and an origin adversary on top."""

    def __init__(self, frames: int, origins: int, ast: ASTModel | None = None) -> None:
        super().__init__()
        self.ast = ast if ast is not None else ASTModel(compact_config(max_length=frames))
        width = self.ast.config.hidden_size
        self.classifier = nn.Sequential(nn.LayerNorm(2 * width), nn.Linear(2 * width, 1))
        self.adversary = nn.Sequential(
            nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, origins)
        )

    def forward(self, x: torch.Tensor, reverse: float) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.ast(input_values=x).last_hidden_state
        pooled = torch.cat([hidden[:, 2:].mean(1), hidden[:, :2].mean(1)], dim=1)
        adversary_in = GradientReversal.apply(pooled, reverse)
        return self.classifier(pooled).squeeze(1), self.adversary(adversary_in)


def augment_features(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Randomise the channel of a ``(batch, frames, 128)`` batch of normalised log-mels.

    Every operation models something an upload path does to both classes alike: an EQ tilt,
    a band limit (telephone, low-bitrate codecs), a level change, a noise floor, dropouts.
    """
    x = x.clone()
    batch, frames, bins = x.shape
    ramp = torch.linspace(-1, 1, bins)
    floor = x.amin(dim=(1, 2), keepdim=True)
    for i in range(batch):
        x[i] += rng.uniform(-0.15, 0.15) * ramp + rng.uniform(-0.3, 0.3)
        if rng.random() < 0.5:
            cut = rng.randint(70, bins)
            x[i, :, cut:] = floor[i] + 0.05 * torch.randn(frames, bins - cut)
        if rng.random() < 0.3:
            x[i] = torch.maximum(x[i], floor[i] + rng.uniform(0.1, 0.4))
        for _ in range(2):
            width = rng.randint(0, 12)
            start = rng.randint(0, bins - width)
            x[i, :, start : start + width] = x[i].mean()
            width = rng.randint(0, 30)
            start = rng.randint(0, max(0, frames - width))
            x[i, start : start + width] = x[i].mean()
    return x


def random_window(features: torch.Tensor, frames: int, rng: random.Random) -> torch.Tensor:
    start = rng.randint(0, max(0, features.shape[0] - frames))
    return fit_frames(features[start : start + frames].float(), frames)


class BalancedSampler:
    """Half synthetic, half real; within a class every source equally likely."""

    def __init__(self, clips: Sequence[Clip], rng: random.Random) -> None:
        self.rng = rng
        self.by_class: dict[int, dict[str, list[int]]] = {
            0: defaultdict(list),
            1: defaultdict(list),
        }
        for i, clip in enumerate(clips):
            self.by_class[clip.label][clip.source].append(i)
        self.sources = {c: sorted(s) for c, s in self.by_class.items()}

    def draw(self, n: int) -> list[int]:
        picks = []
        for k in range(n):
            label = k % 2
            source = self.rng.choice(self.sources[label])
            picks.append(self.rng.choice(self.by_class[label][source]))
        return picks


def train_backbone(
    train: Sequence[Clip],
    val: Sequence[Clip],
    settings: TrainSettings,
    log: Callable[[str], None] = print,
    init: ASTModel | None = None,
) -> tuple[ASTModel, dict[str, object]]:
    """Train for ``settings.minutes`` of wall time; keep the weights with the best val EER.

    ``init`` is a pre-trained encoder to start from (see ``detectors.pretraining``).
    """
    from detectors.evaluation import score

    leaked = {c.family for c in (*train, *val)} & set(settings.exclude_families)
    if leaked:
        raise ValueError(f"clips of left-out families {sorted(leaked)} reached training")
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    frames = frames_for(settings.window_s)
    origins = sorted(
        {c.origin for c in train if c.origin not in ("espeak-ng", "flite", "festival")}
    )
    origin_index = {o: i for i, o in enumerate(origins)}
    device = torch.device(settings.device)
    model = TrainingModel(frames, max(1, len(origins)), init).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.05)
    sampler = BalancedSampler(train, rng)
    deadline = time.monotonic() + settings.minutes * 60
    step, best_eer, best_state, history = 0, math.inf, None, []
    while time.monotonic() < deadline and (settings.max_steps is None or step < settings.max_steps):
        model.train()
        picks = sampler.draw(settings.batch)
        x = augment_features(
            torch.stack([random_window(train[i].features, frames, rng) for i in picks]), rng
        ).to(device)
        y = torch.tensor([train[i].label for i in picks], dtype=torch.float32, device=device)
        o = torch.tensor([origin_index.get(train[i].origin, -100) for i in picks], device=device)
        warm = min(1.0, step / 200)
        for group in optimiser.param_groups:
            group["lr"] = settings.lr * warm
        logit, origin_logits = model(x, reverse=settings.adversarial_weight * warm)
        loss = nn.functional.binary_cross_entropy_with_logits(logit, y)
        if (o >= 0).any():
            loss = loss + nn.functional.cross_entropy(origin_logits, o, ignore_index=-100)
        optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        step += 1
        if step % settings.validate_every == 0 and val:
            s = score([c.label for c in val], clip_logits(model, val, frames))
            history.append({"step": step, "loss": round(loss.item(), 4), **s.to_dict()})
            log(f"step {step} loss {loss.item():.3f} val EER {s.eer:.3f} AUC {s.auc:.3f}")
            if s.eer is not None and s.eer < best_eer:
                best_eer = s.eer
                state = model.ast.state_dict()
                best_state = {k: v.detach().cpu().clone() for k, v in state.items()}
    model.ast.cpu()
    if best_state is not None:
        model.ast.load_state_dict(best_state)
    summary = {"steps": step, "best_val_eer": best_eer, "history": history, **asdict(settings)}
    return model.ast.eval(), summary


@torch.inference_mode()
def clip_logits(model: TrainingModel, clips: Sequence[Clip], frames: int) -> list[float]:
    """The training classifier's mean window logit per clip: a cheap validation score."""
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for clip in clips:
        windows = windows_of(clip.features, frames).to(device)
        hidden = model.ast(input_values=windows).last_hidden_state
        pooled = torch.cat([hidden[:, 2:].mean(1), hidden[:, :2].mean(1)], dim=1)
        scores.append(float(model.classifier(pooled).mean()))
    return scores


def windows_of(features: torch.Tensor, frames: int) -> torch.Tensor:
    """The windows inference would take: ``frames`` long, half-overlapping, padded at the end."""
    hop = frames // 2
    count = 1 + max(0, math.ceil((features.shape[0] - frames) / hop))
    return torch.stack(
        [fit_frames(features[i * hop : i * hop + frames].float(), frames) for i in range(count)]
    )


@torch.inference_mode()
def layer_pools(ast: ASTModel, clips: Sequence[Clip], frames: int) -> list[np.ndarray]:
    """Per clip, every layer's pooled windows (see :func:`detectors.backbone.pool_all`)."""
    return [pool_all(layer_outputs(ast, windows_of(c.features, frames))) for c in clips]


def window_embeddings(
    ast: ASTModel, clips: Sequence[Clip], frames: int, layers: list[int], pooling: str
) -> list[np.ndarray]:
    """Per clip, a ``(windows, dim)`` array of embeddings as the detector computes them."""
    return [select(p, layers, pooling) for p in layer_pools(ast, clips, frames)]


def fit_head(
    train: list[np.ndarray],
    train_labels: Sequence[int],
    calibration: list[np.ndarray],
    calibration_labels: Sequence[int],
    *,
    backbone: str,
    layers: list[int],
    pooling: str,
    C: float = 1.0,
) -> LogisticHead:
    """Fit on every window of the training clips; calibrate on windows of held-out clips."""
    X = np.concatenate(train)
    y = np.concatenate([[label] * len(e) for e, label in zip(train, train_labels, strict=True)])
    Xc = np.concatenate(calibration)
    yc = np.concatenate(
        [[label] * len(e) for e, label in zip(calibration, calibration_labels, strict=True)]
    )
    head = LogisticHead(backbone=backbone, layers=layers, pooling=pooling, C=C)
    return head.fit(X, y, Xc, yc)


def clip_scores(head: LogisticHead, embeddings: list[np.ndarray]) -> list[float]:
    """A clip's score is the mean calibrated logit of its windows, exactly as at inference."""
    return [float(head.logits(e).mean()) for e in embeddings]
