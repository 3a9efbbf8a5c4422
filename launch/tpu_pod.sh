#!/usr/bin/env bash
# Run the same command on every worker of a Cloud TPU VM pod slice.
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
# The repository must be checked out and installed (pip install -e .) at ~/jaxaug on
# every worker; WORKDIR should be shared storage. jax.distributed.initialize() finds the
# other workers by itself on TPU VMs.
set -euo pipefail
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/jaxaug && python -m jaxaug.main --config $config --workdir $workdir --config.distributed.enabled=True $*"
