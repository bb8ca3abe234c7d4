"""Errors that mechbd reports to the user as one line (the CLI prints them without a traceback)."""


class MechbdError(Exception):
    """A problem with the user's input or environment, described in one line."""


class ConfigError(MechbdError):
    """A config file is missing, unreadable, or has a bad field or value."""


class RunFolderError(MechbdError):
    """A run folder cannot be created, written, or reused as asked."""
