"""The errors gmsearch reports in one line: what was wrong and what is allowed.

The command line prints ``gmsearch: error: <message>`` and exits with the
error's ``exit_code`` (2: a usage mistake, 1: the environment), without a
traceback unless ``--debug`` is given.
"""

from __future__ import annotations


class GmsearchError(Exception):
    """An error with a one-line message for the user."""

    exit_code = 1


class UsageError(GmsearchError, ValueError):
    """A bad setting, argument or name: the user can fix the command or config (exit status 2)."""

    exit_code = 2


class EnvironmentProblem(GmsearchError, RuntimeError):
    """The machine or a service is not as needed: storage, files, device (exit status 1)."""

    exit_code = 1


class Interrupted(GmsearchError):
    """The run was interrupted (Ctrl-C) at a safe point; running the same command again resumes it."""

    exit_code = 130
