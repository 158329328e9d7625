#!/bin/bash
# Put the files a device run sent back (run.sh) into the run folder: the new checkpoint
# replaces the old one whole (its state.json names its shards), likewise best/.
# Usage: bash training/gpu/collect.sh FILES_AT [RUN_DIR]
set -euo pipefail
back=${1:?usage: collect.sh FILES_AT [RUN_DIR]}
run=${2:-training/run}
[ -f "$back/small-files.tar" ] || { echo "no small-files.tar in $back" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
tar -xf "$back/small-files.tar" -C "$stage"
for part in checkpoint best; do
    compgen -G "$back/$part--*.safetensors" >/dev/null || continue
    [ -f "$stage/$part/state.json" ] || { echo "$part shards came back without state.json" >&2; exit 1; }
    for f in "$back/$part"--*.safetensors; do cp "$f" "$stage/$part/${f##*/$part--}"; done
done
for part in checkpoint best; do
    [ -d "$stage/$part" ] || continue
    rm -rf "$run/$part"
    mv "$stage/$part" "$run/$part"
done
cp "$stage/log.jsonl" "$stage/commands.txt" "$stage/train_config.json" "$run/"
python3 - "$run" <<'PY'
import json, sys
state = json.load(open(f"{sys.argv[1]}/checkpoint/state.json"))
print("checkpoint at step", state["step"])
PY
