"""The one base class of every error a user can fix (bad config, data, checkpoint, input).

Each owner raises its own subclass (ConfigError, DatasetError, ImageError, CheckpointError, ...),
which also derives from the builtin that fits it (ValueError, RuntimeError); the launchers
catch `UserError` in one place and print one line.
"""


class UserError(Exception):
    """An error the user can fix; the message names the file, folder or config field."""
