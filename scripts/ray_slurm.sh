#!/usr/bin/env bash
# Run a sweep on a Ray cluster started inside a Slurm allocation (Ray's documented head/worker pattern).
#
#   sbatch --nodes=4 --gpus-per-node=8 --cpus-per-task=64 --ntasks-per-node=1 scripts/ray_slurm.sh sweeps/glm.yaml
#
# The first node of the allocation runs the Ray head and the sweep's driver; every node runs one Ray worker
# with its GPUs and CPUs. The work directory (work/<sweep>/ by default) must be on a filesystem every node
# sees; it is the sweep's single source of truth, so a job lost with its node is redone by Ray or by the
# next run, and a second allocation on the same sweep shares the work instead of doubling it.
set -euo pipefail
sweep=${1:?usage: scripts/ray_slurm.sh SWEEP.yaml [extra harness.sweep options]}
shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PY=${PY:-.venv/bin/python}
RAY=${RAY:-.venv/bin/ray}
port=${RAY_PORT:-6379}

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
gpus=${SLURM_GPUS_ON_NODE:-0}
cpus=${SLURM_CPUS_PER_TASK:-$(nproc)}

echo "ray head on $head ($head_ip:$port), ${#nodes[@]} node(s), $gpus GPU(s) and $cpus CPU(s) each"
srun --nodes=1 --ntasks=1 -w "$head" "$RAY" start --head --node-ip-address="$head_ip" --port="$port" \
    --num-gpus="$gpus" --num-cpus="$cpus" --block &
sleep 15
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" "$RAY" start --address="$head_ip:$port" \
      --num-gpus="$gpus" --num-cpus="$cpus" --block &
done
sleep 15

# The driver: on the head node, joining the cluster; it exits 0 when every job succeeded.
export RAY_ADDRESS="$head_ip:$port"
status=0
"$PY" -m harness.sweep "$sweep" --executor ray "$@" || status=$?
"$RAY" stop || true
exit $status
