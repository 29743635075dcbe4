#!/usr/bin/env bash
# Install the Debian packages audioguard needs outside Python:
#   ffmpeg            MP3/AAC/Opus round trips and tempo changes in guard/edits.py
#   sox, libsox-fmt-all  command-line audio conversion with every format handler
#   ca-certificates   HTTPS package mirrors
#   espeak-ng         formant text-to-speech in many languages: synthetic voices of the detector corpus
#   flite             small diphone/clustergen text-to-speech: its built-in English voices, same corpus
#   festival          the festival speech synthesiser, which speaks with the two voices below
#   festvox-kallpc16k festival's American English male diphone voice "kal" (16 kHz)
#   festvox-kdlpc16k  festival's American English male diphone voice "ked" (16 kHz)
# benchmarks/corpus.py and detectors/corpus also use apt-get download and dpkg-deb, which every
# Debian system has.
# Idempotent and quiet: does nothing when everything is already installed.
set -euo pipefail

packages=(ffmpeg sox libsox-fmt-all ca-certificates espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k)

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

sudo=()
[ "$(id -u)" -ne 0 ] && sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# apt's chatter goes to a log that is shown only when something fails
if ! { "${sudo[@]}" apt-get update -qq &&
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_system_packages.sh: could not install ${missing[*]}" >&2
    exit 1
fi
