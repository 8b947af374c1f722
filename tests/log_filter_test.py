"""Tests for dp_sinkhorn_tf.io.log_filter: XLA's absl lines leave stderr, nothing else does."""

import subprocess
import sys

from dp_sinkhorn_tf.io import log_filter

ABSL_WARNING = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
XLA_LINE = (b"I0000 00:00:1796628792.748181   15441 device_compiler.h:186] Compiled cluster using "
            b"XLA!  This line is logged at most once for the lifetime of the process.")


def test_the_noise_patterns_match_whole_lines_only():
  assert log_filter.is_noise(ABSL_WARNING) and log_filter.is_noise(XLA_LINE)
  assert not log_filter.is_noise(b"error: " + XLA_LINE)       # not at the start: kept
  assert not log_filter.is_noise(XLA_LINE.replace(b"XLA!", b"XLA?"))
  assert not log_filter.is_noise(b"I0000 00:00:1.0 1 other.cc:1] Compiled cluster using XLA!")
  assert not log_filter.is_noise(b"error: --steps=0: expected an integer >= 1")


def test_a_filtered_process_keeps_every_other_line_in_order_and_its_unterminated_tail():
  script = f"""
import os, subprocess, sys
from dp_sinkhorn_tf.io import log_filter
log_filter.filter_stderr()
log_filter.filter_stderr()  # idempotent
os.write(2, {ABSL_WARNING!r} + b"\\n" + b"first\\n" + {XLA_LINE!r} + b"\\nsec")
os.write(2, b"ond\\n")
print("from python", file=sys.stderr)
subprocess.run([sys.executable, "-c", "import os; os.write(2, {XLA_LINE!r} + b'\\\\nchild\\\\n')"])
sys.stderr.write("tail without newline")
"""
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == b"first\nsecond\nfrom python\nchild\ntail without newline"
