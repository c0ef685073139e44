# Sourced by the sbatch scripts of this folder: one accelerate launch over every node of the allocation.
#
#   fluxir_launch <module> [args...]   runs `accelerate launch -m <module> args --env .. --params ..` once per
#                                      node (srun, one task per node), GPUS_PER_NODE processes each, node k as machine rank k.
#   fluxir_kedro <params> [args...]    runs `kedro run args` here (the first node) with FLUXIR_PARAMS plus
#                                      <params> (e.g. fluxgen.num_processes=1: the bookkeeping between launches,
#                                      manifests, merge, select, report, needs no GPU job of its own).
#
# Settings (environment): FLUXIR_ENV (Kedro env, default local: conf/base plus
# conf/local, as for kedro run), FLUXIR_PARAMS (kedro-style overrides,
# e.g. fluxgen.num_images=350000), GPUS_PER_NODE (default: $SLURM_GPUS_ON_NODE, else 8), MAIN_PROCESS_IP
# (default: the first host of $SLURM_JOB_NODELIST), MAIN_PROCESS_PORT (default 29500),
# FLUXIR_PYTHON (default python), SRUN (default srun: the tests replace it by a local fan-out).
set -euo pipefail

FLUXIR_ENV=${FLUXIR_ENV:-local}
FLUXIR_PARAMS=${FLUXIR_PARAMS:-}
FLUXIR_PYTHON=${FLUXIR_PYTHON:-python}
SRUN=${SRUN:-srun}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-29500}
if [[ -z "${MAIN_PROCESS_IP:-}" ]]; then
  MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
fi
export FLUXIR_ENV FLUXIR_PARAMS FLUXIR_PYTHON GPUS_PER_NODE MAIN_PROCESS_IP MAIN_PROCESS_PORT

params_args() {  # --params <FLUXIR_PARAMS> when set
  if [[ -n "$FLUXIR_PARAMS" ]]; then printf -- '--params\n%s\n' "$FLUXIR_PARAMS"; fi
}

# The launch line one node runs; SLURM_NODEID is read on that node (inside srun), so each gets its rank.
# --multi_gpu: NCCL on GPUs, gloo on CPU-only nodes (the entry points set accelerate's cpu flag themselves).
node_launch() {
  local module=$1; shift
  local extra=()
  mapfile -t extra < <(params_args)
  exec "$FLUXIR_PYTHON" -m accelerate.commands.launch --multi_gpu \
    --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID" \
    --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "$MAIN_PROCESS_PORT" \
    --mixed_precision no --dynamo_backend no \
    -m "$module" "$@" --env "$FLUXIR_ENV" "${extra[@]}"  # "$@" first: a subcommand (fluxir.fluxgen generate)
}
export -f node_launch params_args

fluxir_launch() {
  "$SRUN" --nodes "$SLURM_NNODES" --ntasks-per-node 1 --kill-on-bad-exit=1 bash -c 'node_launch "$@"' node_launch "$@"
}

fluxir_kedro() {
  local params=${FLUXIR_PARAMS:+$FLUXIR_PARAMS,}$1; shift
  "$FLUXIR_PYTHON" -m kedro run --env "$FLUXIR_ENV" --params "$params" "$@"
}
