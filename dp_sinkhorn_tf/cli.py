"""What every command line shares: flagfile lookup and one-line errors.

Flagfiles (`io.flagfiles`, re-exported here). `--flagfile=NAME` is looked up (1) as given, relative to the working directory
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
from typing import NoReturn, Optional, Sequence

from dp_sinkhorn_tf.io import errors, flagdefs, flagfiles, log_filter

# Every command line's flagfile lookup (the layer below: `train.flagfile` reads them too).
FlagfileError = flagfiles.FlagfileError
expand_flagfiles = flagfiles.expand_flagfiles
find_flagfile = flagfiles.find_flagfile

# The one-line forms of an error (`io.errors`, where the layers below raise them too).
require = errors.require
first_line = errors.first_line

# The flags several command lines share (--workdir, --seed, --model): one type and one
# validation each, the help saying what the flag means to the command line that defines it:
#   cli.define_shared("workdir", "Run directory of dp_sinkhorn_tf.main.", flag_values=FLAGS)
# The training flags define theirs from their config fields (`train.config.option`).
define_shared = flagdefs.define_shared


def fail(message: str, code: int = 2) -> NoReturn:
  """Prints `error: message` (one line) and exits with `code`."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _print_help(flag_values, program: str) -> None:
  print(f"usage: python -m {program} --flag=value …\n")
  print(flag_values.get_help(include_special_flags=False))


def _asks_for_logs(argv: Sequence[str]) -> bool:
  """Whether the command line sets absl's --verbosity (or -v / --v)."""
  return any(a.split("=")[0] in ("--verbosity", "-verbosity", "-v", "--v") for a in argv)


def _main_module() -> str:
  """The dotted name `python -m` ran (e.g. 'dp_sinkhorn_tf.main'), '' for a script/REPL."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  return getattr(spec, "name", "") or ""


def quiet_start(argv: Sequence[str]) -> None:
  """Silences TensorFlow's start-up lines (oneDNN notes, cuDNN / cuFFT / cuBLAS factory
  registrations logged as errors) and the INFO lines of TF's Python logger, unless the
  command line asks with --verbosity / -v (a TF_CPP_MIN_LOG_LEVEL already set is kept).
  Called before TensorFlow is imported (its C++ log level is read at import). In a process
  started as one of this package's commands (`python -m dp_sinkhorn_tf.…`, not a caller's
  process such as a test runner), XLA's absl-logged lines are filtered out of stderr as
  well (`io.log_filter`)."""
  if _asks_for_logs(argv):
    return
  if (os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0"
      and _main_module().startswith("dp_sinkhorn_tf.")):
    log_filter.filter_stderr()
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
      fail(first_line(e))

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
      print(f"error: {first_line(e)}", file=sys.stderr)
      return 2
    except KeyboardInterrupt:
      print("\ninterrupted: nothing was published; re-run the command", file=sys.stderr)
      return 130
    finally:
      flag_values.unparse_flags()

  return main
