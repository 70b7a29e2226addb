"""Configs as code: load `get_config()` from a file and apply
`--config.KEY=VALUE` overrides, with clear errors for unknown keys and bad values."""
from __future__ import annotations

import ast
import importlib.util
import json
import os

import ml_collections


class ConfigError(ValueError):
  pass


def load_config(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config()` from a Python file, or reads a saved config.json."""
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")
  if path.endswith(".json"):
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  else:
    spec = importlib.util.spec_from_file_location("_gan_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ConfigError(f"{path} defines no get_config()")
    config = module.get_config()
  config.lock()
  return config


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys += flat_keys(v, f"{prefix}{k}.")
    else:
      keys.append(f"{prefix}{k}")
  return keys


def _parse(key: str, current, text: str):
  def bad(expected):
    return ConfigError(f"bad value for config key '{key}': {text!r} is not {expected}")
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise bad("a bool (true/false)")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise bad("an int") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise bad("a float") from None
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise bad("a tuple, e.g. (-1.0, 1.0)") from None
    if not isinstance(value, (tuple, list)) or (current and len(value) != len(current)):
      raise bad(f"a tuple of {len(current)} values")
    return type(current)(value)
  if current is None:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  return text


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, str]) -> ml_collections.ConfigDict:
  """Sets each dotted KEY to VALUE (a string parsed as the current value's type)."""
  valid = flat_keys(config)
  for key, text in overrides.items():
    if key not in valid:
      raise ConfigError(f"unknown config key '{key}'. Valid keys:\n  " + "\n  ".join(valid))
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    with node.unlocked():
      node[leaf] = _parse(key, node[leaf], text)
  return config
