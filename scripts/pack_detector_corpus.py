"""Write a small Opus copy of a detector corpus's train and val splits, to train elsewhere.

A built corpus is a few hundred MB of 24-bit FLAC; a machine lent for a short GPU run may take
far less. The copy keeps the manifest rows of the chosen splits with paths renamed to ``.opus``
and the corpus card, and leaves the test split behind so it cannot leak into training. Both
classes pass through the same codec, and the corpus already augments with Opus, MP3 and AAC,
so the codec carries no label; a head for a backbone trained on the copy is then fitted on the
original FLAC (``train_detector.py --head-for``).

    python scripts/pack_detector_corpus.py /tmp/corpus-frozen .gpu/detcorpus --kbps 32
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def encode(source: Path, target: Path, kbps: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(source), "-c:a", "libopus"]
        + ["-b:a", f"{kbps}k", str(target)],
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kbps", type=int, default=32)
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args()
    rows = [
        json.loads(line)
        for line in (args.corpus / "manifest.jsonl").read_text().splitlines()
        if line.strip()
    ]
    kept = [{**r, "path": str(Path(r["path"]).with_suffix(".opus"))} for r in rows]
    kept = [r for r in kept if r["split"] in args.splits]
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(
            pool.map(
                lambda r: encode(
                    args.corpus / Path(r["path"]).with_suffix(".flac"),
                    args.out / r["path"],
                    args.kbps,
                ),
                kept,
            )
        )
    (args.out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    shutil.copyfile(args.corpus / "corpus.json", args.out / "corpus.json")
    print(f"{len(kept)} clips at {args.kbps} kbit/s in {args.out}")


if __name__ == "__main__":
    main()
