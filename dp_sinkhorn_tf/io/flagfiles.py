"""Flagfiles: `--flagfile=NAME` looked up and expanded before absl sees the arguments.

NAME is looked up (1) as given, relative to the working directory (or, inside a flagfile,
relative to the file that names it), then (2) among the flagfiles shipped with the package
(`SHIPPED_FLAGFILES`, the repository's `launch/`), by NAME and by its base name. The syntax
is absl's: one flag per line, `#` and `//` comments. Every command line expands its argv
here (`cli.absl_parser`), and `train.flagfile` reads a run's flags.txt or a launch file with
it; so this sits in the bottom layer, below both.
"""

import os
from typing import List, Optional, Sequence

from dp_sinkhorn_tf.io import files

SHIPPED_FLAGFILES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "launch")
_FLAGFILE_PREFIXES = ("--flagfile=", "-flagfile=")
_MAX_DEPTH = 20


class FlagfileError(ValueError):
  """A --flagfile that cannot be found or read (the message names it)."""


def find_flagfile(name: str, relative_to: Optional[str] = None) -> str:
  """The path of flagfile `name`: relative to `relative_to` (the naming file's folder) or
  the working directory, else among the shipped flagfiles."""
  if files.is_remote(name):  # gs://…, ram://…: that file and no other
    if files.isfile(name):
      return name
    raise FlagfileError(f"--flagfile={name}: no such file")
  base = relative_to if relative_to is not None else os.getcwd()
  candidates = [os.path.join(base, os.path.expanduser(name))]
  if relative_to is not None:
    candidates.append(os.path.abspath(name))  # absl's own rule: the working directory
  candidates += [os.path.join(SHIPPED_FLAGFILES, name),
                 os.path.join(SHIPPED_FLAGFILES, os.path.basename(name))]
  for path in candidates:
    if files.is_remote(path):  # relative to a remote flagfile's folder
      if files.isfile(path):
        return path
    elif os.path.isfile(path):
      return os.path.normpath(path)
  where = "its folder" if relative_to is not None else "the working directory"
  raise FlagfileError(f"--flagfile={name}: no such file in {where} nor among the shipped "
                      f"flagfiles ({SHIPPED_FLAGFILES}: "
                      f"{', '.join(shipped_flagfiles()) or 'none'})")


def shipped_flagfiles() -> List[str]:
  if not os.path.isdir(SHIPPED_FLAGFILES):
    return []
  return sorted(f for f in os.listdir(SHIPPED_FLAGFILES) if f.endswith(".flags"))


def _read_flagfile(path: str) -> List[str]:
  try:
    lines = files.read_text(path).splitlines()  # local, or any tf.io.gfile path
  except (OSError, UnicodeDecodeError) as e:
    raise FlagfileError(f"--flagfile={path}: cannot read it "
                        f"({getattr(e, 'strerror', None) or type(e).__name__})") from None
  out = []
  for line in lines:
    line = line.strip()
    if line and not line.startswith(("#", "//")):
      out.append(line)
  return out


def expand_flagfiles(argv: Sequence[str], relative_to: Optional[str] = None,
                     _chain: tuple = ()) -> List[str]:
  """argv with every --flagfile=NAME replaced by the flags of the file it names
  (recursively; a file that includes itself is an error)."""
  out = []
  for arg in argv:
    prefix = next((p for p in _FLAGFILE_PREFIXES if arg.startswith(p)), None)
    if prefix is None:
      out.append(arg)
      continue
    path = find_flagfile(arg[len(prefix):], relative_to)
    if path in _chain or len(_chain) >= _MAX_DEPTH:
      raise FlagfileError(f"--flagfile={path}: includes itself "
                          f"({' → '.join(_chain + (path,))})")
    out += expand_flagfiles(_read_flagfile(path), os.path.dirname(path), _chain + (path,))
  return out
