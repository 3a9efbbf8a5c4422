#!/usr/bin/env bash
# One process drives every accelerator of this host (jit over a mesh of all local devices).
#   launch/single_host.sh configs/cifar10_bilevel.py runs/c10 [--config.key=value ...]
set -euo pipefail
config=$1 workdir=$2
shift 2
exec python -m jaxaug.main --config "$config" --workdir "$workdir" "$@"
