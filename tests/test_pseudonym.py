"""Pseudonymization: subject and name tokens, and where the key comes from."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import pseudonym
from schemas.errors import ValidationError
from schemas.pseudonym import DEMO_KEY, Pseudonymizer, SubjectKeyError, load_key
from schemas.settings import Settings

KEY = b"k" * 20 + b"-test-key-of-the-agencies"
ROOT = Path(__file__).resolve().parent.parent


def test_subject_token_is_hmac_hex_and_stable_across_spellings_of_the_number():
    p = Pseudonymizer(KEY)
    token = p.subject("USA", "E1234567")
    assert len(token) == 64 and set(token) <= set("0123456789abcdef")
    assert p.subject(" usa ", "e 123-4567") == token
    assert p.subject("CAN", "E1234567") != token
    assert p.subject("USA", "E1234568") != token
    assert Pseudonymizer(KEY + b"x").subject("USA", "E1234567") != token


def test_name_token_normalises_accents_case_and_spacing_and_binds_the_birth_date():
    p = Pseudonymizer(KEY)
    assert p.name("Müller,  Jean-Luc") == p.name("MULLER JEAN LUC")
    assert p.name("Jean Luc Muller", "1980-01-31") != p.name("Jean Luc Muller")
    assert p.name("Jean Luc Muller", "1980-01-31") != p.name("Jean Luc Muller", "1980-02-01")
    assert p.name("Ann Lee") != p.subject("USA", "ANNLEE")  # separate domains


@settings(max_examples=100, deadline=None)
@given(number=st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=6, max_size=12),
       key=st.binary(min_size=16, max_size=64))
def test_tokens_never_contain_the_key_or_the_document_number(number, key):
    p = Pseudonymizer(key)
    token = p.subject("CHN", number)
    assert number not in token and number.lower() not in token
    assert key.hex() not in token and key.hex() not in repr(p) and "hidden" in repr(p)


def test_bad_inputs_are_refused_without_repeating_them():
    p = Pseudonymizer(KEY)
    with pytest.raises(ValidationError, match="document_country"):
        p.subject("XX", "E1234567")
    with pytest.raises(ValidationError) as info:
        p.subject("USA", " - ")
    assert info.value.field == "document_number"
    with pytest.raises(ValidationError, match="birth_date"):
        p.name("Ann Lee", "31/01/1980")


def test_short_keys_are_refused():
    with pytest.raises(SubjectKeyError):
        Pseudonymizer(b"short")


def test_key_from_the_setting_and_from_a_file(tmp_path):
    assert load_key(Settings(subject_key=KEY.decode())) == KEY
    path = tmp_path / "subject.key"
    path.write_bytes(KEY + b"\n")
    assert load_key(Settings(subject_key_file=path)) == KEY


def test_missing_key_fails_outside_demo_mode(tmp_path):
    with pytest.raises(SubjectKeyError, match="YRDBUS_SUBJECT_KEY"):
        load_key(Settings(subject_key=None, subject_key_file=None, demo=False))
    with pytest.raises(SubjectKeyError, match="cannot read"):
        load_key(Settings(subject_key_file=tmp_path / "absent.key"))


def test_short_configured_key_error_does_not_show_the_key():
    with pytest.raises(SubjectKeyError) as info:
        load_key(Settings(subject_key="tiny-secret"))
    assert "tiny-secret" not in str(info.value)


def test_demo_mode_uses_the_public_key_and_warns_loudly_without_printing_it(monkeypatch, capsys):
    monkeypatch.setattr(pseudonym, "_warned", False)
    assert load_key(Settings(subject_key=None, subject_key_file=None, demo=True)) == DEMO_KEY
    err = capsys.readouterr().err
    assert "DEMO MODE" in err and DEMO_KEY.decode() not in err and DEMO_KEY.hex() not in err


def test_codec_example_uses_the_configured_key():
    env = {k: v for k, v in os.environ.items() if not k.startswith("YRDBUS_SUBJECT")}
    env["YRDBUS_SUBJECT_KEY"] = KEY.decode()
    out = subprocess.run([sys.executable, "-m", "yrdbus.cli", "codec", "example", "--kind", "clearance"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    event = json.loads(out.stdout)
    assert event["subject"] == Pseudonymizer(KEY).subject("USA", "X00000001")
    assert KEY.decode() not in out.stdout + out.stderr
