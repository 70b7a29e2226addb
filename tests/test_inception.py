"""gan_jax.evaluation.inception: the Flax FID Inception computes what pytorch-fid's network
computes (checked against a torch transcription with the same random weights),
its preprocessing is torch's bilinear resize, and converting, saving and
loading its variables fail loudly on anything but the expected tensors."""
from __future__ import annotations

import math
import os
import sys

import jax
import numpy as np
import pytest

from gan_jax.evaluation import inception

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(os.path.dirname(HERE), "experiments", "tools")
TOL = 1e-4


def _random_state_dict_np(seed: int = 0) -> dict[str, np.ndarray]:
  """A state_dict-shaped dict of random numpy arrays (no torch needed)."""
  rng = np.random.default_rng(seed)
  return {key: rng.normal(size=shape).astype(np.float32)
          for key, (_, shape, _) in inception._torch_key_table().items()}


@pytest.fixture(scope="module")
def torch_model():
  """The torch reference with random, non-trivial weights: variance-preserving
  (He) conv init, random BN affine and running stats, so activations stay O(1)
  through the net and an absolute tolerance means something."""
  torch = pytest.importorskip("torch")
  if HERE not in sys.path:
    sys.path.insert(0, HERE)
  import torch_fid_reference
  torch.manual_seed(0)
  model = torch_fid_reference.FIDInceptionV3Torch()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.Conv2d):
        m.weight.normal_(0.0, math.sqrt(2.0 / m.weight[0].numel()))
      elif isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
      elif isinstance(m, torch.nn.Linear):
        m.weight.normal_(0.0, 1.0 / math.sqrt(m.in_features))
        m.bias.normal_(0.0, 0.1)
  return model.eval()


@pytest.fixture(scope="module")
def torch_variables(torch_model):
  return inception.convert_torch_state_dict(
      {k: v.numpy() for k, v in torch_model.state_dict().items()})


# (a) The whole path, preprocessing included, against the torch reference.
@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 333, 310, 3)],
                         ids=["grey28_upsample", "rgb333x310_downsample"])
def test_features_match_torch_reference(torch_model, torch_variables, shape):
  import torch
  import torch_fid_reference
  images = np.random.default_rng(1).uniform(size=shape).astype(np.float32)
  pool3, logits = inception.features(torch_variables, images)
  nchw = torch.from_numpy(images).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
  ref_pool3, ref_logits = torch_fid_reference.fid_features(torch_model, nchw)
  assert pool3.shape == (shape[0], inception.FEATURE_DIM)
  assert logits.shape == (shape[0], inception.NUM_LOGITS)
  d_pool3 = np.abs(np.asarray(pool3) - ref_pool3.numpy()).max()
  d_logits = np.abs(np.asarray(logits) - ref_logits.numpy()).max()
  print(f"\n{shape}: pool3 |mean| {np.abs(ref_pool3.numpy()).mean():.3f} "
        f"std {ref_pool3.numpy().std():.3f}, logits std {ref_logits.numpy().std():.3f}; "
        f"max abs diff pool3 {d_pool3:.2e}, logits {d_logits:.2e}")
  # The tolerance only means something if the features are O(1).
  assert 0.1 < ref_pool3.numpy().std() < 10 and 0.1 < ref_logits.numpy().std() < 10
  assert d_pool3 <= TOL and d_logits <= TOL


# (b) Resizing is torch's bilinear, align_corners=False, without antialiasing.
@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (1, 512, 512, 3), (1, 40, 56, 3),
                                   (1, 512, 300, 3), (1, 299, 299, 3)])
def test_preprocess_matches_torch_interpolate(shape):
  torch = pytest.importorskip("torch")
  images = np.random.default_rng(2).uniform(size=shape).astype(np.float32)
  ours = np.asarray(inception.preprocess(images))
  nchw = torch.from_numpy(images).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
  ref = torch.nn.functional.interpolate(nchw, size=(299, 299), mode="bilinear",
                                        align_corners=False)
  ref = (2 * ref - 1).permute(0, 2, 3, 1).numpy()
  assert ours.shape == (shape[0], 299, 299, 3)
  np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_preprocess_rejects_bad_channels():
  with pytest.raises(ValueError, match="1 or 3"):
    inception.preprocess(np.zeros((1, 28, 28, 2), np.float32))


# (c) Saving and loading.
def test_save_load_roundtrip(tmp_path):
  variables = inception.convert_torch_state_dict(_random_state_dict_np())
  path = str(tmp_path / "fid.msgpack")
  inception.save_variables(path, variables)
  loaded = inception.load_variables(path)
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert len(inception.file_sha256(path)) == 64


def test_load_names_wrong_shape_and_missing_entries(tmp_path):
  variables = jax.tree.map(np.asarray,
                           inception.convert_torch_state_dict(_random_state_dict_np()))
  variables["params"]["fc"]["bias"] = np.zeros(1000, np.float32)
  del variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"]
  path = str(tmp_path / "bad.msgpack")
  inception.save_variables(path, variables)
  with pytest.raises(ValueError) as e:
    inception.load_variables(path)
  message = str(e.value)
  assert "params/fc/bias: (1000,), expected (1008,)" in message
  assert "batch_stats/Mixed_7c/branch_pool/bn/var" in message and "missing" in message


# (d) Conversion checks the keys.
def test_convert_names_missing_unexpected_and_wrong_shape_keys():
  state = _random_state_dict_np()
  state["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)  # ignored
  inception.convert_torch_state_dict(state)
  del state["Mixed_6b.branch7x7_2.conv.weight"]
  state["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
  state["fc.weight"] = np.zeros((1000, 2048), np.float32)
  with pytest.raises(ValueError) as e:
    inception.convert_torch_state_dict(state)
  message = str(e.value)
  assert "1 missing: Mixed_6b.branch7x7_2.conv.weight" in message
  assert "1 unexpected: AuxLogits.fc.weight" in message
  assert "fc.weight: (1000, 2048), expected (1008, 2048)" in message


def test_convert_transposes_kernels():
  state = _random_state_dict_np()
  variables = inception.convert_torch_state_dict(state)
  np.testing.assert_array_equal(  # torch (out, in, kh, kw) -> Flax (kh, kw, in, out)
      variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
      state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].T)
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_5b"]["branch1x1"]["bn"]["var"],
                                state["Mixed_5b.branch1x1.bn.running_var"])


# (e) The converter tool, end to end on a torch.save'd state_dict.
def _converter():
  if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)
  import convert_fid_inception
  return convert_fid_inception


def test_converter_tool_end_to_end(torch_model, torch_variables, tmp_path, capsys):
  import torch
  pth = tmp_path / inception.WEIGHTS_FILE
  torch.save(torch_model.state_dict(), pth)
  out = tmp_path / "out" / "fid_inception.msgpack"
  assert _converter().main(["--pth", str(pth), "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert f"sha256 {inception.file_sha256(str(pth))}" in printed
  assert f"sha256 {inception.file_sha256(str(out))}" in printed
  loaded = inception.load_variables(str(out))
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(torch_variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_converter_tool_errors(tmp_path, capsys, monkeypatch):
  tool = _converter()
  assert tool.main(["--pth", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o")]) == 2
  assert "no such file" in capsys.readouterr().err
  pth = tmp_path / "x.pth"
  pth.write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  assert tool.main(["--pth", str(pth), "--out", str(tmp_path / "o")]) == 2
  assert "needs torch" in capsys.readouterr().err
