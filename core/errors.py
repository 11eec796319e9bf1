"""Errors a user can act on. Each message says what is wrong, where, and how to fix it."""


class ReelmaskError(Exception):
    """Base of every error reelmask reports to a user (one-line reason, no traceback)."""


class ConfigError(ReelmaskError):
    """A config file, job.toml or --set value is wrong."""


class FrameFolderError(ReelmaskError):
    """The input folder is not a usable sequence of frames."""


class PromptError(ReelmaskError):
    """prompts.json (or a file it names) is malformed or does not fit the frames."""


class ModelError(ReelmaskError):
    """A model cannot be found, downloaded, verified or built."""


class DeviceMemoryError(ReelmaskError):
    """A job that would not fit in its device's free memory; said before it starts."""


class OutputError(ReelmaskError):
    """The output folder cannot be written."""


class Cancelled(ReelmaskError):
    """The job was asked to stop."""


class TrainingError(ReelmaskError):
    """A training request or dataset that cannot work; the message says what and how to fix it."""


class EvaluationError(ReelmaskError):
    """`reelmask eval` cannot pair predictions with ground truth; the message says where and how to fix it."""


class StateError(ReelmaskError):
    """The state database cannot be used as asked: missing, busy, damaged, of another schema, or owned by
    another daemon. `busy` is true when trying again later may work."""

    def __init__(self, message: str, *, busy: bool = False):
        super().__init__(message)
        self.busy = busy
