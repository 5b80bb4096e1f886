"""User-facing errors.

Anything a user can cause (bad path, bad config key, corrupt image) raises ``HandCLIPError``
with one sentence that names the file, key or value. The CLI prints that sentence and exits
non-zero; only ``--debug`` shows a traceback.
"""


class HandCLIPError(Exception):
    """An error caused by input the user can fix; the message is shown as-is."""

    exit_code = 2


class DataError(HandCLIPError):
    """A dataset, manifest or image is missing, malformed or unusable."""


class ConfigError(HandCLIPError):
    """A configuration file or override is invalid."""


class CheckpointError(HandCLIPError):
    """A checkpoint or weights file is incompatible, corrupt or unsafe to load."""


class GalleryError(HandCLIPError):
    """A gallery is missing, corrupt, locked or was enrolled with another model."""


class TrainingError(HandCLIPError):
    """Training cannot continue (non-finite loss, impossible batch layout, ...)."""


class HandCLIPWarning(UserWarning):
    """Something the user should know that does not stop the command (a silent trap made loud).

    The CLI prints each as one line, ``handclip: warning: <message>``; in Python they are ordinary
    warnings (``warnings.catch_warnings`` records them)."""


class DataWarning(HandCLIPWarning):
    """Something about the data the user should know, that does not stop the command (an image left out,
    a file ignored, an identity kept without a val image)."""


class TrainingWarning(HandCLIPWarning):
    """A training setting or outcome the user should look at (random weights, a tiny validation split,
    an ignored config section, best.pt from stage 1)."""


class CalibrationWarning(HandCLIPWarning):
    """A calibration used where its figures may mislead (scored on people it was fitted on)."""
