"""Errors the command line reports as one line with exit code 2 (bad user input, never a crash)."""


class UserInputError(Exception):
    """Bad input from the user: the message names what is wrong, where, and what is allowed."""


class ConfigError(UserInputError):
    """A recipe field is missing, mistyped or out of range."""


class DataError(UserInputError):
    """A dataset file is missing or one of its rows is malformed."""
