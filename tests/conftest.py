"""Test set-up: 8 simulated CPU devices, float32 default.

The default run (`-m 'not slow'`) compiles without XLA's backend optimisations and, where
jaxlib has the choice (before 0.11), with XLA:CPU's older fusion emitters: its programs are
small and many, so compiling takes most of its time, and these flags about halve it. The slow
run compiles as training runs do, with XLA's defaults: its whole-run comparisons (resumed
against uninterrupted, several processes against one, float64 checks next to the warp's kinks)
are about the programs users run.
"""

import importlib.metadata
import os
import signal

import pytest


def fast_compile_flags() -> list[str]:
  """XLA flags that compile faster, for programs whose speed does not matter."""
  flags = ["--xla_backend_optimization_level=0"]
  jaxlib = tuple(int(part) for part in importlib.metadata.version("jaxlib").split(".")[:2])
  if jaxlib < (0, 11):  # jaxlib 0.12 has no such flag (XLA aborts on unknown ones)
    flags.append("--xla_cpu_use_fusion_emitters=false")
  return flags


def pytest_configure(config):
  """XLA's flags, before jax is imported anywhere in the test session (test modules are
  imported after this hook, in every xdist worker too; subprocesses inherit them)."""
  flags = ["--xla_force_host_platform_device_count=8"]
  if config.option.markexpr.strip() == "not slow":
    flags += fast_compile_flags()
  os.environ.setdefault("XLA_FLAGS", " ".join(flags))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def sigint_not_ignored():
  """Ctrl-C handled as usual, also when pytest runs as a background job (which ignores SIGINT):
  a child process then starts with SIGINT's default action, not ignoring it."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)
