"""Validation: each broken rule gives its typed error, naming the field and the rule."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings

from event_strategies import STRATEGIES
from schemas.codec import Codec
from schemas.errors import (
    EnumError,
    EventError,
    FutureEventError,
    MissingFieldError,
    PortRegionError,
    ValidationError,
)
from schemas.examples import example
from schemas.validation import validate, validate_structure

pytestmark = pytest.mark.unit   # no Java, Kafka or ClickHouse: `make unit`

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def clearance(**changes) -> dict:
    r = example("clearance", now=NOW)
    r.update(changes)
    return r


@settings(max_examples=60, deadline=None)
@given(data=STRATEGIES["clearance"].map(lambda r: ("clearance", r)) | STRATEGIES["alert"].map(lambda r: ("alert", r))
       | STRATEGIES["case"].map(lambda r: ("case", r)))
def test_valid_source_events_pass(data):
    validate(*data, now=NOW)


def test_direction_outside_its_enum_says_what_it_expected():
    with pytest.raises(EnumError) as info:
        validate("clearance", clearance(direction="IN"), now=NOW)
    assert str(info.value) == "field `direction`: expected ENTRY or EXIT, got 'IN'"
    assert info.value.reason == "bad_enum" and info.value.field == "direction"


def test_long_enums_list_their_symbols():
    with pytest.raises(EnumError, match=r"field `decision`: expected one of CLEARED, REFUSED, REFERRED, DETAINED, got 'OK'"):
        validate("clearance", clearance(decision="OK"), now=NOW)


def test_missing_required_field_and_null_required_field():
    r = clearance()
    del r["lane"]
    with pytest.raises(MissingFieldError, match="field `lane`: required, but absent"):
        validate("clearance", r, now=NOW)
    with pytest.raises(MissingFieldError, match="field `nationality`: required, got null"):
        validate("clearance", clearance(nationality=None), now=NOW)


def test_optional_field_may_be_absent():
    r = clearance()
    del r["scheduled_port"], r["name_token"]
    validate("clearance", r, now=NOW)


def test_event_time_more_than_the_skew_ahead_of_now_is_a_future_event():
    validate("clearance", clearance(occurred_at=NOW + timedelta(minutes=4)), now=NOW)
    with pytest.raises(FutureEventError) as info:
        validate("clearance", clearance(occurred_at=NOW + timedelta(minutes=6)), now=NOW)
    assert info.value.field == "occurred_at" and "6.0 min ahead" in str(info.value)
    validate("clearance", clearance(occurred_at=NOW + timedelta(minutes=6)), now=NOW, skew=timedelta(minutes=10))


def test_codec_checks_event_time_against_the_wall_clock():
    c = Codec()
    wall = datetime.now(timezone.utc)
    c.encode("clearance", example("clearance"))
    with pytest.raises(FutureEventError):
        c.encode("clearance", example("clearance", now=wall + timedelta(hours=1)))
    c.encode("clearance", example("clearance"))  # the cached limit did not move backwards


def test_port_of_another_region_and_station_of_another_region():
    with pytest.raises(PortRegionError, match="field `port_code`: port NKG is a port of JS, not of SH"):
        validate("clearance", clearance(port_code="NKG"), now=NOW)
    with pytest.raises(PortRegionError, match="field `station_id`: station AH-HFE belongs to AH, not to SH"):
        validate("clearance", clearance(station_id="AH-HFE"), now=NOW)
    with pytest.raises(ValidationError, match="field `port_code`: unknown port 'XXX'"):
        validate("clearance", clearance(port_code="XXX"), now=NOW)


@pytest.mark.parametrize("field", ["nationality", "document_country", "origin_country", "destination_country"])
def test_country_codes_must_be_iso_alpha3(field):
    validate("clearance", clearance(**{field: "FRA"}), now=NOW)
    for bad in ("FR", "fra", "XYZ"):
        with pytest.raises(ValidationError) as info:
            validate("clearance", clearance(**{field: bad}), now=NOW)
        assert info.value.field == field and "ISO 3166-1 alpha-3" in str(info.value)


_SOME_ID = "745cb8cd-3ae6-4677-b463-f7d6168b6a3b"   # fixed: the test ids must be the same in every process


@pytest.mark.parametrize("bad", ["abc", _SOME_ID.upper(), "{%s}" % _SOME_ID, _SOME_ID.replace("-", ""), "-" * 36])
def test_event_id_must_be_a_canonical_uuid(bad):
    with pytest.raises(ValidationError) as info:
        validate("clearance", clearance(event_id=bad), now=NOW)
    assert info.value.field == "event_id" and "UUID" in str(info.value)
    with pytest.raises(ValidationError):
        Codec().encode("clearance", clearance(event_id=bad), now=NOW)


def test_uuid_objects_are_accepted_and_travel_as_strings():
    eid = uuid.uuid4()
    c = Codec()
    _, got = c.decode(c.encode("clearance", clearance(event_id=eid), now=NOW))
    assert got["event_id"] == str(eid)


def test_a_document_number_in_the_subject_field_is_refused_without_repeating_it():
    with pytest.raises(ValidationError) as info:
        validate("clearance", clearance(subject="E12345678"), now=NOW)
    assert info.value.field == "subject" and "E12345678" not in str(info.value)
    assert "subject token" in str(info.value)
    with pytest.raises(ValidationError) as info:
        validate("case", dict(example("case", now=NOW), subjects=["A" * 64]), now=NOW)
    assert info.value.field == "subjects[0]"


def test_naive_timestamps_are_refused():
    with pytest.raises(ValidationError, match="field `published_at`: .*timezone-aware"):
        validate("clearance", clearance(published_at=NOW.replace(tzinfo=None)), now=NOW)
    with pytest.raises(ValidationError, match="field `occurred_at`: .*timezone-aware"):
        Codec().encode("clearance", clearance(occurred_at=NOW.replace(tzinfo=None)), now=NOW)


def test_wrong_types_name_the_field():
    with pytest.raises(ValidationError, match="field `conveyance_id`: expected string, got int 7"):
        validate("clearance", clearance(conveyance_id=7), now=NOW)
    with pytest.raises(ValidationError, match="field `port_code`"):
        Codec().encode("clearance", clearance(port_code=["PVG"]), now=NOW)
    with pytest.raises(ValidationError, match="must be an object"):
        validate_structure("clearance", ["not", "a", "dict"])


def test_alert_needs_a_subject_or_a_conveyance():
    a = example("alert", now=NOW)
    validate("alert", dict(a, subject=None), now=NOW)
    with pytest.raises(MissingFieldError, match="field `subject`"):
        validate("alert", dict(a, subject=None, conveyance_id=None), now=NOW)


def test_transferred_case_names_another_region():
    c = dict(example("case", now=NOW), stage="TRANSFERRED")
    with pytest.raises(MissingFieldError, match="field `transferred_to`: required when stage is TRANSFERRED"):
        validate("case", c, now=NOW)
    with pytest.raises(ValidationError, match="field `transferred_to`"):
        validate("case", dict(c, transferred_to="ZJ"), now=NOW)
    validate("case", dict(c, transferred_to="AH"), now=NOW)


def test_control_window_must_end_after_it_starts():
    ctl = {"event_id": str(uuid.uuid4()), "kind": "HEIGHTENED_MODE", "regions": ["SH"], "starts_at": NOW,
           "ends_at": NOW - timedelta(hours=1), "occurred_at": NOW}
    with pytest.raises(ValidationError, match="field `ends_at`"):
        validate("control", ctl, now=NOW)
    validate("control", dict(ctl, ends_at=NOW + timedelta(days=1)), now=NOW)


def test_every_error_is_an_event_error_with_a_reason():
    for exc in (EnumError, FutureEventError, MissingFieldError, PortRegionError, ValidationError):
        assert issubclass(exc, EventError) and exc.reason
