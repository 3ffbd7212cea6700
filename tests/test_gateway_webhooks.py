"""Webhooks on the real broker, POSTing to a small HTTP receiver on loopback: signature, retry, dead letters.

The receivers are on 127.0.0.1, which a webhook may target only when its entry says `allow_private = true`
(see test_hostile_gateway.py for the refusals)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from confluent_kafka import Consumer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from schemas.deadletter import read_headers

from gateway_harness import Publisher, Receiver, RunningGateway, derived_alert, withdrawal, write_access_file

SECRET = "whsec-test-0123456789"


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(statuses):
        r = Receiver(statuses)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def pub(kafka, unique):
    publisher = Publisher(kafka, f"{unique}.")
    yield publisher
    publisher.close()


def webhook_entry(name: str, url: str, extra: str = "") -> str:
    return (f'[[webhooks]]\nname = "{name}"\nurl = "{url}"\nsecret_env = "YRDBUS_TEST_WEBHOOK_SECRET"\n'
            f'attempts = 3\nbackoff_s = 0.05\nallow_private = true\n{extra}\n')


def dead_letters(bootstrap: str, topic: str, group: str, expect: int, timeout: float = 20) -> list:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got.append(m)
    # a moment more, to see that nothing else comes
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got.append(m)
    c.close()
    return got


def test_a_webhook_that_fails_twice_is_retried_with_backoff_and_then_gets_the_signed_alert(
        kafka, unique, tmp_path, monkeypatch, receivers, pub):
    monkeypatch.setenv("YRDBUS_TEST_WEBHOOK_SECRET", SECRET)
    receiver = receivers([500, 503, 200])
    tokens = write_access_file(tmp_path, {}, webhook_entry("ah-cc", receiver.url,
                                                             'regions = ["AH"]\nmin_severity = "HIGH"'))
    prefix = f"{unique}."
    with RunningGateway(kafka, tokens, prefix) as gw:
        not_for_it = [derived_alert(must_act=["ZJ"], severity="CRITICAL"), derived_alert(must_act=["AH"], severity="LOW")]
        alert = derived_alert(must_act=["AH"], severity="HIGH")
        pub.publish_many(not_for_it + [alert])
        requests = receiver.wait_for(3)
        time.sleep(0.5)   # nothing more should come
        assert len(receiver.requests) == 3
        for i, req in enumerate(requests, start=1):
            h = {k.lower(): v for k, v in req["headers"].items()}
            expected = "sha256=" + hmac.new(SECRET.encode(), req["body"], hashlib.sha256).hexdigest()
            assert hmac.compare_digest(h["x-yrdbus-signature"], expected)
            assert abs(int(h["x-yrdbus-timestamp"]) - time.time()) < 30
            assert h["x-yrdbus-attempt"] == str(i) and h["x-yrdbus-delivery"] == alert["alert_id"]
            # Standard Webhooks, checked by its own library with the secret in its usual form
            verified = Webhook("whsec_" + base64.b64encode(SECRET.encode()).decode()).verify(req["body"], h)
            assert verified["alert"]["alert_id"] == alert["alert_id"] and h["webhook-id"] == alert["alert_id"]
            tampered = req["body"].replace(b'"attempt":', b'"attempt": ')
            with pytest.raises(WebhookVerificationError):
                Webhook("whsec_" + base64.b64encode(SECRET.encode()).decode()).verify(tampered, h)
            body = json.loads(req["body"])
            assert body["alert"]["alert_id"] == alert["alert_id"] and body["alert"]["evidence"] == alert["evidence"]
            assert body["webhook"] == "ah-cc" and body["attempt"] == i
        gaps = [b["at"] - a["at"] for a, b in zip(requests, requests[1:])]
        assert all(g >= 0.05 for g in gaps), gaps      # backoff: 0.05 s, 0.1 s (plus jitter) between attempts
        assert gw.metric("yrdbus_gateway_webhook_attempts_total", webhook="ah-cc") == 3
        assert gw.metric("yrdbus_gateway_webhook_failures_total", webhook="ah-cc", reason="500") == 1
        assert gw.metric("yrdbus_gateway_alerts_delivered_total", kind="webhook") == 1
        assert gw.metric("yrdbus_gateway_webhook_dead_letters_total", webhook="ah-cc") == 0


def test_a_webhook_of_two_regions_gets_an_alert_once_and_the_version_withdrawing_it_once_with_its_own_delivery_id(
        kafka, unique, tmp_path, monkeypatch, receivers, pub):
    monkeypatch.setenv("YRDBUS_TEST_WEBHOOK_SECRET", SECRET)
    receiver = receivers([200])
    tokens = write_access_file(tmp_path, {}, webhook_entry("two", receiver.url, 'regions = ["AH", "SH"]'))
    with RunningGateway(kafka, tokens, f"{unique}."):
        raised = derived_alert(must_act=["AH"], inform=["SH"])          # routed to both topics the webhook reads
        gone = withdrawal(raised, "flag resolved before the crossing")
        pub.publish_many([raised, gone])
        # one marker a topic, behind the alert's copies in their partitions: once both are posted, every copy was read
        markers = [derived_alert(must_act=[r], summary=f"marker {r}") for r in ("AH", "SH")]
        for m in markers:
            pub.publish(m, to=m["must_act"], derived=False, key=raised["alert_id"])
        marker_ids = {m["alert_id"] for m in markers}

        def posted():
            return [json.loads(r["body"]) for r in receiver.requests]

        deadline = time.monotonic() + 30
        while not marker_ids <= {b["alert"]["alert_id"] for b in posted()} and time.monotonic() < deadline:
            time.sleep(0.05)
        bodies = posted()
        assert marker_ids <= {b["alert"]["alert_id"] for b in bodies}
        got = [(b["delivery_id"], b["alert"]["status"], b["alert"]["status_reason"]) for b in bodies
               if b["alert"]["alert_id"] == raised["alert_id"]]
        aid = raised["alert_id"]
        assert got == [(aid, "RAISED", None), (f"{aid}:WITHDRAWN", "WITHDRAWN", "flag resolved before the crossing")]
        headers = [{k.lower(): v for k, v in r["headers"].items()} for r in receiver.requests
                   if json.loads(r["body"])["alert"]["alert_id"] == aid]
        assert [(h["x-yrdbus-delivery"], h["x-yrdbus-alert-status"]) for h in headers] == [
            (aid, "RAISED"), (f"{aid}:WITHDRAWN", "WITHDRAWN")]


def test_a_webhook_that_keeps_failing_dead_letters_the_alert_after_n_attempts_and_goes_on(
        kafka, unique, tmp_path, monkeypatch, receivers, pub):
    monkeypatch.setenv("YRDBUS_TEST_WEBHOOK_SECRET", SECRET)
    down = receivers([503, 503, 503, 200])       # down for three attempts: the first alert is dead-lettered
    gone = receivers([404])                       # a wrong URL: not retried at all
    secret_file = tmp_path / "gone.secret"
    secret_file.write_text("another-secret\n")
    hooks = webhook_entry("sh-cc", down.url, 'regions = ["SH"]') + (
        f'[[webhooks]]\nname = "gone"\nurl = "{gone.url}"\nsecret_file = "{secret_file}"\nall = true\n'
        f'attempts = 3\nbackoff_s = 0.05\nallow_private = true\n')
    tokens = write_access_file(tmp_path, {}, hooks)
    prefix = f"{unique}."
    with RunningGateway(kafka, tokens, prefix) as gw:
        first = derived_alert(must_act=["SH"], severity="CRITICAL")
        raw = pub.publish(first)
        assert len(down.wait_for(3)) >= 3
        second = derived_alert(must_act=["SH"], severity="HIGH")   # the receiver is back: the worker went on
        pub.publish(second)
        requests = down.wait_for(4)
        assert len(requests) == 4
        assert [json.loads(r["body"])["alert"]["alert_id"] for r in requests] == [first["alert_id"]] * 3 + [second["alert_id"]]
        assert len(gone.wait_for(2)) == 2 and len(gone.requests) == 2   # one attempt per alert

        letters = dead_letters(kafka.bootstrap, f"dlq.{prefix}webhooks", unique, expect=3)
        by_hook = {}
        for m in letters:
            h = read_headers(m.headers())
            by_hook.setdefault(h["webhook"], []).append((h, m.value()))
        assert sorted(by_hook) == ["gone", "sh-cc"] and len(by_hook["sh-cc"]) == 1 and len(by_hook["gone"]) == 2
        h, value = by_hook["sh-cc"][0]
        assert value == raw                                            # the original bytes
        assert h["reason"] == "http_503" and h["attempts"] == "3" and h["http_status"] == "503"
        assert h["source_topic"] == f"{prefix}alerts.to.SH" and h["alert_id"] == first["alert_id"]
        assert "503" in h["error"]
        assert {x[0]["reason"] for x in by_hook["gone"]} == {"http_404"}
        assert all(x[0]["attempts"] == "1" and "not retried" in x[0]["error"] for x in by_hook["gone"])
        assert gw.metric("yrdbus_gateway_webhook_dead_letters_total", webhook="sh-cc") == 1
        assert gw.metric("yrdbus_gateway_webhook_dead_letters_total", webhook="gone") == 2


def test_a_webhook_subscription_without_a_secret_is_refused_at_start(kafka, unique, tmp_path, monkeypatch):
    monkeypatch.delenv("YRDBUS_TEST_WEBHOOK_SECRET", raising=False)
    tokens = write_access_file(tmp_path, {}, webhook_entry("nosecret", "http://127.0.0.1:9/hook", 'regions = ["AH"]'))
    from connectors.gateway import Gateway
    from connectors.gateway.access import AccessFileError

    with pytest.raises(AccessFileError, match=r"webhooks\[0\] \(name 'nosecret'\), field `secret_env`: .* is not set"):
        Gateway(kafka, tokens_file=tokens.path, topic_prefix=f"{unique}.")
