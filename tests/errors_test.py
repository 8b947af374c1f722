"""Tests for dp_sinkhorn_tf.io.errors: the one-line text of any error and of a bad flag."""

import pytest

from dp_sinkhorn_tf.io import errors


class _OpError(Exception):
  """Like tf.errors.OpError: str() appends context below the `message` attribute."""

  def __init__(self, message):
    super().__init__(f"{message}\n\nOriginal stack trace for 'op':")
    self.message = message


@pytest.mark.parametrize("error, line", [
    (ValueError("--steps=0: expected 1\nsecond line"), "--steps=0: expected 1"),
    (ValueError("  padded  \n"), "padded"),
    (OSError(), "OSError"),  # no text: the type's name
    (KeyError("k"), "'k'"),  # a KeyError's text is the repr of its key
    (_OpError("Read less bytes than requested"), "Read less bytes than requested"),
])
def test_first_line(error, line):
  assert errors.first_line(error) == line


def test_require_raises_the_flag_line_as_the_given_error():
  errors.require(True, "steps", "an integer ≥ 1", 0)
  with pytest.raises(errors.FlagError, match=r"^--fid='x': expected one of none\|pixels$"):
    errors.require(False, "fid", "one of none|pixels", "x", error=errors.FlagError)
  with pytest.raises(ValueError, match=r"^--workdir='': expected a path$") as e:
    errors.require(False, "workdir", "a path", "")
  assert type(e.value) is ValueError


def test_a_flag_error_is_a_value_error():
  # Entry points turn every ValueError into one `error:` line and exit 2 (`cli.main_of`).
  assert issubclass(errors.FlagError, ValueError)
