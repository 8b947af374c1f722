"""README.md, docs/ and the launch flagfiles' headers say each thing once and agree (issue 36).

* The README is the front page: at most 200 lines, and its first code block is exactly the
  two set-up commands `make demo` and `make test`.
* Its "What is safe to publish" table is a privacy artefact whose source is
  `io/rundir.ARTEFACTS`: every artefact has a row, with the same verdict.
* Its results table is the one place of each headline number: no other document states the
  same numbers, and a flagfile whose row it is quotes the row's result and training time in
  its header, verbatim.
"""

import glob
import os
import re
import unicodedata

import pytest

from dp_sinkhorn_tf.io import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "launch", "*.flags")))
MAX_README_LINES = 200


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as fh:
    return fh.read()


def _header(path: str) -> str:
  """A flagfile's comment lines, without the leading '#'."""
  return "\n".join(line[1:].strip() for line in _read(path).splitlines()
                   if line.startswith("#"))


def _table(text: str, heading: str) -> list:
  """The rows (lists of stripped cells) of the first table after the line `heading`,
  without its header and separator rows."""
  lines = text.splitlines()
  start = lines.index(heading)
  rows = []
  for line in lines[start + 1:]:
    if line.startswith("## "):
      break
    if line.startswith("|"):
      # a '|' inside a cell is escaped as '\|'
      cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
      rows.append(cells)
    elif rows:
      break
  assert len(rows) > 2, f"no table under {heading!r}"
  assert set(rows[1][0]) <= set("-: "), "second row is the separator"
  return rows[2:]


def _code_spans(cell: str) -> list:
  return re.findall(r"`([^`]+)`", cell)


def test_readme_is_at_most_200_lines():
  assert len(_read(README).splitlines()) <= MAX_README_LINES


def test_readme_opens_with_make_demo_and_make_test():
  lines = _read(README).splitlines()
  fence = next(i for i, line in enumerate(lines) if line.startswith("```"))
  assert all(line.startswith("# ") or not line.strip() for line in lines[:fence]), (
      "only the title comes before the two commands")
  end = next(i for i in range(fence + 1, len(lines)) if lines[i].startswith("```"))
  assert [line.strip() for line in lines[fence + 1:end]] == ["make demo", "make test"]


# ---- the "safe to publish" table -----------------------------------------------------------

PUBLISH_TABLE = "## What is safe to publish"


def _verdict(cell: str) -> bool:
  """True for a 'yes' row, False for 'no' / 'NEVER'; anything else fails."""
  word = re.match(r"\**([A-Za-z]+)", cell).group(1).lower()
  assert word in ("yes", "no", "never"), cell
  return word == "yes"


def _names(cell: str) -> list:
  """The run-directory paths a row's first cell names (its code spans, with any
  parenthesised note dropped): `export/<model_name>/<version>/` → export/…"""
  return _code_spans(cell.split(" (")[0])


def _row_for(rows, artefact: str) -> list:
  found = [r for r in rows if any(
      name == artefact or (artefact.endswith("/") and name.startswith(artefact))
      for name in _names(r[0]))]
  assert len(found) == 1, f"README's safe-to-publish table: {len(found)} rows for {artefact}"
  return found[0]


def test_safe_to_publish_table_has_every_artefact_with_its_verdict():
  rows = _table(_read(README), PUBLISH_TABLE)
  for name, publishable, why in rundir.ARTEFACTS:
    row = _row_for(rows, name)
    assert _verdict(row[2]) == publishable, (name, why, row[2])


def test_the_secrets_say_never():
  rows = _table(_read(README), PUBLISH_TABLE)
  for name in (rundir.KEY_FILE, f"{rundir.PRIVATE_DIR}/"):
    assert _row_for(rows, name)[2].startswith("**NEVER**"), name


def test_verdict_parser_rejects_what_it_cannot_read():
  assert _verdict("**yes**: post-processing") and not _verdict("**NEVER**: secret")
  assert _verdict("yes (functions of released gradients)") and not _verdict("**no**: keep")
  with pytest.raises(AssertionError):
    _verdict("maybe")


# ---- headline numbers ----------------------------------------------------------------------

RESULTS_TABLE = "## Results"
_PLUS_MINUS = re.compile(r"\d+(?:\.\d+)? ± \d+(?:\.\d+)?")


def _headline_rows() -> list:
  """[(flagfile or None, training time, accuracy cell)] of the README's results table."""
  out = []
  for row in _table(_read(README), RESULTS_TABLE):
    flagfile = next((s for s in _code_spans(row[0]) if s.startswith("launch/")), None)
    out.append((flagfile, row[-2], row[-1]))
  return out


def _facts(accuracy: str) -> list:
  """The strings that state a row's numbers: each 'mean ± sd', else the whole triple."""
  return _PLUS_MINUS.findall(accuracy) or [accuracy]


def test_results_table_parses():
  rows = _headline_rows()
  assert ("launch/digits.flags" in [r[0] for r in rows]
          and "launch/fashion_mnist_cpu.flags" in [r[0] for r in rows])
  for flagfile, _, accuracy in rows:
    assert re.fullmatch(r"[\d.± /]+", accuracy), accuracy
    if flagfile is not None:
      assert len(_PLUS_MINUS.findall(accuracy)) == 3, accuracy


@pytest.mark.parametrize("path", [README, *DOCS], ids=os.path.basename)
def test_each_headline_number_is_stated_in_the_readme_table_only(path):
  text = _read(path)
  for _, _, accuracy in _headline_rows():
    for fact in _facts(accuracy):
      allowed = 1 if path == README else 0
      assert text.count(fact) == allowed, (
          f"{os.path.relpath(path, ROOT)} states {fact!r}: the README's results table is "
          "its one place")


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfile_headers_quote_their_results_row_or_none(path):
  header = _header(path)
  name = "launch/" + os.path.basename(path)
  for flagfile, time, accuracy in _headline_rows():
    for fact in _facts(accuracy):
      if flagfile == name:
        assert fact in header, f"{name}'s header lacks its README result {fact!r}"
      else:
        assert fact not in header, f"{name}'s header states {flagfile}'s {fact!r}"
    if flagfile == name:
      runtime = [line for line in header.splitlines() if line.startswith("Runtime:")]
      assert runtime and time in runtime[0], (
          f"{name}'s 'Runtime:' line does not quote the README's training time {time!r}")


@pytest.mark.parametrize("path", DOCS, ids=os.path.basename)
def test_docs_do_not_restate_the_headline_training_times(path):
  text = _read(path)
  for flagfile, time, _ in _headline_rows():
    if flagfile is not None and time != "–":
      assert time not in text, f"{os.path.relpath(path, ROOT)} restates {time!r}"


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfile_headers_are_headers_not_diaries(path):
  """Command, runtime and result: a short header (the runs themselves: docs/results.md)."""
  lines = [line for line in _read(path).splitlines() if line.startswith("#")]
  assert len(lines) <= 16, f"{os.path.basename(path)}: {len(lines)} comment lines"


def test_every_doc_opens_with_what_it_is_for():
  for path in DOCS:
    lines = _read(path).splitlines()
    assert lines[0].startswith("# "), path
    first = next(line for line in lines[1:] if line.strip())
    assert first.startswith("For "), f"{os.path.basename(path)}: opens with {first!r}"


def _slug(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces → hyphens."""
  kept = "".join(ch for ch in heading.strip().lower()
                 if ch.isalnum() or ch in "-_ " or unicodedata.category(ch).startswith("M"))
  return kept.replace(" ", "-")


def _anchors(path: str) -> set:
  text = re.sub(r"```.*?```", "", _read(path), flags=re.S)  # no headings in code blocks
  return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_slug_matches_github():
  assert _slug("Times and timing") == "times-and-timing"
  assert _slug("The exact noise (issue 35)") == "the-exact-noise-issue-35"
  assert _slug("Fashion-MNIST at ε = 10 on a CPU budget") == "fashion-mnist-at-ε--10-on-a-cpu-budget"


def test_local_links_and_anchors_resolve():
  for path in [README, *DOCS]:
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", _read(path)):
      if "://" in target:
        continue
      resolved = (os.path.normpath(os.path.join(os.path.dirname(path), target)) if target
                  else path)
      where = f"{os.path.relpath(path, ROOT)} links {target}#{anchor}"
      if os.path.basename(resolved) == "own-data.md" and not os.path.exists(resolved):
        continue  # written on the h-data branch
      assert os.path.exists(resolved), where
      if anchor:
        assert anchor in _anchors(resolved), where
