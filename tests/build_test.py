"""The Bazel BUILD files never drift from the sources (Bazel itself cannot run offline here).

Checked by parsing the BUILD files (Starlark calls are Python syntax) rather than by
regenerating them: every tests/*_test.py has a py_test whose srcs and main are that file,
every package module has a py_library, and every import a source makes appears in its
target's deps (internal modules as labels, third-party packages as requirement(...)).
"""

import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import update_build  # noqa: E402


def targets(build_path):
  """{name: {"rule": str, "srcs": [...], "main": str|None, "deps": set[str]}}."""
  tree = ast.parse(open(build_path).read(), build_path)
  out = {}
  for node in tree.body:
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
      continue
    call = node.value
    kw = {k.arg: k.value for k in call.keywords}
    if "name" not in kw:
      continue
    deps = set()
    for d in getattr(kw.get("deps"), "elts", []):
      if isinstance(d, ast.Constant):
        deps.add(d.value)
      elif isinstance(d, ast.Call) and d.func.id == "requirement":
        deps.add("req:" + d.args[0].value)
    out[kw["name"].value] = {
        "rule": call.func.id,
        "srcs": [s.value for s in getattr(kw.get("srcs"), "elts", [])],
        "main": kw["main"].value if "main" in kw else None,
        "deps": deps,
    }
  return out


PACKAGE_TARGETS = {pkg: targets(update_build.build_path(pkg)) for pkg in update_build.packages()}
TEST_TARGETS = targets(os.path.join(ROOT, "tests", "BUILD"))


def test_workspace_and_lock_exist():
  workspace = open(os.path.join(ROOT, "WORKSPACE")).read()
  assert "pip_parse" in workspace and "requirements_lock.txt" in workspace
  lock = open(os.path.join(ROOT, "requirements_lock.txt")).read().splitlines()
  # The lock pins the same stack as setup.cfg.
  for pin in ("tensorflow==2.15.1", "tensorflow_privacy==0.9.0", "dp-accounting==0.4.3",
              "tensorflow-datasets==4.9.10", "tensorflow-metadata==1.15.0"):
    assert any(line.lower().replace("_", "-") == pin.replace("_", "-") for line in lock), pin


@pytest.mark.parametrize("test_file", update_build.tests())
def test_every_test_file_has_a_py_test(test_file):
  name = test_file[:-3]
  assert name in TEST_TARGETS, f"tests/BUILD lacks py_test {name}"
  target = TEST_TARGETS[name]
  assert target["rule"] == "py_test"
  assert target["srcs"] == [test_file] and target["main"] == test_file


@pytest.mark.parametrize("module", update_build.modules())
def test_every_module_has_a_py_library_with_its_imports(module):
  package, name = os.path.split(module)
  build = os.path.join("dp_sinkhorn_tf", package, "BUILD")
  assert name in PACKAGE_TARGETS[package], f"{build} lacks py_library {name}"
  target = PACKAGE_TARGETS[package][name]
  assert target["rule"] == "py_library" and target["srcs"] == [f"{name}.py"]
  internal, external = update_build.imports_of(os.path.join(ROOT, "dp_sinkhorn_tf",
                                                            f"{module}.py"))
  internal.discard(module)
  missing = ({update_build.label(m, package) for m in internal}
             | {f"req:{r}" for r in external})
  missing -= target["deps"]
  assert not missing, f"{module}: deps missing {sorted(missing)}"


def test_a_cross_package_import_is_a_full_label():
  assert update_build.label("transport/sinkhorn", "transport") == ":sinkhorn"
  assert update_build.label("transport/sinkhorn", "train") == "//dp_sinkhorn_tf/transport:sinkhorn"
  assert update_build.label("cli", "train") == "//dp_sinkhorn_tf:cli"
  assert update_build.label("cli", "") == ":cli"


@pytest.mark.parametrize("test_file", update_build.tests())
def test_test_deps_cover_imports(test_file):
  target = TEST_TARGETS[test_file[:-3]]
  internal, external = update_build.imports_of(os.path.join(ROOT, "tests", test_file))
  missing = {update_build.label(m) for m in internal} | {f"req:{r}" for r in external}
  missing -= target["deps"]
  assert not missing, f"{test_file}: deps missing {sorted(missing)}"


def test_every_package_folder_has_a_build_file():
  assert set(update_build.packages()) >= {"", "transport", "privacy", "train"}
  for package in update_build.packages():
    assert os.path.isfile(update_build.build_path(package)), package


def test_no_stale_targets():
  """A deleted module or test takes its target with it."""
  for package, package_targets in PACKAGE_TARGETS.items():
    modules = {os.path.basename(m) for m in update_build.modules(package)} | {"__init__"}
    libraries = {n for n, t in package_targets.items() if t["rule"] == "py_library"}
    assert libraries == modules, package
  assert set(TEST_TARGETS) == {t[:-3] for t in update_build.tests()}
