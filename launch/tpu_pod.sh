#!/usr/bin/env bash
# Train on a Cloud TPU VM slice, the whole lifecycle. Run with --help for the usage.
set -euo pipefail
# shellcheck source=launch/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator-type TYPE [options] \
           CONFIG WORKDIR [--config.key=value ...]

Trains jaxaug on a Cloud TPU VM slice (queued resource NAME), start to end:
  1. creates the slice with `gcloud compute tpus queued-resources create` and waits until it
     is ACTIVE (an ACTIVE one of that name is reused; a SUSPENDED or FAILED one, such as a
     preempted spot slice, is deleted and created again);
  2. installs jaxaug at this checkout's commit (git HEAD; CONFIG must be committed) on every
     worker: a `git archive` of HEAD is copied to all workers and pip-installed with its
     `gcs` extra and jax[tpu] into a Python 3.11 virtualenv (~/jaxaug-venv, made with uv);
  3. runs `python -m jaxaug.main --config CONFIG --workdir WORKDIR
     --config.distributed.enabled=True [--config.key=value ...]` on all workers at once,
     streaming their output to the terminal and appending it to the log file;
  4. deletes the slice (unless --keep), also when training fails or is interrupted.
The workers share no disk: give WORKDIR as gs://BUCKET/PATH (the slice's service account
needs write access to the bucket; every worker takes part in writing each checkpoint, worker
0 writes the reports), or on a file system every worker mounts. A run that stopped (a preempted spot
slice, Ctrl-C) resumes from the newest checkpoint in WORKDIR when the same command is run
again, also on a new slice. The workers keep the code in ~/jaxaug and ~/jaxaug-venv.
Each worker downloads a tfds dataset itself unless --config.data.data_dir names a prepared
copy they share (e.g. on gs://).

Required:
  --name NAME              queued resource and TPU node name
  --zone ZONE              e.g. us-central2-b
  --accelerator-type TYPE  e.g. v4-32, v5litepod-16, v5p-32, v6e-16
Options:
  --runtime-version V      TPU software version (default: tpu-ubuntu2204-base for v2-v4,
                           v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p,
                           v2-alpha-tpuv6e for v6e)
  --project PROJECT        Google Cloud project (default: gcloud's configured one)
  --spot                   spot capacity (cheaper, can be preempted)
  --keep                   keep the slice at the end (the command that deletes it is printed)
  --log FILE               where the output is appended (default: logs/NAME.log)
  --dry-run                print the commands, one per line, and run none
  -h, --help               this help
Example:
  launch/tpu_pod.sh --name c10 --zone us-central2-b --accelerator-type v4-32 --spot \
      configs/cifar10_bilevel.py gs://my-bucket/runs/c10 --config.num_epochs=100
EOF
}

POLL_SECONDS=30
# shellcheck disable=SC2088  # on the workers, where the ~ expands
VENV_PYTHON="~/jaxaug-venv/bin/python"

default_runtime_version() {  # the TPU software version for JAX on accelerator type $1
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default --runtime-version for accelerator type $1: give one" ;;
  esac
}

qr() {  # sets `qr_command` to: gcloud compute tpus queued-resources ARGS... --zone (--project)
  qr_command=(gcloud compute tpus queued-resources "$@" --zone="$zone"
    ${project:+"--project=$project"})
}

qr_state() {  # the queued resource's state (ACTIVE, SUSPENDED, ...), empty if it does not exist
  qr describe "$name" --format='value(state.state)'
  "${qr_command[@]}" 2> /dev/null || true
}

create_slice() {
  qr create "$name" --node-id="$name" --accelerator-type="$accelerator_type" \
    --runtime-version="$runtime_version" ${spot:+--spot}
  run "${qr_command[@]}"
}

delete_slice() {
  qr delete "$name" --force --quiet
  run "${qr_command[@]}"
}

acquire_slice() {  # creates (or reuses) the slice and waits until it is ACTIVE
  note "1. create the slice; an ACTIVE $name is reused, a SUSPENDED or FAILED one is deleted first"
  if ((dry_run)); then
    create_slice
    note "wait until it is ACTIVE, asking every $POLL_SECONDS s:"
    qr describe "$name" --format='value(state.state)'
    run "${qr_command[@]}"
    return
  fi
  local state
  state=$(qr_state)
  case $state in
    "") create_slice ;;
    SUSPENDING | SUSPENDED | FAILED) delete_slice && create_slice ;;
    *) echo "queued resource $name exists ($state): using it" >&2 ;;
  esac
  while state=$(qr_state) && [[ $state != ACTIVE ]]; do
    case $state in
      SUSPENDING | SUSPENDED | FAILED | "") die "queued resource $name is ${state:-gone}" ;;
    esac
    echo "queued resource $name is $state; asking again in $POLL_SECONDS s" >&2
    sleep "$POLL_SECONDS"
  done
}

install_on_workers() {  # copies a git archive of HEAD to every worker and installs it there
  local archive_name="jaxaug-$commit.tar.gz"
  local archive="${TMPDIR:-/tmp}/$archive_name"
  note "2. install jaxaug at commit $commit on every worker"
  run git -C "$repo" archive --format=tar.gz --output="$archive" "$commit"
  qr scp "$archive" "$name:" --worker=all --node=all
  run "${qr_command[@]}"
  local install="set -e; rm -rf ~/jaxaug; mkdir ~/jaxaug; tar -xzf ~/$archive_name -C ~/jaxaug"
  install+="; python3 -m pip install --quiet --user --upgrade uv"
  install+="; python3 -m uv venv --allow-existing --python 3.11 ~/jaxaug-venv"
  install+="; python3 -m uv pip install --quiet --python $VENV_PYTHON 'jax[tpu]' \"\$HOME/jaxaug[gcs]\""
  qr ssh "$name" --worker=all --node=all --command="$install"
  run "${qr_command[@]}"
}

train_on_workers() {  # the same jaxaug.main command on every worker, its output streamed and logged
  local train
  train="cd ~/jaxaug && $VENV_PYTHON -m jaxaug.main $(quote_words \
    --config "$config_in_repo" --workdir "$workdir" --config.distributed.enabled=True "$@")"
  note "3. train on all workers; the output is streamed and appended to $log"
  run mkdir -p "$(dirname "$log")"
  qr ssh "$name" --worker=all --node=all --command="$train"
  run_logged "$log" "${qr_command[@]}" || {
    local status=$?
    echo "training stopped (status $status); the same command resumes it from the newest" \
      "checkpoint in $workdir" >&2
    exit "$status"
  }
}

finish() {  # deletes the slice, or with --keep says how to
  if ((keep)); then
    qr delete "$name" --force --quiet
    note "4. --keep: the slice is kept; delete it with: $(quote_words "${qr_command[@]}")"
  else
    note "4. delete the slice"
    delete_slice
  fi
}

name="" zone="" accelerator_type="" runtime_version="" project="" spot="" keep=0 log="" dry_run=0
while (($#)); do
  case $1 in
    --name | --zone | --accelerator-type | --runtime-version | --project | --log)
      need_value "$1" "${2-}" ;;&
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    --name) name=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --accelerator-type) accelerator_type=$2; shift 2 ;;
    --runtime-version) runtime_version=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --keep) keep=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (config overrides go after CONFIG WORKDIR; see --help)" ;;
    *) break ;;
  esac
done
for required in name zone accelerator_type; do
  [[ -n ${!required} ]] || die "--${required//_/-} is required (see --help)"
done
check_run_args "${1-}" "${2-}"
config=$1 workdir=$2
shift 2
need_tool gcloud "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
require_tool git "the workers get a git archive of this checkout"
runtime_version=${runtime_version:-$(default_runtime_version "$accelerator_type")}
log=${log:-logs/$name.log}
repo=$(git -C "$(dirname "$config")" rev-parse --show-toplevel 2> /dev/null) ||
  die "$config is not in a git checkout: the workers get a git archive of its checkout"
commit=$(git -C "$repo" rev-parse HEAD)
config_in_repo=$(git -C "$repo" ls-files --full-name --error-unmatch -- "$(realpath "$config")" \
  2> /dev/null) || die "$config is not committed: the workers get commit $commit; commit it first"
git -C "$repo" diff --quiet HEAD -- "$config_in_repo" ||
  echo "warning: $config has uncommitted changes; the workers run it as of commit $commit" >&2
[[ $workdir == gs://* ]] || echo "note: WORKDIR $workdir is not on gs://: it must be a file" \
  "system every worker mounts, kept after the slice is deleted for a rerun to resume" >&2

trap finish EXIT  # also when waiting, installing or training fails or is interrupted
acquire_slice
install_on_workers
train_on_workers "$@"
