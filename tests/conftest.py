"""Test set-up: 8 simulated CPU devices, float32 default.

XLA compiles the tests' programs without its backend optimisations: the tests' programs are
small and many, so compiling takes most of their time, and that flag makes it about 30% faster.
Training runs, the bench and the experiments compile with XLA's defaults.
"""

import os
import signal

import pytest

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def sigint_not_ignored():
  """Ctrl-C handled as usual, also when pytest runs as a background job (which ignores SIGINT):
  a child process then starts with SIGINT's default action, not ignoring it."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)
