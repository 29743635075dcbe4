#!/usr/bin/env bash
# The main job on the bundled samples: make a key, watermark a real speech clip, then detect
# the mark in the marked copy (and not in the originals). Outputs go to ./quickstart-output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=quickstart-output
mkdir -p "$out"
ag=.venv/bin/audioguard
[ -f "$out/demo.key" ] || "$ag" watermark keygen "$out/demo.key"
"$ag" watermark embed samples/speech/fillets_society_stebet0.flac "$out/marked.flac" \
    --key "$out/demo.key" --payload c0ffee01
"$ag" watermark embed samples/music/singularity_awakening_44k_stereo.flac "$out/marked-music.flac" \
    --key "$out/demo.key" --payload 2026112a
"$ag" watermark detect "$out/marked.flac" "$out/marked-music.flac" samples/ --key "$out/demo.key"
