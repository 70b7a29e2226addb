"""Named registries of components, and the user modules that fill them.

Losses, penalties, models, metrics, extractors and data sources are each a
`Registry`: a dict of name -> entry filled with a `register` decorator. A
user's own module registers with the same decorators, and the config names
it in `config.imports`, so that every command (train, sample, eval, a
resume from config.json, each process of a multi-process run) imports it
before anything is built.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Iterable

from gan_jax.errors import ConfigError, failed_at


def _origin(entry: Any) -> tuple[str, str]:
  fn = getattr(entry, "fn", entry)
  return getattr(fn, "__module__", "?"), getattr(fn, "__qualname__", repr(fn))


class Registry(dict):
  """name -> entry. `register(name)` decorates a function (or takes the
  entry directly); `lookup` fails with the list of registered names."""

  def __init__(self, kind: str):
    super().__init__()
    self.kind = kind

  def copy(self) -> "Registry":
    """A registry with the same entries (tests register into a copy)."""
    out = Registry(self.kind)
    out.update(self)
    return out

  def add(self, name: str, entry: Any) -> Any:
    if not isinstance(name, str) or not name or "." in name:
      raise ConfigError(f"{self.kind} name must be a non-empty string without '.', got {name!r}")
    if name in self and _origin(self[name]) != _origin(entry):
      # The same definition imported again (a re-run module) replaces itself.
      module, qualname = _origin(self[name])
      raise ConfigError(f"{self.kind} {name!r} is already registered by {module}.{qualname}; "
                        f"register yours under another name")
    self[name] = entry
    return entry

  def register(self, name: str, entry: Any = None) -> Callable:
    """`@REG.register("name")` over a function, or `REG.register("name", entry)`."""
    if entry is not None:
      return self.add(name, entry)
    def decorate(fn):
      self.add(name, fn)
      return fn
    return decorate

  def lookup(self, name: str, key: str = "") -> Any:
    if name not in self:
      where = f" ({key})" if key else ""
      raise ConfigError(f"unknown {self.kind} {name!r}{where}; registered: "
                        f"{', '.join(sorted(self)) or 'none'}")
    return self[name]


def _is_path(entry: str) -> bool:
  return entry.endswith(".py") or os.sep in entry


def resolve_imports(imports: Iterable[str], base_dir: str | None = None) -> tuple[str, ...]:
  """`config.imports` with each file path made absolute (relative paths are
  tried against the working directory, then `base_dir`, the config file's
  folder), so that config.json names the same files from anywhere."""
  out = []
  for entry in imports:
    if _is_path(entry) and not os.path.isabs(entry):
      candidates = [os.path.abspath(entry)]
      if base_dir:
        candidates.append(os.path.abspath(os.path.join(base_dir, entry)))
      entry = next((p for p in candidates if os.path.isfile(p)), candidates[0])
    out.append(entry)
  return tuple(out)


def _import_file(path: str):
  if not os.path.isfile(path):
    raise ConfigError(f"config.imports: no such file {path}")
  name = "gan_jax_user_" + hashlib.sha1(path.encode()).hexdigest()[:12]
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def import_modules(imports: Iterable[str]) -> None:
  """Imports each entry of `config.imports` (a module name on sys.path or a
  .py file path) once; its `register` decorators fill the registries. A
  module that cannot be imported, or fails while importing, is one
  ConfigError naming it and where it failed."""
  for entry in imports:
    try:
      if _is_path(entry):
        _import_file(entry)
      else:
        importlib.import_module(entry)
    except ConfigError:
      raise
    except ModuleNotFoundError as e:
      if e.name and (entry == e.name or entry.startswith(e.name + ".")):
        raise ConfigError(f"config.imports: no module {entry!r} ({e}); is its folder on "
                          f"PYTHONPATH?") from e
      raise ConfigError(f"config.imports: module {entry!r} imports {e.name!r}, which is "
                        f"missing ({e})") from e
    except SyntaxError as e:
      raise ConfigError(f"config.imports: syntax error in {e.filename}, line {e.lineno}: "
                        f"{e.msg}") from e
    except Exception as e:  # noqa: BLE001 - the user's module failed: say where, in one line
      raise ConfigError(f"config.imports: importing {entry!r} failed at {failed_at(e)}") from e
