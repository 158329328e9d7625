#!/bin/bash
# One GPU lease of training, as the single prepared command the device machine runs.
#
#   here:    bash training/gpu/prepare.sh          # wheels the device lacks, into .whl/
#   device:  run(command="bash training/gpu/run.sh 8 --batch 64 --segment-seconds 2",
#                carry=[".whl"], timeout_s=600)
#   here:    bash training/gpu/collect.sh FILES_AT  # the files back into training/run
#
# MINUTES bounds the training (the trainer stops, saves and returns); the rest of the
# arguments go to `mimirate train --resume`. The device machine has torch but not
# soundfile or soxr (the bundle is Ogg Opus); prepare.sh fetches them as wheels.
# Environment: RUN_DIR (default training/run), DEVICE (default cuda), OUT (the device's
# folder for files to send back: at most 8 files of 16 MiB, so the checkpoint's shards
# go one by one and the small files in one tar), GPU_BENCH=1 (then also issue 2's GPU
# benchmark, into bench_gpu.json).
set -euo pipefail
minutes=${1:?usage: run.sh MINUTES [mimirate train flags]}
shift
run=${RUN_DIR:-training/run}
out=${OUT:?OUT must name the folder for the files to send back}
if ! python3 -c 'import soundfile, soxr' 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/mimirate-site .whl/*.whl
    export PYTHONPATH=/tmp/mimirate-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
python3 -m mimirate train --out "$run" --resume --device "${DEVICE:-cuda}" \
    --max-minutes "$minutes" --checkpoint-minutes 3 --no-progress "$@"
# Files back: the checkpoint's shards and the best weights' shards one by one (each under
# 16 MiB by construction), everything small in one tar.
for f in "$run"/checkpoint/*.safetensors "$run"/best/*.safetensors; do
    [ -e "$f" ] || continue
    cp "$f" "$out/$(basename "$(dirname "$f")")--$(basename "$f")"
done
tar -cf "$out/small-files.tar" -C "$run" log.jsonl commands.txt train_config.json \
    checkpoint/state.json $(cd "$run" && ls best/state.json 2>/dev/null)
tail -n 2 "$run/log.jsonl" | cut -c1-300
if [ "${GPU_BENCH:-0}" = 1 ]; then
    # Issue 2's GPU figure in the same lease: batch-64 offline encode/decode, ours vs
    # transformers' MimiModel (in the device image), bf16, one JSON file back.
    timeout 240 python3 benchmarks/bench_codec.py --batch 64 --seconds 10 --device cuda \
        --dtype bfloat16 --json > "$out/bench_gpu.json" || echo "bench_codec failed" >&2
fi
ls -la "$out"
