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
    """The cluster API answered with an error, or its answer could not be understood.

    Callers decide on the subclass, never on the message or the status code: NotFoundError,
    ThrottledError, ServerError, ConflictError, AuthError, InvalidRequestError, ApiUnreachable
    (TlsError)."""

    def __init__(self, message: str, *, endpoint: str = "", status: int | None = None):
        self.endpoint = endpoint
        self.status = status
        super().__init__(message)


class ApiUnreachable(ApiError):
    """The cluster API could not be reached (connection refused, timeouts), retries exhausted.
    The request may have reached the server: a recorded call stays open to be re-sent."""


class TlsError(ApiUnreachable):
    """The server's certificate could not be verified (not retried: it will not change)."""


class NotFoundError(ApiError):
    """404: the cluster, the operation or the request id is unknown to the API."""


class ThrottledError(ApiError):
    """429 after every retry the budget allowed."""


class ServerError(ApiError):
    """5xx after every retry the budget allowed."""


class ConflictError(ApiError):
    """409: the API rejected the request (the reference: "Invalid input"). A 409 answering a
    repeated requestId whose first call is found again is a success, never this error."""


class AuthError(ApiError):
    """401/403: the credentials were refused."""


class InvalidRequestError(ApiError):
    """A request that does not fit the reference's schema (a damaged record of a call, say):
    it is not sent, and its call is closed as failed rather than re-sent for ever."""


class SlurmError(BridgeError):
    """A Slurm command failed, or a value was refused before it could reach Slurm."""


class StateError(BridgeError):
    """The state file could not be locked, read or written."""
