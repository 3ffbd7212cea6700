"""Pseudonymization at the station: document numbers and names become HMAC-SHA256 subject tokens.

A subject token is ``HMAC-SHA256(key, "subject" | country | number)`` in hex
over a normalised form (upper case, ISO alpha-3 country, separators and
spaces dropped from the number), so that ``e1234567`` and ``E 123-4567``
give the same token and every region, holding the same key, gives the same
token for the same document. Names likewise (accents, case and spacing
normalised, with the birth date when known). The key comes from
configuration (``YRDBUS_SUBJECT_KEY`` or ``YRDBUS_SUBJECT_KEY_FILE``), is
never logged and never committed; without one, only demo mode runs, on a
fixed public key, and says so on stderr.
"""
from __future__ import annotations

import hashlib
import hmac
import sys
import unicodedata
from datetime import date, datetime

from schemas import reference
from schemas.errors import ValidationError

#: The demo key is public (it is in this file): tokens made with it protect nothing.
DEMO_KEY = b"yrdbus-public-demo-key/not-a-secret/never-use-in-production"
MIN_KEY_BYTES = 16
_SEP = b"\x1f"  # unit separator: no field can contain it after normalisation


class SubjectKeyError(RuntimeError):
    """No usable subject key is configured."""


class Pseudonymizer:
    """Turns identities into subject tokens with one HMAC key. Thread-safe; the key is never shown."""

    __slots__ = ("_mac",)

    def __init__(self, key: bytes):
        if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
            raise SubjectKeyError(f"the subject key must be at least {MIN_KEY_BYTES} bytes")
        self._mac = hmac.new(bytes(key), digestmod=hashlib.sha256)

    def __repr__(self) -> str:
        return "Pseudonymizer(key=<hidden>)"

    def _token(self, *parts: bytes) -> str:
        mac = self._mac.copy()
        mac.update(_SEP.join(parts))
        return mac.hexdigest()

    def subject(self, document_country: str, document_number: str) -> str:
        """The subject token of a document: 64 hex digits."""
        country = normalise_country(document_country)
        number = normalise_document_number(document_number)
        return self._token(b"subject", country.encode(), number.encode())

    def name(self, name: str, birth_date: date | str | None = None) -> str:
        """The token of a person's name (and birth date when known): 64 hex digits."""
        norm = normalise_name(name)
        born = _birth_date(birth_date)
        return self._token(b"name", norm.encode(), born.encode())


def normalise_country(country: str) -> str:
    c = (country or "").strip().upper() if isinstance(country, str) else ""
    if c not in reference.countries():
        raise ValidationError("expected the issuing country as an ISO 3166-1 alpha-3 code (e.g. CHN, USA)",
                              field="document_country")
    return c


def normalise_document_number(number: str) -> str:
    """Upper case, letters and digits only: what a reader or an officer may type differently is dropped."""
    if not isinstance(number, str):
        raise ValidationError(f"expected a string, got {type(number).__name__}", field="document_number")
    n = "".join(ch for ch in unicodedata.normalize("NFKC", number).upper() if ch.isalnum())
    if not n:
        # the error never repeats the input: it may be a document number
        raise ValidationError("has no letters or digits", field="document_number")
    return n


def normalise_name(name: str) -> str:
    """Accents dropped, case folded, punctuation as spaces, spaces collapsed: "Müller,  Jean-Luc" -> "muller jean luc"."""
    if not isinstance(name, str):
        raise ValidationError(f"expected a string, got {type(name).__name__}", field="name")
    decomposed = unicodedata.normalize("NFKD", name)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    words = "".join(ch if ch.isalnum() else " " for ch in bare).split()
    if not words:
        raise ValidationError("has no letters", field="name")
    return " ".join(words)


def _birth_date(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass
    raise ValidationError("expected an ISO date (YYYY-MM-DD)", field="birth_date")


_warned = False


def load_key(settings) -> bytes:
    """The subject key from ``settings`` (``subject_key``, else ``subject_key_file``).

    Without either: ``SubjectKeyError``, unless ``settings.demo``, which gives the public demo key and
    warns on stderr (once per process). The key itself is never printed.
    """
    global _warned
    secret = getattr(settings, "subject_key", None)
    if secret is not None:
        value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
        key = value.encode()
        if len(key) < MIN_KEY_BYTES:
            raise SubjectKeyError(f"YRDBUS_SUBJECT_KEY is shorter than {MIN_KEY_BYTES} bytes")
        return key
    path = getattr(settings, "subject_key_file", None)
    if path:
        try:
            key = open(path, "rb").read().strip()
        except OSError as exc:
            raise SubjectKeyError(f"cannot read YRDBUS_SUBJECT_KEY_FILE {path}: {exc.strerror}") from None
        if len(key) < MIN_KEY_BYTES:
            raise SubjectKeyError(f"the key in {path} is shorter than {MIN_KEY_BYTES} bytes")
        return key
    if getattr(settings, "demo", False):
        if not _warned:
            _warned = True
            print("WARNING: DEMO MODE: no subject key is configured (YRDBUS_SUBJECT_KEY / YRDBUS_SUBJECT_KEY_FILE); "
                  "subject tokens are made with the PUBLIC demo key and protect NO identity. "
                  "Never use demo mode with real travellers' data.", file=sys.stderr, flush=True)
        return DEMO_KEY
    raise SubjectKeyError(
        "no subject key: set YRDBUS_SUBJECT_KEY or YRDBUS_SUBJECT_KEY_FILE (the HMAC key the agencies share), "
        "or YRDBUS_DEMO=true to run on the public demo key")


def from_settings(settings) -> Pseudonymizer:
    return Pseudonymizer(load_key(settings))
