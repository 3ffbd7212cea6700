"""The security options of every Kafka client of the bus, from the one settings object.

Each process is one Kafka principal: ``YRDBUS_KAFKA_USERNAME`` with its SCRAM
password from ``YRDBUS_KAFKA_PASSWORD_FILE`` (or ``YRDBUS_KAFKA_PASSWORD``),
over ``YRDBUS_KAFKA_SECURITY_PROTOCOL`` (``SASL_SSL``: TLS that verifies the
broker's certificate against ``YRDBUS_KAFKA_SSL_CA_LOCATION``). Three client
libraries spell the same options three ways, so this module is the one place
that spells them:

- ``kafka_security(settings)``: librdkafka (confluent-kafka Producer, Consumer, AdminClient);
- ``aiokafka_security(settings)``: aiokafka keyword arguments (the gateway);
- ``faust_credentials(settings)``: Faust's ``broker_credentials`` (the stream workers).

With the default ``PLAINTEXT`` each returns nothing to add, so a plain local
stack is unchanged. ``settings`` defaults to the process's ``get_settings()``.
The password is read when a client is built and handed to the library; it is
never logged (the settings object holds it as a ``SecretStr``).
"""
from __future__ import annotations

import ssl
from pathlib import Path

from schemas.settings import Settings, get_settings


class KafkaSecurityError(ValueError):
    """The security settings are incomplete or unreadable; the message says which variable to set."""


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else get_settings()


def password(settings: Settings | None = None) -> str | None:
    """The SCRAM password of the process's principal: from the file, else the environment; None if neither."""
    s = _settings(settings)
    if s.kafka_password_file:
        try:
            text = Path(s.kafka_password_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise KafkaSecurityError(f"YRDBUS_KAFKA_PASSWORD_FILE {s.kafka_password_file}: cannot be read "
                                     f"({exc.strerror})") from None
        first = text.splitlines()[0].strip() if text.strip() else ""
        if not first:
            raise KafkaSecurityError(f"YRDBUS_KAFKA_PASSWORD_FILE {s.kafka_password_file} is empty")
        return first
    if s.kafka_password is not None:
        return s.kafka_password.get_secret_value()
    return None


def _credentials(s: Settings) -> tuple[str, str]:
    if not s.kafka_username:
        raise KafkaSecurityError(f"YRDBUS_KAFKA_SECURITY_PROTOCOL is {s.kafka_security_protocol}: set "
                                 f"YRDBUS_KAFKA_USERNAME to this process's principal (e.g. svc-sink)")
    pw = password(s)
    if pw is None:
        raise KafkaSecurityError(f"principal {s.kafka_username}: set YRDBUS_KAFKA_PASSWORD_FILE (or "
                                 f"YRDBUS_KAFKA_PASSWORD) to its SCRAM password")
    return s.kafka_username, pw


def _ca(s: Settings) -> str | None:
    if s.kafka_ssl_ca_location is None:
        return None
    ca = Path(s.kafka_ssl_ca_location)
    if not ca.is_file():
        raise KafkaSecurityError(f"YRDBUS_KAFKA_SSL_CA_LOCATION {ca} is not a file")
    return str(ca.resolve())


def secured(settings: Settings | None = None) -> bool:
    return _settings(settings).kafka_security_protocol != "PLAINTEXT"


def kafka_security(settings: Settings | None = None) -> dict:
    """librdkafka options (``security.protocol``, ``sasl.*``, ``ssl.*``); empty for PLAINTEXT."""
    s = _settings(settings)
    if s.kafka_security_protocol == "PLAINTEXT":
        return {}
    user, pw = _credentials(s)
    conf = {"security.protocol": s.kafka_security_protocol, "sasl.mechanism": s.kafka_sasl_mechanism,
            "sasl.username": user, "sasl.password": pw}
    if s.kafka_security_protocol == "SASL_SSL":
        ca = _ca(s)
        if ca:
            conf["ssl.ca.location"] = ca
        # The broker's certificate must name the host we dialled (librdkafka's default since 2.0; said here
        # so that nobody turns it off by accident).
        conf["ssl.endpoint.identification.algorithm"] = "https"
        conf["enable.ssl.certificate.verification"] = True
    return conf


def client_config(settings: Settings | None = None, **extra) -> dict:
    """``bootstrap.servers`` plus the security options plus ``extra`` (librdkafka names, dots as in Kafka)."""
    s = _settings(settings)
    return {"bootstrap.servers": s.bootstrap, **kafka_security(s), **extra}


def ssl_context(settings: Settings | None = None) -> ssl.SSLContext:
    """A TLS context that verifies the broker's certificate and host name against the configured CA."""
    s = _settings(settings)
    ca = _ca(s)
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def aiokafka_security(settings: Settings | None = None) -> dict:
    """Keyword arguments for aiokafka's consumer and producer; empty for PLAINTEXT."""
    s = _settings(settings)
    if s.kafka_security_protocol == "PLAINTEXT":
        return {}
    user, pw = _credentials(s)
    kw = {"security_protocol": s.kafka_security_protocol, "sasl_mechanism": s.kafka_sasl_mechanism,
          "sasl_plain_username": user, "sasl_plain_password": pw}
    if s.kafka_security_protocol == "SASL_SSL":
        kw["ssl_context"] = ssl_context(s)
    return kw


def faust_credentials(settings: Settings | None = None):
    """Faust's ``broker_credentials`` for the process's principal, or None for PLAINTEXT."""
    s = _settings(settings)
    if s.kafka_security_protocol == "PLAINTEXT":
        return None
    import faust

    user, pw = _credentials(s)
    return faust.SASLCredentials(username=user, password=pw, mechanism=s.kafka_sasl_mechanism,
                                 ssl_context=ssl_context(s) if s.kafka_security_protocol == "SASL_SSL" else None)


def describe(settings: Settings | None = None) -> str:
    """How this process connects, for start-up lines (never the password)."""
    s = _settings(settings)
    if s.kafka_security_protocol == "PLAINTEXT":
        return "PLAINTEXT"
    return f"{s.kafka_security_protocol} as {s.kafka_username} ({s.kafka_sasl_mechanism})"
