#!/bin/bash
# Multi-node `medaug generate` with torchrun: run this once on every node. Shard k of the bank is
# written by global rank k % world_size; rank 0 writes bank.json and manifest.csv at the end. The
# bank is bit-identical to a one-process run on CPU (GPUs may differ in the last bits).
# The output folder must be on storage all nodes share.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 recipes/cluster/torchrun_generate.sh \
#       --model runs/cvae/version_0/generator --num-samples 100000 --out banks/cvae
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 recipes/cluster/torchrun_generate.sh  (same arguments)
#
# A killed run is resumed by running the same command again on every node.
set -euo pipefail
: "${NNODES:=1}" "${NODE_RANK:=0}" "${MASTER_ADDR:=127.0.0.1}" "${MASTER_PORT:=29500}"
: "${NPROC_PER_NODE:=$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
exec torchrun --nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m lightning_medaug.cli generate --no-progress "$@"
