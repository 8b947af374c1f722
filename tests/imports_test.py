"""The package's import graph: a one-way stack of layers (`LAYERS`, the README's layer
diagram), no cycles (function-level imports included), the pure math modules import neither
flags nor the application layer, and the command lines check their flags before TensorFlow
loads."""

import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "dp_sinkhorn_tf"
# No flags, no application modules: the math core (docs/layout.md).
# Module ids are paths inside the package: "transport/sinkhorn", "main".
PURE_PACKAGES = ("transport", "privacy")


def _modules():
  out = []
  for folder, dirs, files in os.walk(os.path.join(ROOT, PACKAGE)):
    rel = os.path.relpath(folder, os.path.join(ROOT, PACKAGE))
    out += [os.path.normpath(os.path.join(rel, f[:-3])) for f in files
            if f.endswith(".py") and f != "__init__.py"]
  return sorted(out)


def _module_id(dotted: str) -> str:
  """'dp_sinkhorn_tf.transport.sinkhorn[.Symbol]' → 'transport/sinkhorn'."""
  parts = dotted.split(".")[1:]
  while parts and not os.path.isfile(os.path.join(ROOT, PACKAGE, *parts) + ".py"):
    parts.pop()
  return "/".join(parts)


def _layer(module_id: str) -> str:
  """The top-level id of a module: its package ("train/trainer" → "train"), or the module
  itself for a top-level one ("main")."""
  return module_id.split("/")[0]


# The stack, from the bottom: a top-level id may import its own layer's and the layers below
# it, never one above, and no two top-level ids import each other (directly or round about).
# The README's "Layout" diagram draws the same table (test_the_readme_draws_the_layers).
LAYERS = (
    {"io"},
    {"transport", "privacy"},
    {"models"},
    {"data", "release"},
    {"train"},
    {"evaluation"},
    {"main", "export", "sample", "evaluate", "audit", "merf", "bench", "cli"},
)


PURE = tuple(m for m in _modules() if _layer(m) in PURE_PACKAGES)


def _imports(module: str):
  """(package modules imported anywhere in `module`, top-level third-party names)."""
  tree = ast.parse(open(os.path.join(ROOT, PACKAGE, f"{module}.py")).read())
  internal, external = set(), set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module.split(".")[0] == PACKAGE:
        internal |= {_module_id(f"{node.module}.{a.name}") or _module_id(node.module)
                     for a in node.names}
      else:
        external.add(node.module.split(".")[0])
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith(PACKAGE + "."):
          internal.add(_module_id(alias.name))
        else:
          external.add(alias.name.split(".")[0])
  return internal - {module, ""}, external


GRAPH = {m: _imports(m)[0] for m in _modules()}


def _cycles(graph):
  cycles, state, stack = [], {}, []

  def visit(u):
    state[u] = "open"
    stack.append(u)
    for v in sorted(graph.get(u, ())):
      if state.get(v) == "open":
        cycles.append(stack[stack.index(v):] + [v])
      elif v not in state:
        visit(v)
    stack.pop()
    state[u] = "done"

  for u in sorted(graph):
    if u not in state:
      visit(u)
  return cycles


def test_the_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
  assert _cycles(GRAPH) == []


def _layer_index(layers):
  return {top: i for i, layer in enumerate(layers) for top in layer}


def _package_edges(graph):
  """{(importer, imported): [module → module, …]} between different top-level ids."""
  edges = {}
  for module, deps in graph.items():
    for dep in deps:
      if _layer(module) != _layer(dep):
        edges.setdefault((_layer(module), _layer(dep)), []).append(f"{module} → {dep}")
  return edges


def _stack_violations(graph, layers):
  """One line per upward edge between top-level ids (with the module edges that make it),
  per cycle between them, and per top-level id that is in no layer."""
  index = _layer_index(layers)
  edges = _package_edges(graph)
  problems = [f"{top}: in no layer of LAYERS" for top in sorted({_layer(m) for m in graph})
              if top not in index]
  for (a, b), via in sorted(edges.items()):
    if a in index and b in index and index[b] > index[a]:
      problems.append(f"upward {a} (layer {index[a]}) → {b} (layer {index[b]}): "
                      f"{', '.join(sorted(via))}")
  package_graph = {}
  for a, b in edges:
    package_graph.setdefault(a, set()).add(b)
  for cycle in _cycles(package_graph):
    via = [", ".join(sorted(edges[(u, v)])) for u, v in zip(cycle, cycle[1:])]
    problems.append(f"cycle {' → '.join(cycle)}: {'; '.join(via)}")
  return problems


def test_the_stack_check_names_upward_edges_cycles_and_strays():
  layers = ({"io"}, {"train"}, {"main", "cli"})
  assert _stack_violations({"train/x": {"io/files"}, "main": {"cli", "train/x"}, "cli": set(),
                            "io/files": set()}, layers) == []
  problems = _stack_violations({"io/files": {"train/x"}, "train/x": {"io/files"},
                                "cli": {"main"}, "main": {"cli"}, "odd": set()}, layers)
  assert "odd: in no layer of LAYERS" in problems
  assert "upward io (layer 0) → train (layer 1): io/files → train/x" in problems
  assert "cycle cli → main → cli: cli → main; main → cli" in problems
  assert "cycle io → train → io: io/files → train/x; train/x → io/files" in problems


def test_the_package_is_a_one_way_stack():
  problems = _stack_violations(GRAPH, LAYERS)
  assert not problems, "imports against the stack (LAYERS):\n  " + "\n  ".join(problems)


def _readme_layers():
  """The README's layer diagram (the first code block under "## Layout"), bottom first:
  each line `name │ top-level ids`, the top layer first."""
  text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  section = text[text.index("\n## Layout\n"):]
  block = re.search(r"```\n(.*?)```", section, flags=re.S).group(1)
  rows = [line.split("│", 1)[1].split() for line in block.splitlines() if "│" in line]
  return tuple(set(row) for row in reversed(rows))


def test_the_readme_draws_the_layers():
  assert _readme_layers() == LAYERS


def test_the_graph_sees_the_layers():
  assert "transport/costs" in GRAPH["transport/sinkhorn"]
  assert "transport/options" in GRAPH["train/config"]
  assert {"transport/sinkhorn", "privacy/gaussian"} <= set(PURE)


@pytest.mark.parametrize("module", PURE)
def test_pure_math_modules_import_no_flags_and_no_application_code(module):
  internal, external = _imports(module)
  assert "absl" not in external
  # The core imports only the core, plus the one atomic writer (the ledger and the key file).
  outside = internal - set(PURE) - {"io/files"}
  assert not outside, outside


# Imports every command line, then parses a shipped flagfile into the frozen run config as
# `main` does, and prints the TensorFlow-family modules that got loaded on the way.
_FLAG_CHECK = """
import sys
from absl import flags
from dp_sinkhorn_tf import audit, bench, evaluate, export, main, merf, sample
flags.FLAGS.unparse_flags()
main.parse_flags(["main", "--flagfile=launch/fashion_mnist_cpu.flags", "--workdir=unused"])
cfg = main.config_from_flags(flags.FLAGS)
assert cfg.num_generated == 22, cfg.num_generated
print(sorted(m for m in sys.modules
             if m.split(".")[0] in ("tensorflow", "keras", "tensorflow_privacy", "tf_keras")))
"""


def test_the_command_lines_check_their_flags_before_tensorflow_loads():
  # A bad flag is one line within a second, not TensorFlow's start-up (9 log lines, ~7 s)
  # and then the line: config and the option tables it reads are TF-free.
  proc = subprocess.run([sys.executable, "-c", _FLAG_CHECK], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "[]", proc.stdout
