"""The package's import graph: no cycles (function-level imports included), and the pure
math modules import neither flags nor the application layer."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "dp_sinkhorn_tf"
# No flags, no I/O, no application modules: the math core (README "Layout").
PURE = ("costs", "features", "sinkhorn", "privacy", "sampling", "accounting", "auditing")
APPLICATION = ("main", "train_flags", "cli", "trainer", "export", "evaluate", "sample",
               "audit", "bench", "bench_train", "rundir")


def _modules():
  return sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, PACKAGE))
                if f.endswith(".py") and f != "__init__.py")


def _imports(module: str):
  """(package modules imported anywhere in `module`, top-level third-party names)."""
  tree = ast.parse(open(os.path.join(ROOT, PACKAGE, f"{module}.py")).read())
  internal, external = set(), set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == PACKAGE:
        internal |= {a.name for a in node.names}
      elif node.module.startswith(PACKAGE + "."):
        internal.add(node.module.split(".")[1])
      else:
        external.add(node.module.split(".")[0])
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith(PACKAGE + "."):
          internal.add(alias.name.split(".")[1])
        else:
          external.add(alias.name.split(".")[0])
  return internal - {module}, external


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


@pytest.mark.parametrize("module", PURE)
def test_pure_math_modules_import_no_flags_and_no_application_code(module):
  internal, external = _imports(module)
  assert "absl" not in external
  assert not internal & set(APPLICATION), internal & set(APPLICATION)
