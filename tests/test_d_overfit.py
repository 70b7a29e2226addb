"""experiments/tools/d_overfit.py: D's logits on the images it trained on
against a held-out split, from a work directory."""
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gan_jax import train
from conftest import ROOT, small_config

sys.path.insert(0, os.path.join(ROOT, "experiments", "tools"))
import d_overfit  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_local_idx_files")


def test_report_scores_the_seen_subset_against_the_held_out_split(tmp_path):
  cfg = small_config(num_steps=2, **{"data.num_examples": 40, "data.on_device": False})
  with tfds.testing.mock_data(num_examples=64):
    train.train_and_evaluate(cfg, str(tmp_path))
    report = d_overfit.overfit_report(str(tmp_path))
  assert report["step"] == 2
  # The first 40 training images in whole batches of 16; all 64 test images.
  assert report["train_images"] == 32 and report["test_images"] == 64
  for side in ("train", "test"):
    assert -1.0 <= report[f"{side}_r_t"] <= 1.0 and np.isfinite(report[f"{side}_mean_logit"])
  assert report["r_t_gap"] == pytest.approx(report["train_r_t"] - report["test_r_t"])


def test_a_conditional_run_is_refused(tmp_path):
  (tmp_path / "config.json").write_text('{"model": {"num_classes": 10}}')
  with pytest.raises(SystemExit, match="class-conditional D needs labels"):
    d_overfit.overfit_report(str(tmp_path))
