"""Self-supervised pre-training of the compact AST by masked patch reconstruction.

The idea is SSAST's (Gong et al., "SSAST: Self-Supervised Audio Spectrogram Transformer",
AAAI 2022): hide a share of the spectrogram patches and make the encoder rebuild them. No
labels are used, so the encoder learns what speech and its channels look like before it is
told what "synthetic" means — a start that leans less on whichever cue separates the
training sources.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import ASTModel

from detectors.backbone import compact_config, encoder_layers
from detectors.training import Clip, augment_features, random_window

PATCH = 16


def patchify(x: torch.Tensor) -> torch.Tensor:
    """``(batch, frames, bins)`` → ``(batch, patches, 256)`` in the order AST embeds them."""
    spec = x.transpose(1, 2).unfold(1, PATCH, PATCH).unfold(2, PATCH, PATCH)
    return spec.reshape(x.shape[0], -1, PATCH * PATCH)


class MaskedPatchModel(nn.Module):
    """The AST encoder, a learned mask token and a linear patch decoder."""

    def __init__(self, ast: ASTModel) -> None:
        super().__init__()
        self.ast = ast
        width = ast.config.hidden_size
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.decoder = nn.Linear(width, PATCH * PATCH)

    def forward(self, x: torch.Tensor, mask_ratio: float) -> torch.Tensor:
        embeddings = self.ast.embeddings
        patches = embeddings.patch_embeddings(x)
        batch, count, width = patches.shape
        mask = torch.rand(batch, count, device=patches.device) < mask_ratio
        patches = torch.where(mask[..., None], self.mask_token.expand(batch, count, width), patches)
        tokens = torch.cat(
            [
                embeddings.cls_token.expand(batch, -1, -1),
                embeddings.distillation_token.expand(batch, -1, -1),
                patches,
            ],
            dim=1,
        )
        tokens = embeddings.dropout(tokens + embeddings.position_embeddings)
        for layer in encoder_layers(self.ast):
            tokens = layer(tokens)
        hidden = self.ast.layernorm(tokens)[:, 2:]
        error = (self.decoder(hidden) - patchify(x)).pow(2).mean(-1)
        return error[mask].mean()


def pretrain(
    clips: Sequence[Clip],
    frames: int,
    minutes: float,
    *,
    batch: int = 32,
    lr: float = 5e-4,
    mask_ratio: float = 0.4,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> ASTModel:
    """Masked-patch pre-training for ``minutes`` of wall time over every clip, labels unused."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = MaskedPatchModel(ASTModel(compact_config(max_length=frames))).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    deadline, step = time.monotonic() + minutes * 60, 0
    while time.monotonic() < deadline:
        model.train()
        picks = [rng.randrange(len(clips)) for _ in range(batch)]
        x = torch.stack([random_window(clips[i].features, frames, rng) for i in picks])
        for group in optimiser.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100)
        loss = model(augment_features(x, rng).to(device), mask_ratio)
        optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        step += 1
        if step % 100 == 0:
            log(f"pretrain step {step} reconstruction loss {loss.item():.4f}")
    return model.ast.cpu()
