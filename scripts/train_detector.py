"""Train the shipped compact AST and its head on a corpus from `detectors build-corpus`.

    .venv/bin/python scripts/train_detector.py --corpus .cache/detector-corpus --minutes 25

Writes ``detectors/weights/compact_ast.{safetensors,json}`` and ``compact_ast_head.json``;
the cards record the corpus, the settings, the layer and pooling chosen on the validation
split, and the scores on the test split (speakers and sources the model never saw).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.markdown import trainer  # noqa: E402
from detectors.backbone import COMPACT_NAME, load_compact, save_compact, select  # noqa: E402
from detectors.corpus import corpus_recipe, load_manifest  # noqa: E402
from detectors.evaluation import breakdown, score  # noqa: E402
from detectors.frontend import frames_for  # noqa: E402
from detectors.pretraining import pretrain  # noqa: E402
from detectors.training import (  # noqa: E402
    Clip,
    TrainSettings,
    clip_scores,
    fit_head,
    layer_pools,
    load_clips,
    train_backbone,
    window_embeddings,
)

WEIGHTS = Path(__file__).resolve().parents[1] / "detectors" / "weights"
VERSION = 2


def choose_embedding(depth: int, pools: dict[str, list], clips: dict[str, list[Clip]], log) -> dict:
    """Try layer sets and poolings; keep the one whose head scores the lowest val EER."""
    train, val = clips["train"], clips["val"]
    train_pools, val_pools = pools["train"], pools["val"]
    candidates = [[depth], [depth - 1], [depth - 1, depth], list(range(1, depth + 1))]
    results = []
    for layers in candidates:
        for pooling in ("mean", "cls", "mean+cls"):
            tr = [select(p, layers, pooling) for p in train_pools]
            va = [select(p, layers, pooling) for p in val_pools]
            head = fit_head(
                tr,
                [c.label for c in train],
                va,
                [c.label for c in val],
                backbone="probe",
                layers=layers,
                pooling=pooling,
            )
            s = score([c.label for c in val], clip_scores(head, va))
            results.append({"layers": layers, "pooling": pooling, **s.to_dict()})
            log(f"layers {layers} pooling {pooling}: val EER {s.eer:.4f} AUC {s.auc:.4f}")
    best = min(results, key=lambda r: (r["eer"], -r["auc"]))
    return {"chosen": best, "tried": results}


def evaluate(head, ast, clips: list[Clip], frames: int) -> dict[str, object]:
    emb = window_embeddings(ast, clips, frames, head.layers, head.pooling)
    labels = [c.label for c in clips]
    scores = clip_scores(head, emb)
    families = [c.family for c in clips]
    languages = [str(c.row.get("language", "?")) for c in clips]
    genders = [str(c.row.get("gender", "?")) for c in clips]
    return {
        "overall": score(labels, scores).to_dict(),
        "by_family": {k: v.to_dict() for k, v in breakdown(labels, scores, families).items()},
        "by_language": {k: v.to_dict() for k, v in breakdown(labels, scores, languages).items()},
        "by_gender": {k: v.to_dict() for k, v in breakdown(labels, scores, genders).items()},
    }


def corpus_card(corpus: Path, clips: dict[str, list[Clip]], note: str | None) -> dict:
    card = {
        "builder": "audioguard detectors build-corpus",
        "recipe": corpus_recipe(corpus),
        "clips": {s: len(c) for s, c in clips.items()},
        "families": sorted({c.family for c in clips["train"]}),
    }
    return {**card, "note": note} if note else card


def train_and_save(args: argparse.Namespace, clips: dict[str, list[Clip]], started: float):
    """Pre-train (optionally) and train the backbone, and write it with its card."""
    settings = TrainSettings(
        minutes=args.minutes,
        batch=args.batch,
        lr=args.lr,
        adversarial_weight=args.adversarial_weight,
        seed=args.seed,
        validate_every=args.validate_every,
        device=args.device,
        exclude_families=tuple(args.exclude_family),
    )
    frames = frames_for(settings.window_s)
    init = None if args.init_from is None else load_compact(args.init_from / "compact_ast").model
    started_from = {}
    if args.init_from is not None:
        source = json.loads((args.init_from / "compact_ast.json").read_text())
        started_from = {"initialised_from": {k: v for k, v in source.items() if k != "config"}}
    if args.pretrain_minutes > 0:
        unlabelled = clips["train"] + clips["val"]
        init = pretrain(
            unlabelled, frames, args.pretrain_minutes, seed=args.seed, device=args.device
        )
    ast, summary = train_backbone(clips["train"], clips["val"], settings, init=init)
    save_compact(
        ast,
        args.out / "compact_ast",
        {
            "name": "compact-ast",
            "version": VERSION,
            "what": "A 4-layer 192-wide Audio Spectrogram Transformer trained "
            + ("further (see initialised_from) " if started_from else "from scratch ")
            + "to separate real from synthetic speech; use it through its head.",
            "trained_on": corpus_card(args.corpus, clips, args.corpus_note),
            "training": {k: v for k, v in summary.items() if k != "history"},
            "pretraining": {
                "method": "masked patch reconstruction (SSAST-style), labels unused",
                "minutes": args.pretrain_minutes,
                "clips": "train + val splits",
            },
            "machine": trainer(args.device),
            "validation_history": summary["history"],
            "train_seconds": round(time.time() - started),
            **started_from,
        },
    )
    return ast


def fit_and_save_head(args: argparse.Namespace, ast, clips: dict[str, list[Clip]]) -> None:
    """Choose layers and pooling on val, fit the calibrated head, score the test split."""
    frames = int(ast.config.max_length)
    # every layer's pooled windows, once: the choice and the final head both cut from them
    pools = {s: layer_pools(ast, clips[s], frames) for s in ("train", "val")}
    choice = choose_embedding(ast.config.num_hidden_layers, pools, clips, print)
    layers, pooling = choice["chosen"]["layers"], choice["chosen"]["pooling"]
    backbone_name = f"{COMPACT_NAME}-{VERSION}"
    tr, va = ([select(p, layers, pooling) for p in pools[s]] for s in ("train", "val"))
    head = fit_head(
        tr,
        [c.label for c in clips["train"]],
        va,
        [c.label for c in clips["val"]],
        backbone=backbone_name,
        layers=layers,
        pooling=pooling,
    )
    test = evaluate(head, ast, clips["test"], frames)
    print(json.dumps(test["overall"]), json.dumps(test["by_family"]))
    head.card = {
        "name": f"head-{VERSION}",
        "backbone_spec": head_backbone_spec(args.out),
        "backbone": backbone_name,
        "layers": layers,
        "pooling": pooling,
        "trained_on": corpus_card(args.corpus, clips, args.corpus_note),
        "embedding_choice": choice,
        "test_split": test,
    }
    head.save(args.out / "compact_ast_head.json")


def head_backbone_spec(out: Path) -> str | None:
    """Where a head finds its backbone: None for the shipped one, else an absolute path, so
    that a head written elsewhere never silently pairs with the shipped backbone and loads the
    same from any working directory."""
    out = out.resolve()
    return None if out == WEIGHTS else str(out / "compact_ast")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(".cache/detector-corpus"))
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=TrainSettings.batch)
    parser.add_argument("--lr", type=float, default=TrainSettings.lr)
    parser.add_argument(
        "--adversarial-weight", type=float, default=TrainSettings.adversarial_weight
    )
    parser.add_argument("--validate-every", type=int, default=TrainSettings.validate_every)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to train on a GPU")
    parser.add_argument(
        "--pretrain-minutes",
        type=float,
        default=0.0,
        help="Masked-patch pre-training on the train and val audio (labels unused) first.",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="Start from the backbone in this folder (its compact_ast.*) instead of random "
        "weights: fine-tune a trained backbone on another build or without a transport codec.",
    )
    parser.add_argument(
        "--backbone-only",
        action="store_true",
        help="Write the backbone and stop; fit its head later with --head-for (the corpus "
        "here may hold only train and val, or a transcoded copy not fit to fit a head on).",
    )
    parser.add_argument(
        "--head-for",
        type=Path,
        default=None,
        help="Skip training: fit the head of the backbone in this folder (its compact_ast.*) "
        "and write both to --out.",
    )
    parser.add_argument(
        "--corpus-note", default=None, help="How the training corpus differs from a build."
    )
    parser.add_argument(
        "--exclude-family",
        action="append",
        default=[],
        help="Leave this synthetic family out of training, validation and pre-training (a "
        "leave-one-family-out fold); repeatable. Implies --backbone-only.",
    )
    args = parser.parse_args()
    if args.exclude_family:
        if args.out.resolve() == WEIGHTS:
            parser.error("a fold's backbone must not replace the shipped one: give --out DIR")
        args.backbone_only = True
    if args.init_from is not None and args.pretrain_minutes:
        parser.error("--init-from starts from a trained backbone: no --pretrain-minutes")
    if args.head_for is not None and (
        args.backbone_only or args.pretrain_minutes or args.exclude_family or args.init_from
    ):
        parser.error("--head-for fits a head on a trained backbone: no training options")
    return args


def leave_out(clips: dict[str, list[Clip]], families: list[str]) -> dict[str, list[Clip]]:
    """Every split without ``families``: a fold's backbone must never see them, not even
    unlabelled in pre-training, or leave-one-family-out stops measuring unseen generators."""
    synthetic = {c.family for split in clips.values() for c in split if c.label == 1}
    unknown = set(families) - synthetic
    if unknown:
        sys.exit(
            f"{', '.join(sorted(unknown))}: not a synthetic family of this corpus, so it cannot "
            f"be left out (the families are {', '.join(sorted(synthetic))})"
        )
    return {s: [c for c in split if c.family not in families] for s, split in clips.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    rows = load_manifest(args.corpus)
    splits = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    clips = {s: load_clips(args.corpus, r) for s, r in splits.items()}
    if args.exclude_family:
        clips = leave_out(clips, args.exclude_family)
    print({s: len(c) for s, c in clips.items()}, f"loaded in {time.time() - started:.0f} s")
    if not clips["test"] and not args.backbone_only:
        sys.exit(f"{args.corpus} has no test split to score a head on: use --backbone-only")
    if args.head_for is not None:
        ast = load_compact(args.head_for / "compact_ast").model
        if args.head_for.resolve() != args.out.resolve():
            args.out.mkdir(parents=True, exist_ok=True)
            for suffix in (".safetensors", ".json"):
                shutil.copyfile(
                    args.head_for / f"compact_ast{suffix}", args.out / f"compact_ast{suffix}"
                )
    else:
        ast = train_and_save(args, clips, started)
    if not args.backbone_only:
        fit_and_save_head(args, ast, clips)
    print(f"wrote {args.out} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
