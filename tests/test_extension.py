"""Extending gan_jax without forking it: the README's examples of a loss, a
stateful penalty, a model, a metric and a data source go into a package
outside gan_jax/, named in `config.imports`, and the CLI trains with them,
resumes from config.json, samples and evaluates, each in a fresh process."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from gan_jax import checkpointing

README = os.path.join(ROOT, "README.md")
EXAMPLES = ("loss", "penalty", "model", "metric", "source")

# An extractor for the test's tiny images: 4x4 average-pooled pixels as
# features (16-d) and their first 10 as "logits", no training, no download.
EXTRACTOR = '''
import jax
import jax.numpy as jnp
from gan_jax.evaluation import extractors


@extractors.EXTRACTORS.register("pooled_pixels")
def pooled_pixels(config):
  def apply(images):
    n, h, w, _ = images.shape
    f = images.mean(-1).reshape(n, 4, h // 4, 4, w // 4).mean((2, 4)).reshape(n, 16)
    return f, f[:, :10]
  return extractors.Extractor("pooled_pixels", "none", "none", 16, jax.jit(apply))
'''

EXPERIMENT = '''
"""A user's experiment: every component comes from the my_gans package."""
from gan_jax.config import base_config


def get_config():
  c = base_config()
  c.imports = ("my_gans.ragan", "my_gans.anchor", "my_gans.tiny", "my_gans.gap",
               "my_gans.stripes", "my_gans/pooled.py")
  c.data.source = "stripes"
  c.data.on_device = True
  c.model.name = "tiny_mlp"
  c.model.image_size = 16
  c.model.latent_dim = 8
  c.model.kwargs.hidden = 32
  c.loss = "relativistic_average"
  c.penalty.mean_logit_anchor = 0.5
  c.batch_size = 16
  c.num_steps = 4
  c.steps_per_call = 2
  c.log_every = 2
  c.sample_every = 4
  c.checkpoint_every = 2
  c.num_grid_samples = 4
  c.progress_bar = False
  c.eval.extractor = "pooled_pixels"
  c.eval.metrics = "fd,mean_gap"
  c.eval.best_metric = "mean_gap"
  c.eval.every = 4
  c.eval.num_samples = 64
  c.eval.num_real = 64
  c.eval.batch_size = 32
  return c
'''


def readme_example(name: str) -> str:
  text = open(README).read()
  match = re.search(rf"<!-- example:{name} -->\n```python\n(.*?)```", text, re.S)
  assert match, f"README.md has no <!-- example:{name} --> block"
  return match.group(1)


def _cli(package_dir, cwd, *args):
  """`gan-jax ARGS` in a fresh process, run in `cwd`, with `package_dir` on PYTHONPATH."""
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_dir), ROOT]),
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", "gan_jax", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


@pytest.fixture
def user_package(tmp_path):
  pkg = tmp_path / "my_gans"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  for name, module in zip(EXAMPLES, ("ragan", "anchor", "tiny", "gap", "stripes")):
    (pkg / f"{module}.py").write_text(readme_example(name))
  (pkg / "pooled.py").write_text(textwrap.dedent(EXTRACTOR))
  (tmp_path / "my_experiment.py").write_text(textwrap.dedent(EXPERIMENT))
  return tmp_path


@pytest.mark.slow
def test_user_components_train_resume_sample_and_evaluate_through_the_cli(user_package):
  tmp, work = user_package, user_package / "work"
  _cli(tmp, tmp, "train", "--config", "my_experiment.py", "--workdir", str(work))
  saved = json.load(open(work / "config.json"))
  # config.json names the modules (the file path made absolute) and the
  # completed kwargs and weights, so later commands rebuild the same run.
  assert saved["imports"][:5] == ["my_gans.ragan", "my_gans.anchor", "my_gans.tiny",
                                  "my_gans.gap", "my_gans.stripes"]
  assert saved["imports"][5] == str(tmp / "my_gans" / "pooled.py")
  assert saved["model"]["kwargs"] == {"hidden": 32}
  assert saved["penalty"]["mean_logit_anchor"] == 0.5 and saved["penalty"]["gp"] == 0.0
  rows = [json.loads(l) for l in open(work / "metrics.jsonl")]
  assert [r["step"] for r in rows if "d_loss" in r] == [2, 4]
  assert all(r["penalty_mean_logit_anchor"] > 0 for r in rows if "d_loss" in r)
  assert "eval/mean_gap" in rows[-1] and "eval/fd" in rows[-1]
  assert json.load(open(work / "best.json"))["metric"] == "mean_gap"

  # Resume from config.json alone (from another directory: no experiment
  # file in reach), two more steps; the penalty's state resumes.
  _cli(tmp, tmp.parent, "train", "--config", str(work / "config.json"), "--workdir", str(work),
       "--config.num_steps=6", "--config.eval.every=0")
  rows = [json.loads(l) for l in open(work / "metrics.jsonl")]
  assert [r["step"] for r in rows if "d_loss" in r] == [2, 4, 6]
  saved = checkpointing.Checkpointer(str(work), 1, read_only=True).manager.metadata(6)
  tree = getattr(saved.item_metadata, "tree", saved.item_metadata)
  assert set(tree["aux"]["mean_logit_anchor"]) == {"ema"}   # the penalty's state is saved

  out = _cli(tmp, tmp.parent, "sample", "--workdir", str(work), "--num", "8")
  npy = out.stdout.split()[0]
  assert npy.endswith("samples_step6_n8_seed0.npy") and os.path.isfile(npy)

  _cli(tmp, tmp.parent, "eval", "--workdir", str(work))
  report = json.load(open(work / "eval" / "step_0000006.json"))
  assert set(report["scores"]) == {"fd", "mean_gap"} and report["scores"]["mean_gap"] >= 0
  assert report["protocol"]["extractor"] == "pooled_pixels"


def test_a_missing_user_module_is_one_clear_error(tmp_path):
  (tmp_path / "exp.py").write_text(textwrap.dedent('''
      from gan_jax.config import base_config
      def get_config():
        c = base_config()
        c.imports = ("no_such_pkg.losses",)
        return c
      '''))
  env = {**os.environ, "PYTHONPATH": ROOT}
  out = subprocess.run([sys.executable, "-m", "gan_jax", "train", "--config", "exp.py",
                        "--workdir", "w"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "gan-jax: error: config.imports: no module 'no_such_pkg.losses' (No module named "
      "'no_such_pkg'); is its folder on PYTHONPATH?"]
  assert not (tmp_path / "w").exists()
