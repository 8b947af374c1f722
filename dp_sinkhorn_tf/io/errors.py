"""One-line errors, shared by every layer: the text an error line shows, and a bad flag.

Every entry point prints a failure as one line `error: …` (`cli`); the layers below raise
errors whose message is that line. This module is the one place that says how such a line
is made from any exception (`first_line`) and from a bad flag value (`require`,
`FlagError`). It imports nothing, so io/ and everything above may use it.
"""


class FlagError(ValueError):
  """A bad flag value; the message is one line starting with --flag."""


def first_line(e: BaseException) -> str:
  """The first line of `e`'s text (a TensorFlow OpError's own `message`, without the op
  context TF appends), or its type's name when the text is empty."""
  text = str(getattr(e, "message", None) or e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def require(condition: bool, flag: str, expected: str, value,
            error: type = ValueError) -> None:
  """Raises `error("--flag=value: expected …")` unless `condition`: the one-line form of a bad
  flag value that every entry point prints (the value as its repr, so '' and ' ' show)."""
  if not condition:
    raise error(f"--{flag}={value!r}: expected {expected}")
