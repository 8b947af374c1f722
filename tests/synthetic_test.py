"""Tests for dp_sinkhorn_tf.release.synthetic (the sample command's library): which classes
and how many of each. Drawing and writing are tested through the command line in
tests/sample_test.py."""

import math

import pytest

from dp_sinkhorn_tf.release import synthetic


def test_labels_by_name_or_index():
  names = ["cat", "dog", "owl"]
  assert synthetic.parse_labels("owl,cat", names) == [2, 0]
  assert synthetic.parse_labels("1, owl", names) == [1, 2]  # mixed
  assert synthetic.parse_labels(None, names) == [0, 1, 2]
  # A name wins over an index: folders named "1", "2", "3" are classes 0, 1, 2.
  assert synthetic.parse_labels("1,3", ["1", "2", "3"]) == [0, 2]
  assert synthetic.parse_labels("0", ["1", "2", "3"]) == [0]
  # An unlabelled (one-class) model: the label is optional, and 0 or its name work.
  assert synthetic.parse_labels(None, ["all"]) == [0]
  assert synthetic.parse_labels("all,0", ["all"]) == [0, 0]
  with pytest.raises(synthetic.FlagError, match=r"^--labels=emu: 'emu' is neither a class name "
                     r"\(cat, dog, owl\) nor a class index in \[0, 3\)"):
    synthetic.parse_labels("emu", names)
  with pytest.raises(synthetic.FlagError, match=r"3 outside \[0, num_classes=3\)"):
    synthetic.parse_labels("3", names)


def test_largest_remainder_sums_to_the_total_and_breaks_ties_by_order():
  assert synthetic.largest_remainder(7, [0.3, 0.7]) == [2, 5]
  assert synthetic.largest_remainder(10, [1, 1, 1]) == [4, 3, 3]  # a tie: the first listed
  assert synthetic.largest_remainder(5, [0.5, 0, 0.5]) == [3, 0, 2]
  assert synthetic.largest_remainder(1, [0.2, 0.3, 0.5]) == [0, 0, 1]
  for total in (1, 2, 9, 100, 1001):
    counts = synthetic.largest_remainder(total, [0.11, 0.52, 0.37])
    assert sum(counts) == total
    # Each count is its quota rounded down or up: never further than 1 from it.
    assert all(abs(c - total * w) < 1 for c, w in zip(counts, [0.11, 0.52, 0.37]))


def test_proportions_are_normalised_and_bad_items_name_the_flag():
  names = ["cat", "dog", "owl"]
  got = synthetic.parse_proportions("dog:3, 0:1", names)
  assert [i for i, _ in got] == [1, 0]
  assert math.isclose(got[0][1], 0.75) and math.isclose(got[1][1], 0.25)
  for text, match in [("dog", "is not CLASS:WEIGHT"), ("dog:-1", "not a finite number"),
                      ("dog:nan", "not a finite number"), ("dog:1,dog:2", "given twice"),
                      ("dog:0,cat:0", "sum to 0"), ("emu:1", "neither a class name")]:
    with pytest.raises(synthetic.FlagError, match=match):
      synthetic.parse_proportions(text, names)
