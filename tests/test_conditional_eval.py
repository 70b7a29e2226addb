"""Class-conditional evaluation and sampling: the 'class_acc' and 'intra_fd'
metrics against hand-computed values, the evaluator's label plumbing, the
checks of label metrics and of `gan-jax sample --label/--labels`, and a
conditional run scored end to end under tfds.testing.mock_data."""
import json
import os
import re

import jax
import numpy as np
import pytest
import scipy.linalg
import tensorflow_datasets as tfds

from conftest import hide_local_idx_files, small_config
from gan_jax import (checkpointing, cli, commands, components, config as config_lib, data,
                     evaluation, mesh as mesh_lib, train)
from gan_jax.evaluation import FeatureSet, metrics, stats

pytestmark = pytest.mark.usefixtures("no_local_idx_files")
CLASSES = 10


def _eval_config(**overrides):
  return small_config(**{"eval.allow_few_samples": False, **overrides}).eval


def _features(features, logits=None, labels=None):
  features = np.asarray(features, np.float32)
  return FeatureSet(stats.moments_of(features), features,
                    None if logits is None else np.asarray(logits, np.float32),
                    None if labels is None else np.asarray(labels, np.int32))


def _scipy_frechet(x, y):
  """pytorch-fid's Fréchet distance of two feature sets, from numpy moments."""
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


# --- the metrics on synthetic feature sets ---------------------------------------------

def test_class_accuracy_is_the_fraction_of_argmax_hits():
  labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  logits = np.full((10, CLASSES), -1.0)
  predicted = labels.copy()
  predicted[[1, 4, 8]] = [2, 0, 3]   # exactly 3 of 10 misclassified
  logits[np.arange(10), predicted] = 5.0
  fake = _features(np.zeros((10, 4)), logits, labels)
  real = _features(np.zeros((10, 4)))
  scores = metrics.compute_scores(real, fake, ["class_acc"], _eval_config())
  assert scores == {"class_accuracy": pytest.approx(0.7, abs=1e-12)}
  assert metrics.higher_is_better("class_accuracy")
  assert metrics.METRICS["class_acc"].needs == ("logits", "labels")
  # Labels beyond the extractor's classes (e.g. inception's 1008 logits are
  # fine; here 3 logits for 10 classes) say which extractor to use.
  few = _features(np.zeros((10, 4)), logits[:, :3], labels)
  with pytest.raises(config_lib.ConfigError, match=r"class_acc: labels up to 9, but the "
                                                   r"extractor classifies 3 classes"):
    metrics.compute_scores(real, few, ["class_acc"], _eval_config())


def _class_sets(rng, dim=3):
  """Real features of classes 0-3 (class 3 never generated), generated of
  classes 0-2, each class its own Gaussian, the labels interleaved."""
  def side(counts, shift):
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    labels = rng.permutation(labels)
    x = rng.normal(size=(len(labels), dim)) * (1 + labels[:, None]) + labels[:, None] * 2.0
    return (x + shift).astype(np.float32), labels
  return side((8, 10, 12, 6), 0.0), side((9, 7, 11), 0.4)


def test_intra_fd_is_the_mean_of_the_per_class_frechet_distances():
  (xr, yr), (xf, yf) = _class_sets(np.random.default_rng(0))
  real, fake = _features(xr, labels=yr), _features(xf, labels=yf)
  got = metrics.compute_scores(real, fake, ["intra_fd"], _eval_config())["intra_fd"]
  x64r, x64f = xr.astype(np.float64), xf.astype(np.float64)
  per_class = [stats.frechet_distance(x64r[yr == k].mean(0), np.cov(x64r[yr == k], rowvar=False),
                                      x64f[yf == k].mean(0), np.cov(x64f[yf == k], rowvar=False))
               for k in range(3)]   # class 3 has no samples: not averaged
  assert got == pytest.approx(np.mean(per_class), rel=1e-9)
  assert got == pytest.approx(np.mean([_scipy_frechet(x64r[yr == k], x64f[yf == k])
                                       for k in range(3)]), rel=1e-6)
  # Not the FD of the pooled sets, nor a mean that counts class 3.
  assert got != pytest.approx(_scipy_frechet(x64r, x64f), rel=1e-3)
  assert not metrics.higher_is_better("intra_fd")
  assert metrics.METRICS["intra_fd"].needs == ("features", "labels")
  # Identical sets: 0.
  same = metrics.compute_scores(real, real, ["intra_fd"], _eval_config())["intra_fd"]
  assert abs(same) < 1e-8


def test_intra_fd_sample_count_guard_rails():
  rng = np.random.default_rng(1)
  (xr, yr), (xf, yf) = _class_sets(rng, dim=3)
  real = _features(xr, labels=yr)
  # A generated class with no real images of it.
  yf4 = yf.copy()
  yf4[:2] = 5
  with pytest.raises(stats.FewSamplesError, match="real images of class 5: 0 sample"):
    metrics.compute_scores(real, _features(xf, labels=yf4), ["intra_fd"], _eval_config())
  # Fewer samples of a class than feature dimensions: only when allowed.
  wide = rng.normal(size=(len(yf), 16)).astype(np.float32)
  wide_real = _features(rng.normal(size=(len(yr), 16)).astype(np.float32), labels=yr)
  with pytest.raises(stats.FewSamplesError, match=r"of class \d: \d+ samples for "
                                                  r"16-dimensional features"):
    metrics.compute_scores(wide_real, _features(wide, labels=yf), ["intra_fd"], _eval_config())
  allowed = metrics.compute_scores(wide_real, _features(wide, labels=yf), ["intra_fd"],
                                   _eval_config(**{"eval.allow_few_samples": True}))
  assert np.isfinite(allowed["intra_fd"]) and allowed["intra_fd"] > 0


@pytest.mark.parametrize("names", ["fd,class_acc", "intra_fd", "kid,intra_fd,class_acc"])
def test_label_metrics_need_a_conditional_model(names):
  cfg = small_config(**{"eval.metrics": names, "eval.best_metric": "",
                        "eval.kid_subset_size": 10})
  by_class = [n for n in names.split(",") if n in ("class_acc", "intra_fd")]
  with pytest.raises(config_lib.ConfigError,
                     match=re.escape(f"eval.metrics {by_class} score a class-conditional "
                                     f"generator; this model is unconditional "
                                     f"(model.num_classes=0)")):
    evaluation.validate_eval_config(cfg, 1)
  cfg.model.num_classes = CLASSES
  evaluation.validate_eval_config(cfg, 1)   # fine for a conditional model


def test_label_metrics_on_an_unconditional_model_fail_before_training(tmp_path):
  cfg = small_config(**{"eval.every": 2, "eval.metrics": "fd,class_acc", "num_steps": 2})
  with pytest.raises(config_lib.ConfigError, match=r"\['class_acc'\] score a class-conditional"):
    train.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


# --- the evaluator: real labels, generated labels ----------------------------------------

TOY_DIM = 4
_TOY_W = np.random.default_rng(5).normal(size=(28 * 28, TOY_DIM + CLASSES)).astype(np.float32) / 28


def _toy_apply(x):
  """Random projections of the pixels: TOY_DIM features and CLASSES logits."""
  y = x.reshape(x.shape[0], -1) @ _TOY_W
  return y[:, :TOY_DIM], y[:, TOY_DIM:]


def _toy_extractor(config):
  return evaluation.Extractor("toy", "0" * 64, "none", TOY_DIM, jax.jit(_toy_apply))


def test_the_evaluator_scores_labels_of_both_sides(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  real = rng.integers(0, 256, (120, 28, 28, 1), dtype=np.uint8)
  real_labels = (np.arange(120) * 7 % CLASSES).astype(np.int32)
  asked = []
  def load_images(cfg, shape, limit=0, key="", labels=False):
    asked.append(labels)
    x, y = real[:limit or None], real_labels[:limit or None]
    return (x, y) if labels else x
  monkeypatch.setattr(data, "load_images", load_images)
  monkeypatch.setitem(evaluation.EXTRACTORS, "toy", _toy_extractor)
  cfg = small_config(**{
      "model.num_classes": CLASSES, "eval.extractor": "toy",
      "eval.metrics": "fd,class_acc,intra_fd", "eval.num_samples": 100, "eval.num_real": 100,
      "eval.batch_size": 25, "eval.cache_dir": str(tmp_path), "eval.allow_few_samples": True})
  ev = evaluation.Evaluator(cfg, (28, 28, 1), mesh_lib.make_mesh())
  assert asked == [True] and ev.with_labels and (ev.keep_features, ev.keep_logits) == (True, True)
  np.testing.assert_array_equal(ev.real.labels, real_labels[:100])
  fake = rng.random((100, 28, 28, 1), dtype=np.float32)
  fake_labels = rng.integers(0, CLASSES, 100).astype(np.int32)
  batches = lambda: (fake[i:i + 25] for i in range(0, 100, 25))
  report = ev.score_batches(batches(), 100, "test", fake_labels)
  assert list(report["scores"]) == ["fd", "class_accuracy", "intra_fd"]
  feats, logits = _toy_apply(fake)
  real_feats = _toy_apply(real[:100].astype(np.float32) / 255.0)[0]
  expected_acc = np.mean(np.argmax(logits, 1) == fake_labels)
  assert 0 < expected_acc < 1
  assert report["scores"]["class_accuracy"] == pytest.approx(expected_acc, abs=1e-12)
  expected_fd = np.mean([
      _scipy_frechet(real_feats[real_labels[:100] == k].astype(np.float64),
                     feats[fake_labels == k].astype(np.float64))
      for k in np.unique(fake_labels)])
  assert report["scores"]["intra_fd"] == pytest.approx(expected_fd, rel=1e-3)
  # The scores follow the labels: shuffled labels give other scores.
  other = ev.score_batches(batches(), 100, "test", np.roll(fake_labels, 1))
  assert other["scores"]["intra_fd"] != report["scores"]["intra_fd"]
  # Without the generated images' classes: a clear error.
  with pytest.raises(config_lib.ConfigError, match="needs the classes of the generated images"):
    ev.score_batches(batches(), 100, "test")
  # score_generator hands each batch its labels (generate(z, labels)).
  seen = []
  def generate(z, labels=None):
    seen.append(np.asarray(labels))
    return jax.numpy.zeros((z.shape[0], 28, 28, 1)) + labels[:, None, None, None] / 10.0
  z = jax.random.normal(jax.random.PRNGKey(0), (100, 8))
  ev.score_generator(generate, z, fake_labels)
  np.testing.assert_array_equal(np.concatenate(seen), fake_labels)
  assert [len(s) for s in seen] == [25] * 4
  # The real statistics from the cache keep the labels.
  cached = evaluation.Evaluator(cfg, (28, 28, 1), mesh_lib.make_mesh())
  np.testing.assert_array_equal(cached.real.labels, real_labels[:100])
  again = cached.score_batches(batches(), 100, "test", fake_labels)
  assert again["scores"] == pytest.approx(report["scores"], rel=1e-6)
  # An evaluation without label metrics asks for no labels.
  asked.clear()
  cfg.eval.metrics = "fd"
  assert evaluation.Evaluator(cfg, (28, 28, 1), mesh_lib.make_mesh()).real.labels is None
  assert asked == [False]


# --- a conditional run: evaluated in training; gan-jax sample --label / --labels all ----

N_EVAL = 100   # 10 per class: allow_few_samples (the features are 128-dimensional)


def _mock_train(cfg, workdir, num_examples=64):
  with pytest.MonkeyPatch.context() as mp, tfds.testing.mock_data(num_examples=num_examples):
    hide_local_idx_files(mp)
    return train.train_and_evaluate(cfg, str(workdir))


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
  """A conditional DCGAN (conditional BN G, projection D) trained 2 steps
  and evaluated at step 2 with the label metrics (the domain classifier
  trained on the mock data)."""
  root = tmp_path_factory.mktemp("cond")
  cfg = small_config(**{
      "model.num_classes": CLASSES, "num_steps": 2, "num_grid_samples": 20, "eval.every": 2,
      "eval.metrics": "fd,class_acc,intra_fd", "eval.num_samples": N_EVAL,
      "eval.num_real": N_EVAL, "eval.batch_size": 50, "eval.allow_few_samples": True,
      "eval.cache_dir": str(root / "cache")})
  _mock_train(cfg, root / "run", num_examples=128)
  return root / "run"


@pytest.mark.slow   # shares one conditional training run (~1 min)
def test_a_conditional_run_reports_class_accuracy_and_intra_fd(conditional_run):
  report = json.loads((conditional_run / "eval" / "step_0000002.json").read_text())
  assert set(report["scores"]) == {"fd", "class_accuracy", "intra_fd"}
  assert 0.0 <= report["scores"]["class_accuracy"] <= 1.0
  assert np.isfinite(report["scores"]["intra_fd"]) and report["scores"]["intra_fd"] > 0
  assert report["protocol"]["metrics"] == ["fd", "class_acc", "intra_fd"]
  assert report["protocol"]["extractor"] == "domain:fashion_mnist"
  assert (report["protocol"]["n_real"], report["protocol"]["n_fake"]) == (N_EVAL, N_EVAL)
  rows = [json.loads(l) for l in open(conditional_run / "metrics.jsonl")]
  evals = [r for r in rows if "eval/class_accuracy" in r]
  assert [r["step"] for r in evals] == [2]
  assert evals[0]["eval/intra_fd"] == report["scores"]["intra_fd"]
  assert json.loads((conditional_run / "best.json").read_text())["step"] == 2


@pytest.mark.slow   # shares one conditional training run (~1 min)
def test_a_conditional_run_records_its_classes_and_grid(conditional_run):
  saved = json.loads((conditional_run / "config.json").read_text())
  assert saved["model"]["num_classes"] == CLASSES
  assert saved["data"]["class_names"][:2] == ["T-shirt/top", "Trouser"]
  assert len(saved["data"]["class_names"]) == CLASSES
  assert (conditional_run / "samples" / "step_0000002.png").exists()


def _npy(workdir, name):
  return np.load(workdir / "samples" / name)


@pytest.mark.slow   # shares one conditional training run (~1 min)
def test_sample_one_label(conditional_run, capsys):
  assert cli.main(["sample", "--workdir", str(conditional_run), "--num", "8",
                   "--label", "3"]) == 0
  written = capsys.readouterr().out.split()
  base = conditional_run / "samples" / "samples_step2_n8_seed0_label3"
  assert written == [f"{base}.npy", f"{base}_labels.npy", f"{base}.png"]
  images, labels = _npy(conditional_run, f"{base.name}.npy"), _npy(conditional_run,
                                                                   f"{base.name}_labels.npy")
  assert images.shape == (8, 28, 28, 1) and np.all(np.abs(images) <= 1.0)
  assert labels.dtype == np.int32 and labels.tolist() == [3] * 8
  assert os.path.isfile(f"{base}.png")
  # Another class from the same latents: other images (G sees the labels).
  assert cli.main(["sample", "--workdir", str(conditional_run), "--num", "8",
                   "--label", "7"]) == 0
  other = _npy(conditional_run, "samples_step2_n8_seed0_label7.npy")
  assert np.abs(other - images).max() > 1e-6


@pytest.mark.slow   # shares one conditional training run (~1 min)
def test_sample_all_labels_one_row_per_class(conditional_run, capsys):
  assert cli.main(["sample", "--workdir", str(conditional_run), "--num", "64",
                   "--labels", "all"]) == 0
  name = "samples_step2_n60_seed0_all_labels"   # 10 rows of 64 // 10 = 6
  assert capsys.readouterr().out.split()[0].endswith(f"{name}.npy")
  images, labels = _npy(conditional_run, f"{name}.npy"), _npy(conditional_run,
                                                              f"{name}_labels.npy")
  assert images.shape == (60, 28, 28, 1)
  np.testing.assert_array_equal(labels, np.repeat(np.arange(CLASSES), 6))
  assert (conditional_run / "samples" / f"{name}.png").exists()


def test_sample_labels_of_each_mode():
  """What `sample` draws, without a checkpoint: (labels, row length, file tag)."""
  c = components.build_components(small_config(**{"model.num_classes": CLASSES}))
  labels, cols, tag = commands._sample_labels(c, 4, None, True, 0)   # fewer than the classes
  np.testing.assert_array_equal(labels, np.arange(CLASSES))
  assert (cols, tag) == (1, "_all_labels")
  labels, cols, tag = commands._sample_labels(c, 5, 9, False, 0)
  assert labels.tolist() == [9] * 5 and (cols, tag) == (None, "_label9")
  labels, cols, tag = commands._sample_labels(c, 30, None, False, 2)   # random, as in training
  assert labels.dtype == np.int32 and labels.shape == (30,) and (cols, tag) == (None, "")
  assert labels.min() >= 0 and labels.max() < CLASSES and len(set(labels.tolist())) > 3
  np.testing.assert_array_equal(labels, commands._sample_labels(c, 30, None, False, 2)[0])
  assert not np.array_equal(labels, commands._sample_labels(c, 30, None, False, 3)[0])
  with pytest.raises(config_lib.ConfigError, match=r"--label -1: the model has classes 0..9"):
    commands._sample_labels(c, 4, -1, False, 0)
  np.testing.assert_array_equal(components.class_rows(c, 25)[0], np.repeat(np.arange(10), 2))
  np.testing.assert_array_equal(components.eval_labels(12, c), np.arange(12) % CLASSES)
  plain = components.build_components(small_config())
  assert commands._sample_labels(plain, 4, None, False, 0) == (None, None, "")
  assert components.class_rows(plain, 25) == (None, None)
  assert components.eval_labels(12, plain) is None
  with pytest.raises(config_lib.ConfigError, match="this model is unconditional"):
    commands._sample_labels(plain, 4, None, True, 0)


@pytest.mark.slow   # shares one conditional training run (~1 min)
def test_sample_label_errors(conditional_run, tmp_path, capsys):
  assert cli.main(["sample", "--workdir", str(conditional_run), "--label", "10"]) == 1
  err = capsys.readouterr().err.strip()
  assert err == "gan-jax: error: --label 10: the model has classes 0..9"
  with pytest.raises(SystemExit) as exit_info:   # argparse: one or the other
    cli.main(["sample", "--workdir", str(conditional_run), "--label", "1", "--labels", "all"])
  assert exit_info.value.code == 2
  assert "not allowed with argument" in capsys.readouterr().err
  # An unconditional run (its initial state checkpointed) has no labels.
  cfg = small_config()
  plain = tmp_path / "plain"
  plain.mkdir()
  (plain / "config.json").write_text(cfg.to_json_best_effort(indent=2))
  ckpt = checkpointing.Checkpointer(str(plain), 1)
  ckpt.save(0, components.init_state(cfg, components.build_components(cfg),
                                     mesh_lib.make_mesh()))
  ckpt.close()
  assert cli.main(["sample", "--workdir", str(plain), "--label", "3"]) == 1
  err = capsys.readouterr().err.strip()
  assert err == ("gan-jax: error: --label/--labels: this model is unconditional "
                 "(model.num_classes=0)")
  assert not (plain / "samples").exists()
