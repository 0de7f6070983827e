#!/usr/bin/env bash
# Print the configuration that runs interlink-slurm on the local cluster of cluster.sh.
set -euo pipefail
eval "$("$(dirname -- "${BASH_SOURCE[0]}")/cluster.sh" env)"
cat <<YAML
# interlink-slurm on the local development cluster (written by deploy/local/dev-config.sh)
listen: 127.0.0.1:4000
data_root: $ILS_CLUSTER_DIR/pods
runtime: charliecloud
images:
  # Any image reference the pods use must map to an image directory on the cluster. Every image
  # examples/ names is here, so each example renders and starts; the GPU, notebook and MPI ones
  # only do their real work with their real images.
  debian-python: $ILS_IMAGE
  python:3.11: $ILS_IMAGE
  python:3.12-slim: $ILS_IMAGE
  busybox: $ILS_IMAGE
  nvcr.io/nvidia/pytorch:24.05-py3: $ILS_IMAGE
  quay.io/jupyter/pytorch-notebook:cuda12-2024-06-03: $ILS_IMAGE
  ghcr.io/example/cfd-solver:2.3: $ILS_IMAGE
partition: dcgp_usr_prod
gpu_partition: boost_usr_prod
gpu_type: a100
slurm_conf: $SLURM_CONF
taints:
  - key: virtual-node.interlink/no-schedule
    value: "true"
    effect: NoSchedule
YAML
