#!/usr/bin/env bash
# The main job on the bundled samples: a generator marks two clips with its key, then a
# platform scans the whole sample folder (real speech, music and sound effects, synthetic
# speech, and the marked clips) with the detector, every watermark check and the shipped
# upload-screening policy, logging each decision and writing the auditor's HTML report.
# Outputs go to ./quickstart-output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=quickstart-output
mkdir -p "$out/marked"
ag=.venv/bin/audioguard
[ -f "$out/demo.key" ] || "$ag" watermark keygen "$out/demo.key"
"$ag" watermark embed samples/synthetic/espeak_bank_call.flac "$out/marked/espeak_bank_call.flac" \
    --key "$out/demo.key" --payload c0ffee01
"$ag" watermark embed samples/music/singularity_awakening_44k_stereo.flac \
    "$out/marked/music_44k_stereo.flac" --key "$out/demo.key" --payload 2026112a
rm -f "$out/audit.jsonl"
"$ag" scan samples/ "$out/marked/" --key "$out/demo.key" --audit-log "$out/audit.jsonl" \
    --report "$out/report.html"
"$ag" audit verify "$out/audit.jsonl"
echo "report: $out/report.html"
