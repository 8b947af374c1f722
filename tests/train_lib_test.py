"""Tests for dp_sinkhorn_tf.train.train_lib: the loop over fakes of its step function, ledger,
checkpoint manager and outputs (no TensorFlow step runs here; the whole runs, kills and
resumes are trainer_test's and main_test's).

Every fake appends to one event list, so a test reads the order in which the loop charges,
runs, reads, checkpoints and publishes."""

import dataclasses

import pytest

from dp_sinkhorn_tf.train import config as config_lib
from dp_sinkhorn_tf.train import train_lib


class FakeSteps:
  """train_lib.DeviceSteps without a device: counts steps, reads on request."""

  def __init__(self, events, diverge_at=None):
    self.events, self.diverge_at = events, diverge_at
    self.t = 0
    self.calls = self.reads = 0

  def run(self, count):
    self.events.append(("run", self.t, count))
    self.t += count
    self.calls += 1

  def read(self):
    self.reads += 1
    finite = self.diverge_at is None or self.t < self.diverge_at
    self.events.append(("read", self.t))
    return {"weights_finite": 1.0 if finite else 0.0, "loss": float(self.t)}

  def step_reached(self):
    return self.diverge_at


@dataclasses.dataclass(frozen=True)
class FakeLedger:
  """The part of accounting.PrivacyLedger the loop uses: charged / checkpointed steps."""

  events: list
  steps_taken: int = 0
  checkpoint_step: int = 0

  def charged_through(self, end):
    return dataclasses.replace(self, steps_taken=max(self.steps_taken, end))

  def checkpointed(self, step):
    return dataclasses.replace(self, checkpoint_step=step)

  def epsilon(self):
    return self.steps_taken / 100

  def save(self, path):
    self.events.append(("ledger", path, self.steps_taken, self.checkpoint_step))


class FakeManager:
  def __init__(self, events):
    self.events = events

  def save(self, checkpoint_number):
    self.events.append(("checkpoint", checkpoint_number))


class FakeOutputs:
  def __init__(self, events):
    self.events = events

  def log(self, t, logs):
    self.events.append(("log", t, logs["epsilon"]))

  def sample(self, t):
    self.events.append(("sample", t))

  def publish(self, t, ledger):
    self.events.append(("publish", t))

  def close(self):
    self.events.append(("close",))


def _run_config(**overrides):
  run = dict(workdir="unused", log_every=2, sample_every=10**6, checkpoint_every=4)
  run.update(overrides)
  return config_lib.RunConfig(**run)


def _loop(total, start=0, ledger_path="ledger.json", diverge_at=None, stop=None, dp=True,
          on_log=None, **run):
  events = []
  steps = FakeSteps(events, diverge_at)
  steps.t = start
  ledger = FakeLedger(events, start, start) if dp else None
  result = train_lib._train_loop(steps, ledger, ledger_path, FakeManager(events),
                                 FakeOutputs(events), _run_config(**run), start, total,
                                 on_log=on_log, stop=stop)
  return events, steps, result


def test_each_chunk_is_charged_before_it_runs_and_published_after_its_checkpoint():
  events, _, (ledger, steps_run, logs) = _loop(6)
  assert events == [
      ("ledger", "ledger.json", 4, 0),  # write-ahead: [0, 4) charged before any step runs
      ("run", 0, 2), ("read", 2), ("log", 2, 0.04),
      ("run", 2, 2), ("read", 4), ("log", 4, 0.04),
      ("checkpoint", 4), ("ledger", "ledger.json", 4, 4), ("publish", 4),
      ("ledger", "ledger.json", 6, 4),  # the last chunk ends at the plan's steps
      ("run", 4, 2), ("read", 6), ("log", 6, 0.06),
      ("checkpoint", 6), ("ledger", "ledger.json", 6, 6), ("publish", 6)]
  assert (ledger.steps_taken, ledger.checkpoint_step, steps_run) == (6, 6, 2 + 2 + 2)
  assert logs == {"loss": 6.0, "epsilon": 0.06}


def test_the_device_is_read_only_at_log_sample_and_checkpoint_points():
  events, steps, _ = _loop(12, log_every=5, sample_every=3, checkpoint_every=8)
  runs = [(t, k) for kind, t, *k in [e for e in events if e[0] == "run"] for k in k]
  # Each call runs to the next log (5, 10), sample (3, 6, 9) or chunk end (8, 12).
  assert runs == [(0, 3), (3, 2), (5, 1), (6, 2), (8, 1), (9, 1), (10, 2)]
  assert steps.calls == 7 and steps.reads == 7
  assert [e[1] for e in events if e[0] == "sample"] == [3, 6, 9]
  # One call per point and one read per call: a long gap between points is one call.
  events, steps, _ = _loop(100, log_every=50, checkpoint_every=100)
  assert (steps.calls, steps.reads) == (2, 2)


def test_steps_per_call_splits_a_call_without_reading_between():
  events, steps, _ = _loop(8, log_every=8, checkpoint_every=8, steps_per_call=3)
  assert [e[2] for e in events if e[0] == "run"] == [3, 3, 2]
  assert (steps.calls, steps.reads) == (3, 1)


def test_a_stop_takes_effect_at_the_call_boundary_inside_the_charged_chunk():
  events = []
  polls = []

  def stop():
    polls.append(1)
    return len(polls) >= 2  # asked during the second call of the chunk [0, 8)

  with pytest.raises(train_lib.Interrupted, match="stopped at step 4 of 12") as info:
    train_lib._train_loop(FakeSteps(events), FakeLedger(events), "l", FakeManager(events),
                          FakeOutputs(events), _run_config(log_every=2, checkpoint_every=8),
                          0, 12, stop=stop)
  assert info.value.step == 4
  # Charged through 8 (the chunk), checkpointed at 4: a resume re-runs 4..7 on the same key.
  assert events[0] == ("ledger", "l", 8, 0)
  assert events[-6:] == [("read", 4), ("log", 4, 0.08), ("checkpoint", 4),
                         ("ledger", "l", 8, 4), ("publish", 4), ("close",)]
  assert [e for e in events if e[0] == "run"] == [("run", 0, 2), ("run", 2, 2)]


def test_non_finite_weights_stop_the_run_before_the_chunk_is_checkpointed():
  with pytest.raises(train_lib.DivergedError,
                     match=r"step 5: .*NaN or inf.*last good checkpoint: step 4"):
    _loop(12, diverge_at=5, log_every=2, checkpoint_every=4)


def test_a_worker_saves_no_ledger_and_nodp_charges_nothing():
  events, _, (ledger, _, _) = _loop(4, ledger_path=None)
  assert not [e for e in events if e[0] == "ledger"]
  assert ledger.steps_taken == 4  # the worker still tracks what the chief charged
  logged = []
  events, _, (ledger, _, _) = _loop(4, dp=False, on_log=lambda *a: logged.append(a))
  assert ledger is None and not [e for e in events if e[0] == "ledger"]
  assert [(t, total, sorted(logs)) for t, total, logs in logged] == [
      (2, 4, ["epsilon", "loss"]), (4, 4, ["epsilon", "loss"])]


def test_dp_runs_hand_on_log_only_the_epsilon_charged():
  logged = []
  _loop(4, on_log=lambda *a: logged.append(a))
  assert logged == [(2, 4, {"epsilon": 0.04}), (4, 4, {"epsilon": 0.04})]


def test_a_resume_starts_at_the_restored_step():
  events, _, (ledger, steps_run, _) = _loop(8, start=4)
  assert events[0] == ("ledger", "ledger.json", 8, 4)
  assert [e[1] for e in events if e[0] == "run"] == [4, 6]
  assert steps_run == 4 and ledger.checkpoint_step == 8


def test_steps_this_call_stops_at_the_next_point():
  run = _run_config(log_every=10, sample_every=25, checkpoint_every=100)
  assert train_lib._steps_this_call(0, 100, run) == 10
  assert train_lib._steps_this_call(20, 100, run) == 5  # the sample at 25
  assert train_lib._steps_this_call(95, 97, run) == 2  # the chunk end
  capped = dataclasses.replace(run, steps_per_call=3)
  assert train_lib._steps_this_call(0, 100, capped) == 3
