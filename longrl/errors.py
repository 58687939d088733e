"""Errors a user can cause. The CLI prints `str(error)` on one line and exits with code 2."""


class LongRLError(Exception):
    """Base class: a problem with the user's input, named with the fix where there is one."""


class ConfigError(LongRLError):
    """A bad flag, config file or config value."""


class VideoError(LongRLError):
    """A video that is missing, unreadable or unusable."""


class DataError(LongRLError):
    """A bad dataset row or data file."""


class ModelError(LongRLError):
    """A model folder that is missing or is not a supported model."""


class BackendError(LongRLError):
    """An op backend that was asked for but is not available here."""
