"""Stopping a run cleanly: Ctrl-C or SIGTERM saves a checkpoint at the current step, then exits.

The training loop asks `StopSignals.requested(step)` after every step. In a single-process
run the first SIGINT or SIGTERM sets a flag; a second Ctrl-C raises KeyboardInterrupt at
once, while repeated SIGTERMs (schedulers and `timeout` may send several) are ignored. In a
multi-process run every process has to save the same step, so the decision is JAX's
preemption sync point, which the JAX distributed runtime raises on SIGTERM only; signal
handlers are then left alone (Ctrl-C stops without a checkpoint).
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
  """A run stopped on a signal after saving a checkpoint at `step`."""

  def __init__(self, step: int, signum: int, checkpoint_dir: str):
    self.step = step
    self.signum = signum
    super().__init__(
        f"stopped on {signal.Signals(signum).name} after step {step}; checkpoint saved in "
        f"{checkpoint_dir}. Run the same command again to resume.")


class StopSignals:
  """Context manager that turns SIGINT/SIGTERM into a stop request the loop acts on.

  Handlers are installed only in the main thread of a single-process run, and the
  previous handlers are restored on exit.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}

  def __enter__(self) -> "StopSignals":
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      # Signals ignored by the parent (SIGINT of a background job) stay ignored.
      self._previous = {signum: signal.getsignal(signum) for signum in SIGNALS
                        if signal.getsignal(signum) is not signal.SIG_IGN}
      for signum in self._previous:
        signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum: int, frame) -> None:
    del frame
    if self.signum is not None:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt  # Ctrl-C while stopping: stop at once
      return  # a repeated SIGTERM
    self.signum = signum
    hint = " (press Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
    try:  # os.write, not print: the main thread may be printing to the same stream
      os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step with a "
                  f"checkpoint{hint}\n".encode())
    except OSError:  # stderr is a pipe whose reader has gone or a closed terminal: stop anyway
      pass

  def requested(self, step: int) -> bool:
    """True when the run should save a checkpoint at `step` (steps done) and stop."""
    if jax.process_count() > 1:
      try:
        reached = multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # the preemption service is disabled
        return False
      if reached:
        self.signum = signal.SIGTERM
      return reached
    return self.signum is not None
