"""What every channel shares: the `Channel` protocol and the error that tells the dispatcher whether to retry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol, runtime_checkable

from citywatch.alerting.model import Notification
from citywatch.config import StrictModel, read_secret_file
from citywatch.sinks.http import parse_retry_after  # noqa: F401  (the channels' Retry-After)

Language = Literal["vi", "en"]


class DeliveryError(Exception):
    """A failed delivery. `retryable` False means retrying cannot help (a 4xx answer, a refused address):
    the notification goes to the dead-letter log at once. `retry_after` is the wait the far end asked for."""

    def __init__(self, message: str, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


@runtime_checkable
class Channel(Protocol):
    name: str

    def start(self) -> None: ...

    def send(self, notification: Notification) -> None:
        """Deliver one notification to its recipient, or raise DeliveryError."""

    def close(self) -> None: ...


class ChannelOptions(StrictModel):
    language: Language | None = None  # overrides the recipient's language for this channel


def secret(var: str | None, env: Mapping[str, str]) -> str | None:
    """A secret from the environment variable `var`, or from the file that `<var>_FILE` names."""
    if not var:
        return None
    return read_secret_file(var, dict(env)) or env.get(var) or None
