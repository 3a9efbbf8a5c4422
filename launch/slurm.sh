#!/usr/bin/env bash
# Submit a multi-node GPU run to SLURM, one process per GPU. Run with --help for the usage.
set -euo pipefail
# shellcheck source=launch/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: launch/slurm.sh --gpus-per-node G [options] CONFIG WORKDIR [--config.key=value ...]

Submits one SLURM job (sbatch) of NODES x G tasks, one per GPU, each running
`python -m jaxaug.main --config CONFIG --workdir WORKDIR --config.distributed.enabled=True
[--config.key=value ...]` through srun; jax.distributed finds the other processes from the
SLURM environment. The job inherits this shell's environment: submit from the one where
jaxaug is installed. WORKDIR must be on a file system all nodes share, or gs://BUCKET/PATH
(install jaxaug with its `gcs` extra). SLURM sends SIGTERM
2 minutes before the time limit, so the run saves a checkpoint and stops; submitting the same
command again resumes it from the newest checkpoint in WORKDIR.

Required:
  --gpus-per-node G        GPUs (and processes) per node
Options:
  --nodes N                number of nodes (default 1)
  --cpus-per-gpu C         CPU cores per process (default 8)
  --time T                 time limit, e.g. 24:00:00 (default: the partition's)
  --partition P            SLURM partition
  --account A              SLURM account
  --job-name NAME          default: jaxaug-<last part of WORKDIR>
  --output FILE            the job's log (default: logs/%x-%j.out; %x job name, %j job id)
  --sbatch-flag FLAG       another sbatch option, e.g. --sbatch-flag=--constraint=a100
                           (repeatable)
  --dry-run                print the commands, one per line, and run none
  -h, --help               this help
Example:
  launch/slurm.sh --nodes 2 --gpus-per-node 4 --time 24:00:00 \
      configs/cifar10_bilevel.py /shared/runs/c10 --config.num_epochs=100
EOF_USAGE
}

nodes=1 gpus_per_node="" cpus_per_gpu=8 time_limit="" partition="" account="" job_name=""
output="logs/%x-%j.out" sbatch_flags=() dry_run=0
while (($#)); do
  case $1 in
    --nodes | --gpus-per-node | --cpus-per-gpu | --time | --partition | --account | --job-name | \
      --output)
      need_value "$1" "${2-}" ;;&
    --sbatch-flag) need_value "$1" "${2-}" any ;;&
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    --nodes) nodes=$2; shift 2 ;;
    --gpus-per-node) gpus_per_node=$2; shift 2 ;;
    --cpus-per-gpu) cpus_per_gpu=$2; shift 2 ;;
    --time) time_limit=$2; shift 2 ;;
    --partition) partition=$2; shift 2 ;;
    --account) account=$2; shift 2 ;;
    --job-name) job_name=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    --sbatch-flag) sbatch_flags+=("$2"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (config overrides go after CONFIG WORKDIR; see --help)" ;;
    *) break ;;
  esac
done
[[ -n $gpus_per_node ]] || die "--gpus-per-node is required (see --help)"
for count in nodes gpus_per_node cpus_per_gpu; do
  [[ ${!count} =~ ^[1-9][0-9]*$ ]] ||
    die "--${count//_/-} must be a positive integer, got ${!count}"
done
check_run_args "${1-}" "${2-}"
config=$1 workdir=$2
shift 2
need_tool sbatch "run this on a SLURM login node"
need_jaxaug  # in the environment the job inherits
job_name=${job_name:-jaxaug-$(basename "$workdir")}

step=(srun --kill-on-bad-exit=1 python -m jaxaug.main --config "$config" --workdir "$workdir"
  --config.distributed.enabled=True "$@")
submit=(sbatch --parsable --job-name="$job_name" --nodes="$nodes" --ntasks-per-node="$gpus_per_node"
  --gpus-per-task=1 --cpus-per-task="$cpus_per_gpu" --signal=TERM@120 --output="$output"
  ${time_limit:+"--time=$time_limit"} ${partition:+"--partition=$partition"}
  ${account:+"--account=$account"} ${sbatch_flags[@]+"${sbatch_flags[@]}"}
  --wrap="$(quote_words "${step[@]}")")
log_dir=$(dirname "$output")
run mkdir -p "$log_dir"  # SLURM does not create it
if ((dry_run)); then
  run "${submit[@]}"
else
  job_id=$(run "${submit[@]}")
  log=${output//%x/$job_name}
  echo "submitted job $job_id; follow it with: tail -F ${log//%j/$job_id}"
fi
