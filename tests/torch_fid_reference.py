"""PyTorch reference of the FID Inception v3, to test gan_jax.evaluation.inception against.

A transcription, in torch only (torchvision is not needed), of the network
pytorch-fid builds with `fid_inception_v3()` and runs inside `InceptionV3`
(resize_input=True, normalize_input=True):
  * from torchvision `torchvision/models/inception.py` (BSD-3-Clause,
    Copyright (c) Soumith Chintala 2016, the torchvision contributors):
    BasicConv2d, InceptionB, InceptionD and the Inception3 stem, pools and fc
    (num_classes=1008, aux_logits=False);
  * from pytorch-fid `src/pytorch_fid/inception.py` (Apache-2.0, Copyright
    Maximilian Seitzer): FIDInceptionA, FIDInceptionC, FIDInceptionE_1 (avg
    pools with count_include_pad=False), FIDInceptionE_2 (max pool) and the
    preprocessing (F.interpolate bilinear, align_corners=False, to 299, then
    2x - 1).
The state_dict keys are those of `fid_inception_v3()` (Conv2d_1a_3x3.conv.weight,
Mixed_5b.branch1x1.bn.running_mean, ..., fc.weight, fc.bias), so pytorch-fid's
weights file loads into `FIDInceptionV3Torch` unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicConv2d(nn.Module):
  def __init__(self, in_channels: int, out_channels: int, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class FIDInceptionA(nn.Module):
  def __init__(self, in_channels: int, pool_features: int):
    super().__init__()
    self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

  def forward(self, x):
    branch1x1 = self.branch1x1(x)
    branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
    branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    branch_pool = self.branch_pool(branch_pool)
    return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
  def __init__(self, in_channels: int):
    super().__init__()
    self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    branch3x3 = self.branch3x3(x)
    branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
    return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(nn.Module):
  def __init__(self, in_channels: int, channels_7x7: int):
    super().__init__()
    c7 = channels_7x7
    self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

  def forward(self, x):
    branch1x1 = self.branch1x1(x)
    branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    branch7x7dbl = self.branch7x7dbl_1(x)
    branch7x7dbl = self.branch7x7dbl_2(branch7x7dbl)
    branch7x7dbl = self.branch7x7dbl_3(branch7x7dbl)
    branch7x7dbl = self.branch7x7dbl_4(branch7x7dbl)
    branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)
    branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    branch_pool = self.branch_pool(branch_pool)
    return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
  def __init__(self, in_channels: int):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
    branch7x7x3 = self.branch7x7x3_1(x)
    branch7x7x3 = self.branch7x7x3_2(branch7x7x3)
    branch7x7x3 = self.branch7x7x3_3(branch7x7x3)
    branch7x7x3 = self.branch7x7x3_4(branch7x7x3)
    branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
    return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (max_pool=False) and FIDInceptionE_2 (max_pool=True)."""

  def __init__(self, in_channels: int, max_pool: bool = False):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

  def forward(self, x):
    branch1x1 = self.branch1x1(x)
    branch3x3 = self.branch3x3_1(x)
    branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
    branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    branch3x3dbl = torch.cat(
        [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
    if self.max_pool:
      branch_pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    else:
      branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    branch_pool = self.branch_pool(branch_pool)
    return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionV3Torch(nn.Module):
  """torchvision Inception3(num_classes=1008, aux_logits=False) with
  pytorch-fid's patched blocks; forward returns (pool3 (N, 2048), logits)."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
    self.Mixed_5b = FIDInceptionA(192, pool_features=32)
    self.Mixed_5c = FIDInceptionA(256, pool_features=64)
    self.Mixed_5d = FIDInceptionA(288, pool_features=64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = FIDInceptionE(1280)
    self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.dropout = nn.Dropout(p=0.5)
    self.fc = nn.Linear(2048, 1008)

  def forward(self, x):
    x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
    x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                 "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
      x = getattr(self, name)(x)
    pool3 = torch.flatten(self.avgpool(x), 1)
    return pool3, self.fc(self.dropout(pool3))


def preprocess(images: torch.Tensor) -> torch.Tensor:
  """pytorch-fid InceptionV3's resize_input + normalize_input on an NCHW
  batch in [0, 1]."""
  x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
  return 2 * x - 1


@torch.no_grad()
def fid_features(model: FIDInceptionV3Torch, images: torch.Tensor):
  """(pool3, logits) of an NCHW float batch in [0, 1] (3 channels, as
  pytorch-fid expects; repeat grey images before)."""
  model.eval()
  return model(preprocess(images))
