"""Data parallelism with jit over a device mesh.

The batch is split over a 1-D mesh axis `data` spanning every device of every
process; the train state is replicated. Each process feeds its own rows of the
global batch (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(settings) -> None:
  """`jax.distributed.initialize` when `settings.enabled` (config.distributed).

  Its coordinator_address, num_processes and process_id are passed on; the unset ones
  (None) JAX detects from the cluster (Cloud TPU, SLURM, Open MPI, ...).
  """
  if settings.enabled and not jax.distributed.is_initialized():
    jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                               num_processes=settings.num_processes,
                               process_id=settings.process_id)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh, axis name `data`, over `devices` (default: all devices of all processes)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def check_batch_divisible(name: str, batch_size: int, mesh: Mesh) -> None:
  """ValueError unless `batch_size` splits evenly over the mesh's devices."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(f"{name}={batch_size} is not divisible by the number of devices ({devices})")


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int) -> NamedSharding:
  """Sharding that splits axis `batch_axis` over the `data` mesh axis."""
  return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh, *, batch_axis: int = 0) -> dict[str, Any]:
  """Global arrays from this process's rows of a batch, split along `batch_axis`."""
  sharding = batch_sharding(mesh, batch_axis)
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in batch.items()}


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Replicates a pytree of arrays on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))
