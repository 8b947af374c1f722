"""What every command line shares: flagfile lookup and one-line errors.

Flagfiles. `--flagfile=NAME` is looked up (1) as given, relative to the working directory
(or, inside a flagfile, relative to the file that names it), then (2) among the flagfiles
shipped with the package (`SHIPPED_FLAGFILES`, the repository's `launch/`), by NAME and by
its base name. So `python -m dp_sinkhorn_tf.main --flagfile=cifar.flags` works from any
directory and from an installed package, and a user's own flagfile may start with
`--flagfile=common.flags` to build on the shipped defaults. The files are expanded here,
before absl sees the arguments (absl itself would resolve nested names against the working
directory only); the syntax is absl's: one flag per line, `#` and `//` comments.

Errors. Entry points print `error: <one line>` to stderr and exit 2 (bad input) or 1 (the
work failed), never a traceback.

One style for every entry point (main, audit, export, sample, evaluate, bench): absl flags,
checked before any work starts, parsed by `absl_parser`. The training commands (main, audit)
share absl's global registry (`train_flags`, with absl's own --verbosity, --helpfull, …);
the others each own a private `flags.FlagValues`, so that their flags (an evaluation's
--batch_size is not a training --batch_size) can be imported beside the training flags, and
run through `main_of`:

  FLAGS = flags.FlagValues()
  flags.DEFINE_string("model", None, "…", flag_values=FLAGS)
  @dataclasses.dataclass(frozen=True)
  class Config: …                       # one field per flag, validated (cli.require)
  def config_from_flags(f) -> Config: … # at once, before any work; raises ValueError
  def run(cfg: Config) -> int: …        # the work; reads nothing but cfg
  main = cli.main_of(lambda f: run(config_from_flags(f)), FLAGS)  # main(argv) -> exit code
  if __name__ == "__main__": sys.exit(main())
"""

import os
import sys
from typing import List, NoReturn, Optional, Sequence

from dp_sinkhorn_tf.io import files, flagdefs

SHIPPED_FLAGFILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch")
_FLAGFILE_PREFIXES = ("--flagfile=", "-flagfile=")
_MAX_DEPTH = 20


# The flags several command lines share (--workdir, --seed, --model): one type and one
# validation each, the help saying what the flag means to the command line that defines it:
#   cli.define_shared("workdir", "Run directory of dp_sinkhorn_tf.main.", flag_values=FLAGS)
# The training flags define theirs from their config fields (`train.config.option`).
define_shared = flagdefs.define_shared


class FlagfileError(ValueError):
  """A --flagfile that cannot be found or read (the message names it)."""


def require(condition: bool, flag: str, expected: str, value,
            error: type = ValueError) -> None:
  """Raises `error("--flag=value: expected …")` unless `condition`: the one-line form of a bad
  flag value that every entry point prints (the value as its repr, so '' and ' ' show)."""
  if not condition:
    raise error(f"--{flag}={value!r}: expected {expected}")


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


def fail(message: str, code: int = 2) -> NoReturn:
  """Prints `error: message` (one line) and exits with `code`."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def tf_error(e: Exception, what: str) -> str:
  text = str(e).strip()
  return f"{what}: {text.splitlines()[0] if text else type(e).__name__}"


def _print_help(flag_values, program: str) -> None:
  print(f"usage: python -m {program} --flag=value …\n")
  print(flag_values.get_help(include_special_flags=False))


def _asks_for_logs(argv: Sequence[str]) -> bool:
  """Whether the command line sets absl's --verbosity (or -v / --v)."""
  return any(a.split("=")[0] in ("--verbosity", "-verbosity", "-v", "--v") for a in argv)


def quiet_start(argv: Sequence[str]) -> None:
  """Silences TensorFlow's start-up lines (oneDNN notes, cuDNN / cuFFT / cuBLAS factory
  registrations logged as errors) and the INFO lines of TF's Python logger, unless the command line asks with --verbosity / -v or TF_CPP_MIN_LOG_LEVEL
  is set. Called before TensorFlow is imported (its C++ log level is read at import)."""
  if _asks_for_logs(argv):
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import logging  # pylint: disable=g-import-not-at-top
  logging.getLogger("tensorflow").setLevel(logging.WARNING)


def absl_parser(flag_values):
  """A `flags_parser` for `absl.app.run`: quiets TensorFlow's start-up (`quiet_start`),
  expands flagfiles (as above), then parses with `flag_values`; any error (unknown flag,
  bad value, missing flagfile) is one line, exit 2."""
  from absl import flags

  def parse(argv):
    if flag_values is not flags.FLAGS and any(a in ("--help", "-h", "-help", "--helpfull")
                                              for a in argv[1:]):
      _print_help(flag_values, os.path.basename(str(argv[0])))
      sys.exit(0)
    try:
      expanded = expand_flagfiles(argv[1:])
      quiet_start(expanded)  # a --verbosity in a flagfile counts
      rest = flag_values([argv[0], *expanded])
      if not _asks_for_logs(expanded) and "verbosity" in flags.FLAGS:
        # absl.app.run raises an unset --verbosity to INFO; keep its WARNING default (an
        # assignment counts as set). TF's SavedModel code logs through absl.
        flags.FLAGS.verbosity = -1
      return rest
    except (flags.Error, FlagfileError) as e:
      text = str(e).strip()
      fail(text.splitlines()[0] if text else type(e).__name__)

  return parse


def main_of(run, flag_values, program: Optional[str] = None):
  """`main(argv=None) -> exit code` of an entry point on a private FlagValues: parses argv
  (sys.argv when None; argv[0] is the program) with `absl_parser`, refuses positional
  arguments, then returns run(flag_values). A ValueError / FileNotFoundError from `run` is
  bad input (one line, 2), Ctrl-C is one line and 130; the flags are unparsed afterwards,
  so main can be called again in one process (tests)."""

  def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if program is not None and argv:
      argv[0] = program
    try:
      try:
        rest = absl_parser(flag_values)(argv)
      except SystemExit as e:
        return int(e.code or 0)
      if len(rest) > 1:
        print(f"error: unexpected arguments {rest[1:]}: all options are --flags",
              file=sys.stderr)
        return 2
      return run(flag_values)
    except (ValueError, FileNotFoundError) as e:
      text = str(e).strip()
      print(f"error: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
      return 2
    except KeyboardInterrupt:
      print("\ninterrupted: nothing was published; re-run the command", file=sys.stderr)
      return 130
    finally:
      flag_values.unparse_flags()

  return main
