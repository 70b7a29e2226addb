"""Errors about the user's input: the CLI prints them as one line, no traceback."""


class DataError(ValueError):
  """The dataset cannot serve this experiment (missing, wrong split or shape)."""
