"""Errors about the user's input or environment. Every one derives from
`UserError`, which the CLI prints as one line (no traceback) and exits 1."""


class UserError(Exception):
  """A problem with the user's config, data, files or run, not a bug."""


class ConfigError(UserError, ValueError):
  """A config value (or a combination of values) that cannot work."""


class DataError(UserError, ValueError):
  """The dataset cannot serve this experiment (missing, wrong split or shape)."""
