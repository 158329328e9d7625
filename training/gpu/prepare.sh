#!/bin/bash
# Wheels for the device machine's Python 3.12 that its image lacks (soundfile reads the
# bundle's Ogg Opus, soxr resamples), into .whl/ (git-ignored through .git/info/exclude),
# for `run(..., carry=[".whl"])`. They travel with the working tree (64 MiB in all):
# about 1.8 MiB.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl soundfile soxr cffi pycparser
ls -la .whl
# What travels: tracked files, untracked ones git does not ignore, and the wheels.
size=$( { git ls-files -z; git ls-files -z --others --exclude-standard; printf '.whl\0'; } \
    | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1 || true)
echo "working tree + wheels: $(( ${size:-0} / 1048576 )) MiB (the device takes 64)"
