"""Typed errors for bad events. Each names the input, the field and the rule it broke."""
from __future__ import annotations


class EventError(ValueError):
    """A record that breaks the contract.

    ``reason`` is a short machine-readable code (it travels in the dead-letter
    header), ``field`` the offending field (dotted path) or None for the whole
    record, ``source`` where it came from (``line 42``, ``border.SH.alert[3]@1200``).
    """

    reason = "invalid"

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        self.field = field
        self.source = source
        self.detail = message
        super().__init__(self._text())

    def _text(self) -> str:
        parts = []
        if self.source:
            parts.append(self.source)
        if self.field:
            parts.append(f"field `{self.field}`")
        parts.append(self.detail)
        return ", ".join(parts[:-1]) + (": " if len(parts) > 1 else "") + parts[-1]

    def at(self, source: str) -> "EventError":
        """The same error, said of ``source``."""
        self.source = source
        self.args = (self._text(),)
        return self


class UndecodableError(EventError):
    reason = "undecodable"


class UnknownSchemaError(EventError):
    reason = "unknown_schema_id"


class ValidationError(EventError):
    reason = "invalid"


class MissingFieldError(ValidationError):
    reason = "missing_field"


class EnumError(ValidationError):
    reason = "bad_enum"


class FutureEventError(ValidationError):
    reason = "future_event_time"


class PortRegionError(ValidationError):
    reason = "port_not_in_region"


class EventTimeTooEarlyError(ValidationError):
    reason = "event_time_before_floor"
