"""The training progress line: step, speed, time left and ε charged. No TensorFlow, no flags.

  step 3000/200000 (1.5%) · 31.2 ms/step · 1:42:25 left · epsilon 4.7363

The speed is measured from the first report this process made, not from its start: the
time before it (loading, restoring a checkpoint, XLA compilation) is not a training step,
and after a resume the steps already taken were not taken by this process. So

  ms/step = (now − t₀) / (step − step₀),   time left = ms/step · (total − step),

with (t₀, step₀) the first report; until a second report there is no speed to show.
(Keras's Progbar, used before, divides by all steps since step 0 and so under-stated the
time left, by ~100× on a resume halfway through.)

Privacy: the step and ε are independent of the data, but no timing is covered by ε (a
step's time depends weakly on the private data: Sinkhorn solves stop at convergence, the
real batch is padded to a power-of-two bucket), so the speed and time left are for the
operator, not for publication (README, "what is safe to publish").

On a terminal the line is rewritten in place, at most every `tty_interval` seconds; in a
log file each report is its own line, at most one per `file_interval` seconds. The last
step is always reported.
"""

import sys
import time
from typing import Callable, Mapping, Optional, TextIO


def format_duration(seconds: float) -> str:
  """h:mm:ss for seconds ≥ 0 (rounded to the second), e.g. 6145 → "1:42:25"."""
  s = int(round(max(seconds, 0.0)))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressLine:
  """Reports progress as `report(step, total, values)`; see the module docstring."""

  def __init__(self, stream: Optional[TextIO] = None,
               clock: Callable[[], float] = time.monotonic,
               tty: Optional[bool] = None, tty_interval: float = 0.1,
               file_interval: float = 10.0, prefix: str = ""):
    self._prefix = prefix  # e.g. "warm start: fit " before "step 300/3000 …"
    self._stream = stream if stream is not None else sys.stdout
    self._clock = clock
    if tty is None:
      isatty = getattr(self._stream, "isatty", None)
      tty = bool(isatty and isatty())
    self._tty = tty
    self._interval = tty_interval if tty else file_interval
    self._first = None  # (time, step) of this process's first report
    self._last_written = None  # time of the last line written

  def speed(self, step: int, now: float) -> Optional[float]:
    """Seconds per step from the first report to (now, step); None before a second report."""
    if self._first is None or step <= self._first[1]:
      return None
    t0, step0 = self._first
    return (now - t0) / (step - step0)

  def line(self, step: int, total: int, values: Mapping[str, float], now: float) -> str:
    """The text of the report of `step` at time `now` (no line ending)."""
    parts = [f"{self._prefix}step {step}/{total} ({100.0 * step / total:.1f}%)" if total
             else f"{self._prefix}step {step}"]
    per_step = self.speed(step, now)
    if per_step is not None:
      parts.append(f"{1e3 * per_step:.1f} ms/step")
      if step < total:
        parts.append(f"{format_duration(per_step * (total - step))} left")
      else:
        parts.append(f"done in {format_duration(now - self._first[0])}")
    parts += [f"{k} {v:.4f}" for k, v in values.items()]
    return " · ".join(parts)

  def report(self, step: int, total: int, values: Mapping[str, float]) -> None:
    now = self._clock()
    if self._first is None:
      self._first = (now, step)
    last = step >= total
    if (not last and self._last_written is not None
        and now - self._last_written < self._interval):
      return
    text = self.line(step, total, values, now)
    if self._tty:
      self._stream.write("\r\x1b[K" + text + ("\n" if last else ""))
    else:
      self._stream.write(text + "\n")
    self._stream.flush()
    self._last_written = now
