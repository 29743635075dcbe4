"""Write a small Opus copy of a detector corpus's train and val splits, to train elsewhere.

A built corpus is a few hundred MB of 24-bit FLAC; a machine lent for a short GPU run may take
far less. The copy keeps the manifest rows of the chosen splits with paths renamed to ``.opus``
and the corpus card, and leaves the test split behind so it cannot leak into training. Both
classes pass through the same codec, and the corpus already augments with Opus, MP3 and AAC,
so the codec carries no label; a head for a backbone trained on the copy is then fitted on the
original FLAC (``train_detector.py --head-for``).

    python scripts/pack_detector_corpus.py /tmp/corpus-frozen .gpu/detcorpus --kbps train=32 val=18
"""

from __future__ import annotations

import argparse
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from detectors.corpus.manifest import load_manifest, write_manifest


def encode(source: Path, target: Path, kbps: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(source), "-c:a", "libopus"]
        + ["-b:a", f"{kbps}k", str(target)],
        check=True,
    )


def bitrates(pairs: list[str]) -> dict[str, int]:
    """``["train=32", "val=18"]`` -> ``{"train": 32, "val": 18}``."""
    try:
        return {split: int(kbps) for split, kbps in (p.split("=", 1) for p in pairs)}
    except ValueError:
        raise SystemExit(f"--kbps takes SPLIT=KBPS pairs, not {' '.join(pairs)}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--kbps", nargs="+", default=["train=32", "val=18"], help="SPLIT=KBPS for each split"
    )
    args = parser.parse_args()
    rates = bitrates(args.kbps)
    rows = [r for r in load_manifest(args.corpus) if r["split"] in rates]
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(
            pool.map(
                lambda r: encode(
                    args.corpus / str(r["path"]),
                    args.out / Path(str(r["path"])).with_suffix(".opus"),
                    rates[str(r["split"])],
                ),
                rows,
            )
        )
    write_manifest(
        args.out, [{**r, "path": str(Path(str(r["path"])).with_suffix(".opus"))} for r in rows]
    )
    card = json.loads((args.corpus / "corpus.json").read_text())
    card["transport"] = {"codec": "opus", "kbps": rates, "from": str(args.corpus)}
    (args.out / "corpus.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"{len(rows)} clips as Opus ({', '.join(args.kbps)}) in {args.out}")


if __name__ == "__main__":
    main()
