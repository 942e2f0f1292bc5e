"""Exceptions that reach the user as one line.

Every error the CLI prints is a BridgeError: its message is a single line naming the cause,
and never carries a secret. Anything else escaping a command is a bug and is logged as such.
"""


class BridgeError(Exception):
    """Base for every failure shown to a user; str(err) is one line."""

    exit_code = 1

    def __init__(self, message: str):
        # One line, always: a newline in a message would split log records and sinfo reasons;
        # other control characters (from an API answer, a file) are written escaped.
        from hpc_bridge.log import escape_controls

        super().__init__(escape_controls(" ".join(str(message).split())))


class ConfigError(BridgeError):
    """The configuration file or a command-line value is invalid."""

    exit_code = 2


class UsageError(BridgeError):
    """The command line is wrong (bad hostlist, unknown node, conflicting options)."""

    exit_code = 2


class HostlistError(UsageError, ValueError):
    """A Slurm hostlist expression that Slurm itself would reject."""


class ApiError(BridgeError):
    """The cluster API answered with an error, or its answer could not be understood."""

    def __init__(self, message: str, *, endpoint: str = "", status: int | None = None):
        self.endpoint = endpoint
        self.status = status
        super().__init__(message)


class ApiUnreachable(ApiError):
    """The cluster API could not be reached (connection refused, timeouts), retries exhausted."""


class ConflictError(ApiError):
    """409 from the API: a duplicate requestId or an invalid request."""


class AuthError(ApiError):
    """401/403: the credentials were refused."""


class SlurmError(BridgeError):
    """A Slurm command failed, or a value was refused before it could reach Slurm."""


class StateError(BridgeError):
    """The state file could not be locked, read or written."""
