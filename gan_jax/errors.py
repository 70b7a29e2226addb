"""Errors about the user's input or environment. Every one derives from
`UserError`, which the CLI prints as one line (no traceback) and exits 1."""
import traceback


class UserError(Exception):
  """A problem with the user's config, data, files or run, not a bug."""


class ConfigError(UserError, ValueError):
  """A config value (or a combination of values) that cannot work."""


class DataError(UserError, ValueError):
  """The dataset cannot serve this experiment (missing, wrong split or shape)."""


def failed_at(e: BaseException) -> str:
  """'FILE, line N: Type: message' of where `e` was raised (the user's code
  that failed, for a one-line error)."""
  frame = traceback.extract_tb(e.__traceback__)[-1]
  return f"{frame.filename}, line {frame.lineno}: {type(e).__name__}: {e}"
