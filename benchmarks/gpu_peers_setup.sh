#!/usr/bin/env bash
# Unpack the GPU benchmark peers (accelerated-scan, mambapy, mamba_ssm's Triton part; pure Python)
# from a folder holding their wheels/tarballs into .gpu-peers/ at the repository root, which git
# ignores and which benchmarks/gpu_check.sh puts on PYTHONPATH. Run it where the files are, before
# the checkout travels to the GPU machine (that machine has no network):
#
#     bash benchmarks/gpu_peers_setup.sh <folder with *.whl / *.tar.gz>
#
# The peers are measured against, never imported by ssmcore itself.
set -euo pipefail
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: $0 <folder with the peer wheels (*.whl) and tarballs (*.tar.gz)>" >&2
    exit 2
fi
src=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
dest=.gpu-peers
shopt -s nullglob
archives=("$src"/*.whl "$src"/*.tar.gz "$src"/*.tgz)
if [ ${#archives[@]} -eq 0 ]; then
    echo "$0: no *.whl or *.tar.gz in $src" >&2
    exit 1
fi
rm -rf "$dest"
mkdir -p "$dest"
n=0
for whl in "$src"/*.whl; do
    # A wheel is a zip; Python's zipfile needs no unzip binary.
    python3 -m zipfile -e "$whl" "$dest"
    echo "unpacked $(basename "$whl")"
    n=$((n + 1))
done
for tgz in "$src"/*.tar.gz "$src"/*.tgz; do
    tar -xzf "$tgz" -C "$dest"
    echo "unpacked $(basename "$tgz")"
    n=$((n + 1))
done
# Drop metadata folders: only importable packages matter.
rm -rf "$dest"/*.dist-info
echo "$n peer archive(s) in $dest/ ($(du -sh "$dest" | cut -f1)); importable: $(cd "$dest" && ls -d */ | tr -d / | tr '\n' ' ')"
