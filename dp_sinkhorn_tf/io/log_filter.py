"""Drops the C++ log lines that TF_CPP_MIN_LOG_LEVEL does not reach from the process's stderr.

XLA in TF 2.15 logs through absl's C++ logging, which no environment variable quiets: the
first XLA compilation of a command (the exact noise sampler is XLA-compiled) prints

  WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
  I0000 00:00:1796628792.748181   15441 device_compiler.h:186] Compiled cluster using XLA!  …

`filter_stderr` puts a pipe in place of file descriptor 2 and a thread that copies every line
to the original stderr except those matching `NOISE`, so the lines are gone whichever
library writes them; everything else (our `error:` lines, warnings, tracebacks, a child
process's output) passes unchanged and in order. At exit the original descriptor is put
back and the thread drains the pipe before the process ends.
"""

import atexit
import os
import re
import sys
import threading

# Whole lines (without the newline) that a command never shows unless --verbosity asks.
NOISE = (
    re.compile(rb"WARNING: All log messages before absl::InitializeLog\(\) is called are "
               rb"written to STDERR"),
    re.compile(rb"I\d{4} [\d:.]+ +\d+ device_compiler\.h:\d+\] Compiled cluster using XLA!.*"),
)


def is_noise(line: bytes) -> bool:
  return any(p.fullmatch(line) for p in NOISE)


def filter_stderr() -> None:
  """Filters file descriptor 2 through `is_noise` for the rest of the process (idempotent)."""
  if getattr(filter_stderr, "installed", False):
    return
  sys.stderr.flush()
  original = os.dup(2)
  read_end, write_end = os.pipe()
  os.dup2(write_end, 2)
  os.close(write_end)

  def pump():
    pending = b""
    while True:
      chunk = os.read(read_end, 1 << 16)
      if not chunk:
        break
      *lines, pending = (pending + chunk).split(b"\n")
      kept = b"".join(line + b"\n" for line in lines if not is_noise(line))
      if kept:
        os.write(original, kept)
    if pending and not is_noise(pending):
      os.write(original, pending)
    os.close(read_end)

  thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
  thread.start()

  def restore():
    sys.stderr.flush()
    os.dup2(original, 2)  # the pipe's last write end closes: the thread sees EOF
    thread.join(timeout=10)

  atexit.register(restore)
  filter_stderr.installed = True
