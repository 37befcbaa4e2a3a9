#!/usr/bin/env bash
# Create what the deployments need on a Prefect server (PREFECT_API_URL must point at it):
# a `cpu` and a `gpu` process work pool, and a tag concurrency limit so that at most one task
# tagged `gpu` (fine-tune, sample, retrain, validate) runs at a time across all flows.
set -euo pipefail
GPU_SLOTS="${GPU_SLOTS:-1}"   # GPU stages allowed at once (one per GPU box)
prefect work-pool inspect cpu >/dev/null 2>&1 || prefect work-pool create cpu --type process
prefect work-pool inspect gpu >/dev/null 2>&1 || prefect work-pool create gpu --type process
prefect concurrency-limit inspect gpu >/dev/null 2>&1 || prefect concurrency-limit create gpu "$GPU_SLOTS"
