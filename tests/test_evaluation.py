"""Evaluation end to end under tfds.testing.mock_data: periodic scores in
training, the best checkpoint, the `eval` CLI report, the real-statistics
cache and the guard rails. The domain classifier is the real one, trained on
the mock data with a small budget."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import hide_local_idx_files, small_config
from gan_jax import cli, config as config_lib, data, evaluation, mesh, outputs, train
from gan_jax.evaluation import evaluator, metrics, stats

N = 200   # samples per side: above the classifier's 128 feature dimensions
pytestmark = pytest.mark.usefixtures("no_local_idx_files")


def eval_config(cache, **overrides):
  cfg = small_config(**{
      "eval.every": 2, "eval.num_samples": N, "eval.num_real": N, "eval.batch_size": 100,
      "eval.cache_dir": str(cache), "eval.kid_subsets": 4, "eval.kid_subset_size": 50,
      "eval.is_splits": 2, **overrides})
  return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-step run with an evaluation every 2 steps."""
  root = tmp_path_factory.mktemp("eval")
  cfg = eval_config(root / "cache", num_steps=4)
  with pytest.MonkeyPatch.context() as mp, tfds.testing.mock_data(num_examples=256):
    hide_local_idx_files(mp)
    train.train_and_evaluate(cfg, str(root / "run"))
  return root, cfg


def test_periodic_eval_writes_reports_metrics_and_best_checkpoint(trained):
  root, _ = trained
  run = root / "run"
  reports = {s: json.loads((run / "eval" / f"step_{s:07d}.json").read_text()) for s in (2, 4)}
  for step, rep in reports.items():
    assert rep["step"] == step
    assert set(rep["scores"]) == {"fd", "kid", "kid_std", "is", "is_std", "is_single",
                                  "precision", "recall"}
    assert all(np.isfinite(v) for v in rep["scores"].values())
    p = rep["protocol"]
    assert p["extractor"] == "domain:fashion_mnist" and len(p["weights_sha256"]) == 64
    assert (p["n_real"], p["n_fake"], p["split"], p["resize"]) == (N, N, "test", "none")
    assert 0.0 <= p["extractor_test_accuracy"] <= 1.0
    assert 1.0 <= rep["scores"]["is"] <= 10.0
  rows = [r for r in outputs.read_metrics(run / "metrics.jsonl") if "eval/fd" in r]
  assert [r["step"] for r in rows] == [2, 4]
  assert [r["eval/fd"] for r in rows] == [reports[s]["scores"]["fd"] for s in (2, 4)]
  best = json.loads((run / "best.json").read_text())
  best_step = min(reports, key=lambda s: reports[s]["scores"]["fd"])
  assert (best["metric"], best["step"]) == ("fd", best_step)
  assert best["value"] == reports[best_step]["scores"]["fd"]
  assert sorted(os.listdir(run / "checkpoints_best")) == [str(best_step)]
  assert (run / "losses.png").exists()   # the plot skips the eval rows


@pytest.mark.slow
def test_a_sweep_evaluates_every_member(trained):
  """Periodic evaluation in a seed sweep: each member gets its reports and
  best checkpoint; member seed 0 scores what the single seed-0 run scored at
  that step (the same extractor from the cache)."""
  root, _ = trained
  cfg = eval_config(root / "cache", num_steps=2, **{"sweep.seeds": 2})
  with pytest.MonkeyPatch.context() as mp, tfds.testing.mock_data(num_examples=256):
    hide_local_idx_files(mp)
    train.train_and_evaluate(cfg, str(root / "sweep"))
  single = json.loads((root / "run" / "eval" / "step_0000002.json").read_text())["scores"]
  scores = []
  for seed in (0, 1):
    d = root / "sweep" / "members" / f"seed_{seed}"
    scores.append(json.loads((d / "eval" / "step_0000002.json").read_text())["scores"])
    assert json.loads((d / "best.json").read_text())["step"] == 2
    assert os.listdir(d / "checkpoints_best") == ["2"]
  for name in ("fd", "kid", "is", "precision", "recall"):
    np.testing.assert_allclose(scores[0][name], single[name], rtol=1e-3, atol=1e-4, err_msg=name)
  assert scores[0]["fd"] != scores[1]["fd"]


def test_eval_cli_reproduces_the_training_report(trained, capsys):
  root, _ = trained
  run = root / "run"
  out = root / "cli_report.json"
  with tfds.testing.mock_data(num_examples=256):
    rc = cli.main(["eval", "--workdir", str(run), "--out", str(out)])
  assert rc == 0
  report = json.loads(out.read_text())
  assert json.loads(capsys.readouterr().out) == report
  in_training = json.loads((run / "eval" / "step_0000004.json").read_text())
  assert report["step"] == 4 and report["protocol"] == in_training["protocol"]
  for k, v in in_training["scores"].items():   # same state, latents and statistics
    assert report["scores"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


def test_eval_cli_on_a_real_split(trained):
  root, cfg = trained
  cfg_path = root / "run" / "config.json"
  out = root / "split.json"
  with tfds.testing.mock_data(num_examples=256):
    rc = cli.main(["eval", "--config", str(cfg_path), "--split", "train", "--out", str(out)])
  assert rc == 0
  report = json.loads(out.read_text())
  assert report["protocol"]["fake_source"] == "split:train"
  assert np.isfinite(report["scores"]["fd"])


def test_real_statistics_come_from_the_cache(trained, monkeypatch):
  root, cfg = trained
  stats = list((root / "cache" / "stats").glob("*.npz"))
  assert len(stats) == 1
  def no_extract(*args, **kwargs):
    raise AssertionError("real features recomputed despite the cache")
  device_mesh = mesh.make_mesh()
  with tfds.testing.mock_data(num_examples=256):
    monkeypatch.setattr(evaluator, "extract", no_extract)
    ev = evaluation.Evaluator(cfg, (28, 28, 1), device_mesh)
    assert ev.real.n == N and ev.real.features.shape == (N, 128)
    # other real images (a different count) are another cache entry
    cfg2 = eval_config(root / "cache", **{"eval.num_real": N + 10})
    with pytest.raises(AssertionError, match="recomputed"):
      evaluation.Evaluator(cfg2, (28, 28, 1), device_mesh)


def test_too_few_samples_for_the_features_is_an_error(trained):
  root, _ = trained
  cfg = eval_config(root / "cache", **{"eval.num_samples": 50})
  with tfds.testing.mock_data(num_examples=256):
    with pytest.raises(stats.FewSamplesError, match="50 samples for 128-dimensional"):
      evaluation.Evaluator(cfg, (28, 28, 1), mesh.make_mesh())
    rc = cli.main(["eval", "--workdir", str(root / "run"), "--config.eval.num_samples=50",
                   "--out", str(root / "few.json")])
  assert rc == 1 and not (root / "few.json").exists()


@pytest.mark.parametrize("key,value,match", [
    ("eval.extractor", "vgg", "unknown eval.extractor 'vgg'"),
    ("eval.metrics", "fd,lpips", r"unknown \['lpips'\]"),
    ("eval.best_metric", "is", "eval.best_metric='is' is not among"),
    ("eval.kid_subsets", 0, "eval.kid_subsets' must be positive"),
])
def test_bad_eval_settings_fail_before_training(tmp_path, key, value, match):
  cfg = eval_config(tmp_path, **{key: value, "eval.metrics": "fd,kid"}
                    if key != "eval.metrics" else {key: value})
  with pytest.raises(config_lib.ConfigError, match=match):
    train.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_domain_extractor_needs_labels(tmp_path):
  cfg = eval_config(tmp_path, **{"data.source": "folder", "data.folder": str(tmp_path)})
  with pytest.raises(config_lib.ConfigError, match="has no labels"):
    evaluation.Evaluator(cfg, (28, 28, 1), mesh.make_mesh())


def test_inception_extractor_without_weights_names_the_key(tmp_path):
  cfg = eval_config(tmp_path, **{"eval.extractor": "inception"})
  with pytest.raises(config_lib.ConfigError, match="eval.inception_weights"):
    evaluation.Evaluator(cfg, (28, 28, 1), mesh.make_mesh())


def test_old_config_json_without_eval_section_gets_defaults(tmp_path):
  cfg = small_config()
  d = json.loads(cfg.to_json_best_effort())
  del d["eval"]
  (tmp_path / "config.json").write_text(json.dumps(d))
  merged = config_lib.with_defaults(config_lib.load_config(str(tmp_path / "config.json")))
  assert merged.eval.extractor == "domain" and merged.batch_size == cfg.batch_size


# --- the metric registry ------------------------------------------------------------

TOY_DIM = 8
_TOY_W = np.random.default_rng(5).normal(size=(28 * 28, TOY_DIM + 3)).astype(np.float32) / 28


def _toy_apply(x):
  """Random projections of the pixels: TOY_DIM features and 3 logits."""
  y = x.reshape(x.shape[0], -1) @ _TOY_W
  return y[:, :TOY_DIM], y[:, TOY_DIM:]


def _toy_extractor(config):
  return evaluation.Extractor("toy", "0" * 64, "none", TOY_DIM, _toy_apply)


@pytest.fixture
def mean_feature_norm():
  """A metric registered by the test, removed after it."""
  @metrics.register("mean_feature_norm", scores={"mean_feature_norm": False},
                    needs=("features",))
  def fn(real, fake, eval_config):
    assert real.features is not None and fake.logits is None
    return {"mean_feature_norm": float(np.linalg.norm(fake.features, axis=1).mean())}
  yield fn
  metrics.METRICS.pop("mean_feature_norm", None)


def test_a_registered_metric_is_scored_and_unknown_names_fail(tmp_path, monkeypatch,
                                                              mean_feature_norm):
  rng = np.random.default_rng(0)
  real = rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
  monkeypatch.setattr(data, "load_images", lambda cfg, shape, limit=0, key="": real[:limit or None],
                      raising=False)
  monkeypatch.setitem(evaluation.EXTRACTORS, "toy", _toy_extractor)
  cfg = eval_config(tmp_path, **{
      "eval.extractor": "toy", "eval.metrics": "fd,mean_feature_norm",
      "eval.best_metric": "mean_feature_norm", "eval.num_samples": 64, "eval.num_real": 64,
      "eval.batch_size": 32})
  ev = evaluation.Evaluator(cfg, (28, 28, 1), mesh.make_mesh())
  assert (ev.keep_features, ev.keep_logits) == (True, False)
  fake = rng.random((64, 28, 28, 1), dtype=np.float32)
  report = ev.score_batches((fake[i:i + 32] for i in range(0, 64, 32)), 64, "test")
  assert list(report["scores"]) == ["fd", "mean_feature_norm"]
  expected = np.linalg.norm(_toy_apply(fake)[0], axis=1).mean()
  assert report["scores"]["mean_feature_norm"] == pytest.approx(expected, rel=1e-5)
  assert np.isfinite(report["scores"]["fd"]) and report["scores"]["fd"] > 0
  assert report["protocol"]["metrics"] == ["fd", "mean_feature_norm"]
  assert metrics.score_names(["kid", "mean_feature_norm"]) == ["kid", "kid_std",
                                                               "mean_feature_norm"]
  assert not metrics.higher_is_better("mean_feature_norm")
  assert metrics.higher_is_better("recall") and not metrics.higher_is_better("fd")

  cfg.eval.metrics = "fd,nope"
  with pytest.raises(config_lib.ConfigError,
                     match=r"unknown \['nope'\].*fd, is, kid, mean_feature_norm, pr"):
    evaluation.Evaluator(cfg, (28, 28, 1), mesh.make_mesh())


def test_metric_registration_is_checked():
  def fn(real, fake, eval_config):
    return {}
  with pytest.raises(config_lib.ConfigError, match=r"unknown needs \['pixels'\]"):
    metrics.register("bad_needs", scores={"x": True}, needs=("pixels",))
  with pytest.raises(config_lib.ConfigError, match="already produced by metric 'kid'"):
    metrics.register("my_kid", scores={"kid": False})(fn)
  with pytest.raises(config_lib.ConfigError, match="already registered"):
    metrics.register("fd", scores={"my_fd": False})(fn)
  with pytest.raises(config_lib.ConfigError, match="unknown score 'nope'"):
    metrics.higher_is_better("nope")
  assert not {"bad_needs", "my_kid"} & set(metrics.METRICS)
