"""Dead letters: a record that breaks the contract goes, as the original bytes, to ``dlq.<source topic>``.

Headers say why and where from: ``reason`` (the error's short code, e.g.
``bad_enum``), ``error`` (the message naming the field and the rule),
``field``, ``source_topic``, ``source_partition``, ``source_offset``. The
worker goes on; nothing is lost silently.
"""
from __future__ import annotations

from schemas import topics
from schemas.errors import EventError

#: header names, in one place for the sink and the tests
HEADERS = ("reason", "error", "field", "source_topic", "source_partition", "source_offset")


def headers_for(source_topic: str, error, *, partition: int | None = None,
                offset: int | None = None) -> list[tuple[str, bytes]]:
    """The dead-letter headers of ``error`` (an ``EventError``, any exception, or a message)."""
    if isinstance(error, EventError):
        reason, message, field = error.reason, str(error), error.field or ""
    elif isinstance(error, BaseException):
        reason, message, field = "error", f"{type(error).__name__}: {error}", ""
    else:
        reason, message, field = "error", str(error), ""
    return [
        ("reason", reason.encode()),
        ("error", message.encode("utf-8", "replace")),
        ("field", field.encode()),
        ("source_topic", source_topic.encode()),
        ("source_partition", b"" if partition is None else str(partition).encode()),
        ("source_offset", b"" if offset is None else str(offset).encode()),
    ]


def dead_letter(producer, source_topic: str, raw: bytes, error, *, partition: int | None = None,
                offset: int | None = None, key: bytes | str | None = None, on_delivery=None) -> str:
    """Produce ``raw`` (unchanged) to ``dlq.<source_topic>`` with the headers of ``error``; returns the topic.

    ``producer`` is a confluent-kafka ``Producer``. A full local queue (``BufferError``) is waited out by
    polling, never dropped. Delivery is the caller's to confirm (``flush`` before committing the source
    offset), like any other write.
    """
    topic = topics.dead_letter(source_topic)
    headers = headers_for(source_topic, error, partition=partition, offset=offset)
    kwargs = {"value": raw, "key": key, "headers": headers}
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    while True:
        try:
            producer.produce(topic, **kwargs)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)
    return topic


def read_headers(headers) -> dict[str, str]:
    """A consumed message's headers (list of (name, bytes)) as a dict of strings."""
    return {k: (v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else (v or ""))
            for k, v in (headers or [])}
