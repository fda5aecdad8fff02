"""User-facing errors: one line that names the file, case or key and what is wrong."""


class ScnasError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line, no traceback."""


class ConfigError(ScnasError):
    """A configuration key is missing, unknown or has the wrong type or value."""


class DatasetError(ScnasError):
    """A dataset, case or file is malformed."""
