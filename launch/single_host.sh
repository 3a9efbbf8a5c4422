#!/usr/bin/env bash
# Train on one host with one process driving all of its GPUs. Run with --help for the usage.
set -euo pipefail
# shellcheck source=launch/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: launch/single_host.sh [options] CONFIG WORKDIR [--config.key=value ...]

Runs `python -m jaxaug.main --config CONFIG --workdir WORKDIR [--config.key=value ...]` as one
process that drives every visible accelerator of this host (the batch is split over them);
run it in the environment where jaxaug is installed. The script becomes that process (exec),
so Ctrl-C, or a SIGTERM sent to the script, reaches the training itself: it saves a checkpoint
at the current step and stops with status 130 (143 for SIGTERM). Running the same command
again resumes from the newest checkpoint in WORKDIR.

Options:
  --gpus LIST     only these GPUs, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES; default: all)
  --log FILE      also append the output to FILE (to its end, also after Ctrl-C)
  --dry-run       print the command and run nothing
  -h, --help      this help
Example:
  launch/single_host.sh --gpus 0,1,2,3 configs/cifar10_bilevel.py runs/c10 --config.num_epochs=100
EOF_USAGE
}

gpus="" log="" dry_run=0
while (($#)); do
  case $1 in
    --gpus | --log) need_value "$1" "${2-}" ;;&
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    --gpus) gpus=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (config overrides go after CONFIG WORKDIR; see --help)" ;;
    *) break ;;
  esac
done
[[ -z $gpus || $gpus =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus must be a list such as 0,1, got $gpus"
check_run_args "${1-}" "${2-}"
config=$1 workdir=$2
shift 2
need_jaxaug

train=(python -m jaxaug.main --config "$config" --workdir "$workdir" "$@")
if [[ -n $gpus ]]; then
  train=(env "CUDA_VISIBLE_DEVICES=$gpus" "${train[@]}")
fi
if [[ -n $log ]]; then
  run mkdir -p "$(dirname "$log")"
  run_logged_instead "$log" "${train[@]}"
else
  run_instead "${train[@]}"
fi
