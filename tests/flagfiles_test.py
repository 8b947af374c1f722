"""Every launch flagfile parses against main's flags and gives a valid frozen config."""

import glob
import os

import pytest
from absl import flags

from dp_sinkhorn_tf import cli, main
from dp_sinkhorn_tf.train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "launch", "*.flags")))


@pytest.fixture
def parse(monkeypatch):
  monkeypatch.chdir(ROOT)

  def _parse(*argv) -> config_lib.TrainConfig:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["main", *cli.expand_flagfiles(argv)])  # as main's parser does
    try:
      return main.config_from_flags(flags.FLAGS)
    finally:
      flags.FLAGS.unparse_flags()

  return _parse


def test_the_expected_flagfiles_exist():
  names = {os.path.basename(p) for p in FLAGFILES}
  assert {"common.flags", "digits.flags", "mnist.flags", "fashion_mnist.flags", "cifar.flags",
          "celeba.flags"} <= names


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfile_parses(parse, path):
  cfg = parse(f"--flagfile={path}")
  assert cfg.privacy.dp and cfg.privacy.target_epsilon == 10.0 and cfg.privacy.delta == 1e-5


@pytest.mark.parametrize("path", [p for p in FLAGFILES if not p.endswith("common.flags")],
                         ids=os.path.basename)
def test_dataset_flagfiles_open_with_their_command(path):
  with open(path) as fh:
    head = fh.read(1500)
  assert "python -m dp_sinkhorn_tf.main --flagfile=launch/" in head
  assert "runtime" in head.lower() and "ε" in head


def test_paper_settings_for_fashion_mnist(parse):
  cfg = parse(f"--flagfile={os.path.join(ROOT, 'launch', 'fashion_mnist.flags')}")
  # Cao et al. 2021: B=50, C=0.5, m=3, p=0.4, λ=0.05, α_c=15.
  assert (cfg.batch_size, cfg.privacy.l2_norm_clip, cfg.loss.l1_weight,
          cfg.loss.debias_fraction, cfg.loss.solver.epsilon, cfg.loss.alpha_c) == (
              50, 0.5, 3.0, 0.4, 0.05, 15.0)
  assert cfg.loss.cost == "l1l2" and cfg.data.dataset == "fashion_mnist"


def test_celeba_uses_the_l2_cost(parse):
  cfg = parse(f"--flagfile={os.path.join(ROOT, 'launch', 'celeba.flags')}")
  assert cfg.loss.cost == "l2" and cfg.data.dataset == "celeb_a"


DATASET_SIZES = {"digits": 1438, "mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000,
                 "celeb_a": 162770}


@pytest.mark.parametrize("path", [p for p in FLAGFILES if not p.endswith("common.flags")],
                         ids=os.path.basename)
def test_header_step_count_is_what_the_accountant_allows(parse, path):
  """A header that says "N steps" (or "→ N steps") quotes the planner's own number."""
  import re

  from dp_sinkhorn_tf.privacy import accounting
  head = "".join(line for line in open(path) if line.startswith("#")).replace("\n#", " ")
  match = re.search(r"(\d[\d,]{3,}) steps", head)
  if match is None:
    pytest.skip("header quotes no exact step count")
  cfg = parse(f"--flagfile={path}")
  q = cfg.batch_size / DATASET_SIZES[cfg.data.dataset]
  quoted = int(match.group(1).replace(",", ""))
  if cfg.steps is not None:  # --steps given: σ follows; the header's σ must be the planner's
    sigma = accounting.min_noise_multiplier(cfg.privacy.target_epsilon, cfg.privacy.delta, q,
                                            cfg.steps, cfg.privacy.accountant)
    assert quoted == cfg.steps and f"σ = {sigma:.3f}" in head
  else:
    assert quoted == accounting.max_steps(cfg.privacy.target_epsilon, cfg.privacy.delta, q,
                                          cfg.privacy.noise_multiplier, cfg.privacy.accountant)
