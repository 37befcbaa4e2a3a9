#!/usr/bin/env bash
# Create what the deployments need on a Prefect server (PREFECT_API_URL must point at it): a `cpu` and a
# `gpu` process work pool. GPU concurrency is per worker, not global: start one worker per GPU with
# `--limit 1` (e.g. `CUDA_VISIBLE_DEVICES=0 prefect worker start --pool gpu --limit 1 --name box1-gpu0`), so
# each GPU runs one stage at a time and N GPUs run N stages (or N shards of one sample stage) at once.
set -euo pipefail
prefect work-pool inspect cpu >/dev/null 2>&1 || prefect work-pool create cpu --type process
prefect work-pool inspect gpu >/dev/null 2>&1 || prefect work-pool create gpu --type process
# Earlier versions created a global tag limit `gpu` = 1: it would serialise every GPU box behind one slot.
if prefect concurrency-limit inspect gpu >/dev/null 2>&1; then
  prefect --no-prompt concurrency-limit delete gpu >/dev/null
  echo "removed the global 'gpu' tag concurrency limit (GPU concurrency is now per worker: --limit 1)"
fi
