#!/bin/bash
#SBATCH --job-name=train
#SBATCH --comment=interlink-slurm-group:default/train/0a1b2c3d-0000-4000-8000-000000000001
#SBATCH --output=/data/ils/default/train-master-0-0a1b2c3d-0000-4000-8000-000000000001/group/job.out
#SBATCH --open-mode=append
#SBATCH --chdir=/data/ils/default/train-master-0-0a1b2c3d-0000-4000-8000-000000000001/group
#SBATCH --partition=gpu
#SBATCH --nodes=2
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=4
#SBATCH --mem=8192M
#SBATCH --gres=gpu:a100:4
#
# Pod group default/train (2 pods started together), written by interlink-slurm <version>.
# As one allocation of their nodes: each pod's own job.sh runs as one srun step on its own
# node(s), its output, exit codes and times in the pod's directory.
# To run it again by hand: sbatch group.sh

set -o nounset -o pipefail
umask 077
GROUP_DIR=/data/ils/default/train-master-0-0a1b2c3d-0000-4000-8000-000000000001/group
cd "$GROUP_DIR" || exit 1
. ./ils.sh || exit 1
# A delete signals this script: it passes the signal on to every pod's step.
ILS_STOPPING=""
trap ils_group_stop URG
echo 'interlink-slurm: pod group default/train' "starts as job ${SLURM_JOB_ID:-?} on $SLURM_JOB_NODELIST"

# Rendezvous: each pod's names → the address of its first node (rank order), as a hosts
# file (the containers' /etc/hosts) and an env file, in each pod's group volume.
mapfile -t all < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
nodes=("${all[0]}" "${all[1]}")
for ((t = 0; t < 1; t++)); do echo "${nodes[0]}"; done > 0.hosts || exit 1
for ((t = 0; t < 1; t++)); do echo "${nodes[1]}"; done > 1.hosts || exit 1
{
  cat /etc/hosts
  echo '# pod group train'
  printf '%s %s\n' "$(ils_node_ip "${nodes[0]}")" 'train-master-0 train-master-0.default train-master-0.default.svc train-master-0.default.svc.cluster.local'
  printf '%s %s\n' "$(ils_node_ip "${nodes[1]}")" 'train-worker-0 train-worker-0.default train-worker-0.default.svc train-worker-0.default.svc.cluster.local'
} > hosts || exit 1
{
  echo "ILS_GROUP_NODES=train-master-0=${nodes[0]},train-worker-0=${nodes[1]}"
  echo "ILS_GROUP_LEADER_ADDR=$(ils_node_ip "${nodes[0]}")"
} > group.env || exit 1
cp -f -- hosts group.env /data/ils/default/train-master-0-0a1b2c3d-0000-4000-8000-000000000001/volumes/interlink-slurm-group/ || exit 1
ils_group_env '' /data/ils/default/train-master-0-0a1b2c3d-0000-4000-8000-000000000001/containers/trainer.env || exit 1
cp -f -- hosts group.env /data/ils/default/train-worker-0-0a1b2c3d-0000-4000-8000-000000000002/volumes/interlink-slurm-group/ || exit 1
ils_group_env '' /data/ils/default/train-worker-0-0a1b2c3d-0000-4000-8000-000000000002/containers/trainer.env || exit 1

# Each pod's job, on its own node(s); the first pod that fails ends the others
# (group_failure_policy: fail-group).
# Deleted before they start (the signal came during the rendezvous): none starts.
[ -z "${ILS_STOPPING:-}" ] || exit 143
pids=()
srun \
  --relative=0 \
  --nodes=1 \
  --ntasks=1 \
  --cpus-per-task=4 \
  --mem=0 \
  --gres=gpu:a100:4 \
  --job-name=train-master-0 \
  --chdir=/data/ils/default/train-master-0-0a1b2c3d-0000-4000-8000-000000000001 \
  --output=/data/ils/default/train-master-0-0a1b2c3d-0000-4000-8000-000000000001/job.out \
  --open-mode=append \
  --kill-on-bad-exit=0 \
  --export=ALL,ILS_MEMBER=0a1b2c3d-0000-4000-8000-000000000001 \
  env -u SLURM_MEM_PER_CPU -u SLURM_MEM_PER_GPU SLURM_MEM_PER_NODE=0 SLURM_OVERLAP=1 SLURM_NTASKS=1 SLURM_DISTRIBUTION=arbitrary SLURM_HOSTFILE=/data/ils/default/train-master-0-0a1b2c3d-0000-4000-8000-000000000001/group/0.hosts bash ./job.sh &
pids+=(train-master-0 $!)
srun \
  --relative=1 \
  --nodes=1 \
  --ntasks=1 \
  --cpus-per-task=4 \
  --mem=0 \
  --gres=gpu:a100:4 \
  --job-name=train-worker-0 \
  --chdir=/data/ils/default/train-worker-0-0a1b2c3d-0000-4000-8000-000000000002 \
  --output=/data/ils/default/train-worker-0-0a1b2c3d-0000-4000-8000-000000000002/job.out \
  --open-mode=append \
  --kill-on-bad-exit=0 \
  --export=ALL,ILS_MEMBER=0a1b2c3d-0000-4000-8000-000000000002 \
  env -u SLURM_MEM_PER_CPU -u SLURM_MEM_PER_GPU SLURM_MEM_PER_NODE=0 SLURM_OVERLAP=1 SLURM_NTASKS=1 SLURM_DISTRIBUTION=arbitrary SLURM_HOSTFILE=/data/ils/default/train-master-0-0a1b2c3d-0000-4000-8000-000000000001/group/1.hosts bash ./job.sh &
pids+=(train-worker-0 $!)
ils_group_wait fail-group "${pids[@]}"
