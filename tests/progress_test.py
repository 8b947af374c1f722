"""Tests for train/progress.py: speed and time left against hand-computed values."""

import io

from absl.testing import absltest

from dp_sinkhorn_tf.train import progress


class FakeClock:

  def __init__(self, t: float = 100.0):
    self.t = t

  def __call__(self) -> float:
    return self.t


def _line(clock, tty=False, **kwargs):
  out = io.StringIO()
  return progress.ProgressLine(stream=out, clock=clock, tty=tty, **kwargs), out


class FormatDurationTest(absltest.TestCase):

  def test_values(self):
    self.assertEqual(progress.format_duration(0), "0:00:00")
    self.assertEqual(progress.format_duration(59.6), "0:01:00")
    self.assertEqual(progress.format_duration(6145), "1:42:25")
    self.assertEqual(progress.format_duration(90061), "25:01:01")
    self.assertEqual(progress.format_duration(-3), "0:00:00")


class ProgressLineTest(absltest.TestCase):

  def test_a_prefix_comes_before_the_step(self):
    line, out = _line(FakeClock(), prefix="warm start: ")
    line.report(3, 10, {"loss": 0.5})
    self.assertEqual(out.getvalue(), "warm start: step 3/10 (30.0%) · loss 0.5000\n")

  def test_speed_counts_from_the_first_report_not_from_step_zero(self):
    # Compilation before the first report (step 1000) must not enter the speed, and the
    # steps before it were already taken: 1000 steps in 12 s after it → 12 ms/step.
    clock = FakeClock()
    line, out = _line(clock, file_interval=0)
    line.report(1000, 200000, {"epsilon": 1.5})
    clock.t += 12.0
    line.report(2000, 200000, {"epsilon": 2.0})
    first, second = out.getvalue().splitlines()
    self.assertEqual(first, "step 1000/200000 (0.5%) · epsilon 1.5000")
    # 198,000 steps left at 12 ms → 2,376 s.
    self.assertEqual(second, "step 2000/200000 (1.0%) · 12.0 ms/step · 0:39:36 left · "
                             "epsilon 2.0000")

  def test_a_resume_halfway_gets_the_time_left_of_its_own_speed(self):
    # Resumed at 100,000: 1,000 steps in 10 s → 10 ms/step, 98,000 steps left → 980 s.
    # Keras's Progbar divided by all 102,000 steps: ~0.1 ms/step and 10 s left.
    clock = FakeClock()
    line, out = _line(clock, file_interval=0)
    line.report(101000, 200000, {})
    clock.t += 10.0
    line.report(102000, 200000, {})
    self.assertEqual(out.getvalue().splitlines()[1],
                     "step 102000/200000 (51.0%) · 10.0 ms/step · 0:16:20 left")

  def test_last_step_reports_total_time_and_is_never_dropped(self):
    clock = FakeClock()
    line, out = _line(clock, file_interval=3600)
    line.report(10, 30, {})
    clock.t += 1.0
    line.report(20, 30, {})  # within the interval: not written
    clock.t += 1.0
    line.report(30, 30, {"epsilon": 9.9})
    self.assertEqual(out.getvalue().splitlines(),
                     ["step 10/30 (33.3%)", "step 30/30 (100.0%) · 100.0 ms/step · "
                      "done in 0:00:02 · epsilon 9.9000"])

  def test_log_file_lines_are_rate_limited(self):
    clock = FakeClock()
    line, out = _line(clock, file_interval=10.0)
    for step in range(1, 100):  # one report per second
      line.report(step, 1000, {})
      clock.t += 1.0
    steps = [int(text.split()[1].split("/")[0]) for text in out.getvalue().splitlines()]
    self.assertEqual(steps, list(range(1, 100, 10)))

  def test_terminal_rewrites_one_line_and_ends_it_at_the_last_step(self):
    clock = FakeClock()
    line, out = _line(clock, tty=True, tty_interval=0)
    line.report(1, 2, {})
    clock.t += 0.5
    line.report(2, 2, {})
    self.assertEqual(out.getvalue(), "\r\x1b[Kstep 1/2 (50.0%)"
                                     "\r\x1b[Kstep 2/2 (100.0%) · 500.0 ms/step · "
                                     "done in 0:00:00\n")

  def test_tty_is_detected_from_the_stream(self):
    self.assertFalse(progress.ProgressLine(stream=io.StringIO())._tty)


if __name__ == "__main__":
  absltest.main()
