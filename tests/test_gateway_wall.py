"""The live alert wall in headless Chromium (Debian's `chromium`, driven by Playwright), on the real broker."""
from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from gateway_harness import STANDARD_SCOPES, Publisher, RunningGateway, derived_alert, withdrawal, write_access_file

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ENGLISH = "localStorage.setItem('yrdbus.wall.lang', 'en')"     # the wall's language switch, set before it loads


def sign_in(page, url: str, token: str) -> None:
    """Open the wall, enter the token, wait until its stream is live."""
    page.goto(url + "/")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#status.live", timeout=10_000)


def console(browser, url: str, token: str):
    """A wall in a browser context of its own (its own tab storage), signed in, 1400 px wide."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    sign_in(page, url, token)
    return page


@pytest.fixture
def pub(kafka, unique):
    publisher = Publisher(kafka, f"{unique}.")
    yield publisher
    publisher.close()


def test_an_alert_published_to_kafka_appears_on_the_wall_within_two_seconds(kafka, unique, tmp_path, pub):
    assert os.path.exists(CHROMIUM), "Debian's chromium is needed: `bash infra/os-packages.sh chromium` (make test does it)"
    tokens = write_access_file(tmp_path, STANDARD_SCOPES)
    with RunningGateway(kafka, tokens, f"{unique}.") as gw, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.add_init_script(ENGLISH)
            urls: list[str] = []
            page.on("request", lambda r: urls.append(r.url))
            sign_in(page, gw.url, tokens["rcc"])

            # Some traffic first, so the wall has a few alerts of several severities and regions.
            earlier = [
                derived_alert(must_act=["SH"], severity="LOW", kind="FLOW_SURGE_SUPPORT", port_code="PVG",
                              summary="Passenger surge at Pudong T2: support requested from JS"),
                derived_alert(must_act=["ZJ"], inform=["SH"], severity="MEDIUM", kind="TRANSIT_OVERSTAY",
                              station_id="ZJ-HGH", summary="144-hour transit stay overrun, last seen Hangzhou"),
                derived_alert(must_act=["JS"], severity="HIGH", kind="DOCUMENT_FRAUD_SPREAD", pattern="PASSPORT/VNM/altered",
                              summary="Altered-passport pattern from SH now seen at Nanjing Lukou"),
            ]
            for i, a in enumerate(earlier):                     # emitted a second apart, oldest first
                a["emitted_at"] = a["emitted_at"] - timedelta(seconds=3 - i)
            pub.publish_many(earlier)
            for a in earlier:
                page.wait_for_selector(f'li[data-alert-id="{a["alert_id"]}"]', timeout=5_000)

            alert = derived_alert(
                must_act=["AH"], inform=["SH", "JS"], severity="CRITICAL", kind="CROSS_REGION_HIT",
                station_id="AH-HFE", port_code="HFE", rule_id="cross_region_watchlist_hit", rule_set_version="2025.03.1",
                summary="Watch-listed traveller flagged in SH is boarding at Hefei Xinqiao",
                details={"first_region": "SH", "first_station": "SH-PVG", "hits": "3"})
            started = time.monotonic()
            pub.publish(alert)
            row = f'li[data-alert-id="{alert["alert_id"]}"]'
            page.wait_for_selector(row, timeout=2_000)
            elapsed = time.monotonic() - started
            assert elapsed < 2.0, f"the alert took {elapsed:.2f} s to reach the wall"

            li = page.locator(row)
            assert "sev-CRITICAL" in li.get_attribute("class")
            assert page.locator("#alerts > li").first.get_attribute("data-alert-id") == alert["alert_id"]  # newest first
            ids = page.locator("#alerts > li").evaluate_all("els => els.map(e => e.dataset.alertId)")
            assert ids == [alert["alert_id"]] + [a["alert_id"] for a in reversed(earlier)]
            colours = {a: page.locator(f'li[data-alert-id="{a}"]').evaluate("e => getComputedStyle(e).borderLeftColor")
                       for a in ids}
            assert len(set(colours.values())) == 4, colours     # one colour per severity

            evidence = li.locator(".evidence")
            assert not evidence.is_visible()
            li.locator("summary").click()                       # evidence one click away
            assert evidence.is_visible()
            text = evidence.inner_text()
            for event_id in alert["evidence"]:
                assert event_id in text
            assert "cross_region_watchlist_hit" in text and "2025.03.1" in text and "SH-PVG" in text

            page.select_option("#region", "ZJ")                 # filter by region
            assert not li.is_visible()
            assert page.locator(f'li[data-alert-id="{earlier[1]["alert_id"]}"]').is_visible()
            page.select_option("#region", "")
            assert li.is_visible()

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "gateway-wall.png"), full_page=True)

            # The token stays in this tab's sessionStorage, never in a URL; nothing is loaded from elsewhere.
            assert page.evaluate("sessionStorage.getItem('yrdbus.gateway.token')") == tokens["rcc"]
            secret = tokens["rcc"].split(".", 1)[1]
            assert not [u for u in urls if secret in u]
            assert not [u for u in urls if not (u.startswith(gw.url) or u.startswith("data:"))], urls
            page.reload()
            page.wait_for_selector("#status.live", timeout=10_000)
            assert page.locator("#login").is_hidden()
        finally:
            browser.close()


def test_a_withdrawn_alert_replaces_its_row_on_the_wall_struck_through_with_the_reason(kafka, unique, tmp_path, pub):
    assert os.path.exists(CHROMIUM), "Debian's chromium is needed: `bash infra/os-packages.sh chromium` (make test does it)"
    tokens = write_access_file(tmp_path, STANDARD_SCOPES)
    with RunningGateway(kafka, tokens, f"{unique}.") as gw, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.add_init_script(ENGLISH)
            sign_in(page, gw.url, tokens["rcc"])

            hit = derived_alert(must_act=["JS"], inform=["SH"], severity="CRITICAL", station_id="JS-NKG",
                                summary="Traveller flagged in SH is boarding at Nanjing Lukou")
            other = derived_alert(must_act=["ZJ"], severity="HIGH", summary="Another alert, emitted after it")
            other["emitted_at"] = hit["emitted_at"] + timedelta(seconds=1)
            pub.publish_many([hit, other])
            row = f'li[data-alert-id="{hit["alert_id"]}"]'
            page.wait_for_selector(f'li[data-alert-id="{other["alert_id"]}"]', timeout=5_000)
            page.wait_for_selector(row + '[data-status="RAISED"]', timeout=5_000)
            before = page.locator("#alerts > li").evaluate_all("els => els.map(e => e.dataset.alertId)")
            assert before == [other["alert_id"], hit["alert_id"]]

            reason = "the flag on this traveller was resolved before the crossing (uploaded late)"
            pub.publish(withdrawal(hit, reason))
            page.wait_for_selector(row + '[data-status="WITHDRAWN"]', timeout=5_000)
            # the same row, in the same place: not a new alert at the top
            assert page.locator("#alerts > li").evaluate_all("els => els.map(e => e.dataset.alertId)") == before
            li = page.locator(row)
            assert "withdrawn" in li.get_attribute("class")
            summary = li.locator("summary")
            assert "WITHDRAWN" in summary.inner_text() and reason in summary.inner_text()
            assert "line-through" in li.locator("summary .summary").evaluate("e => getComputedStyle(e).textDecorationLine")
            assert "line-through" not in page.locator(f'li[data-alert-id="{other["alert_id"]}"] summary .summary') \
                .evaluate("e => getComputedStyle(e).textDecorationLine")
            li.locator("summary").click()
            assert reason in li.locator(".evidence").inner_text()

            # a copy of the raised version read again (a replay after a reconnect) does not bring it back
            pub.publish(hit)
            marker = derived_alert(must_act=["AH"], summary="marker")
            pub.publish(marker, key=hit["alert_id"])                 # behind that copy in its partition
            page.wait_for_selector(f'li[data-alert-id="{marker["alert_id"]}"]', timeout=5_000)
            assert li.get_attribute("data-status") == "WITHDRAWN" and page.locator(row).count() == 1

            # a withdrawal whose raised version the wall never saw is shown as withdrawn, not as an alert
            unseen = derived_alert(must_act=["SH"], severity="HIGH", summary="Raised before the wall opened")
            pub.publish(withdrawal(unseen, "duplicate of another alert"))
            page.wait_for_selector(f'li[data-alert-id="{unseen["alert_id"]}"][data-status="WITHDRAWN"]', timeout=5_000)

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "gateway-wall-withdrawn.png"), full_page=True)
        finally:
            browser.close()


def test_an_officer_confirms_an_alert_from_the_wall_and_the_informed_regions_wall_shows_it_settled(
        kafka, unique, tmp_path, pub, ch):
    import httpx2

    from connectors.store import queries
    from connectors.store.schema import Target, migrate
    from connectors.store.sink import Sink

    tokens = write_access_file(tmp_path, {"js-duty": {"regions": ["JS"]}, "sh-duty": {"regions": ["SH"]},
                                          "ah-duty": {"regions": ["AH"]}, "pvg": {"stations": ["SH-PVG"]}})
    with RunningGateway(kafka, tokens, f"{unique}.") as gw, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            walls = {who: console(browser, gw.url, tokens[who]) for who in ("js-duty", "sh-duty")}
            alert = derived_alert(must_act=["JS"], inform=["SH"], severity="CRITICAL", station_id="JS-NKG",
                                  summary="Watch-listed traveller flagged in SH is boarding at Nanjing Lukou")
            pub.publish(alert)
            row = f'li[data-alert-id="{alert["alert_id"]}"]'
            for page in walls.values():
                page.wait_for_selector(row, timeout=5_000)

            js = walls["js-duty"]
            js.locator(row + " summary").click()
            js.locator(row + " .act-ACKNOWLEDGED").click()
            js.wait_for_selector(row + '[data-disposition="ACKNOWLEDGED"]', timeout=5_000)
            js.locator(row + " .note").fill("held at the gate")
            started = time.monotonic()
            js.locator(row + " .act-CONFIRMED").click()
            walls["sh-duty"].wait_for_selector(row + '[data-disposition="CONFIRMED"]', timeout=1_000)
            elapsed = time.monotonic() - started
            assert elapsed < 1.0, f"the SH wall showed the settlement {elapsed:.2f} s after the click"
            shown = walls["sh-duty"].locator(row + " .disposition").inner_text()
            assert "江苏: 确认属实 (js-duty) held at the gate" in shown       # Chinese by default
            assert js.locator(row + " .action-error").inner_text() == ""

            # the AH console cannot settle it; a station console has no buttons to
            refused = httpx2.post(f"{gw.url}/alerts/{alert['alert_id']}/dispositions", json={"outcome": "CONFIRMED"},
                                  headers={"Authorization": f"Bearer {tokens['ah-duty']}"}, timeout=10)
            assert refused.status_code == 403
            ARTIFACTS.mkdir(exist_ok=True)
            walls["sh-duty"].locator(row + " summary").click()
            walls["sh-duty"].screenshot(path=str(ARTIFACTS / "gateway-wall-disposition.png"), full_page=True)
            assert walls["sh-duty"].locator(row + " .act-CONFIRMED").is_visible()    # informed: it may answer too
        finally:
            browser.close()
    # the sink stores the alert and its dispositions, and the rule's precision in practice counts the confirmation
    client, db = ch
    migrate(client, Target(database=db))
    Sink(bootstrap=kafka.bootstrap, client=client, database=db, group=unique, prefix=f"{unique}.").run(
        idle_exit_s=4, duration=90)
    previous, client.database = client.database, db
    try:
        got = queries.run(client, "rule_feedback", {}).result_rows
    finally:
        client.database = previous
    # rule, version, raised, acknowledged, confirmed, false alarms, no action, unsettled, precision in practice
    assert got == [(alert["rule_id"], alert["rule_set_version"], 1, 1, 1, 0, 0, 0, 1.0)]


def test_the_command_centre_declares_heightened_mode_from_its_wall_ends_it_early_and_a_region_wall_has_no_console(
        kafka, unique, tmp_path):
    """A real worker reads the control events the command centre's wall puts on the bus: it announces the window
    on the walls in scope, broadcasts a HIGH alert of SH inside it to Jiangsu, and announces the window's new
    end once the wall has ended it."""
    import sys
    from datetime import datetime, timezone

    from confluent_kafka import Producer

    from gateway_harness import records_on
    from kit.faults import Proc, group_ready, wait_for
    from kit.scripted import Script, token
    from schemas.codec import get_codec
    from streams.app import StreamsConfig, ensure_topics

    def controls() -> list[dict]:
        return [e for _, e in records_on(kafka.bootstrap, f"{unique}.control", "control")]

    prefix, app_id = f"{unique}.", f"{unique}-w"
    ensure_topics(StreamsConfig(kafka.bootstrap, prefix=prefix))
    worker = Proc("worker", [str(Path(sys.executable).with_name("yrdbus")), "worker", "--prefix", prefix, "--app-id",
                             app_id, "--partitions", "2", "--data-dir", str(tmp_path / "w")],
                  {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": kafka.bootstrap, "YRDBUS_VAR_DIR": str(tmp_path / "w")},
                  tmp_path / "w")
    tokens = write_access_file(tmp_path, {"rcc": {"all": True}, "sh-duty": {"regions": ["SH"]},
                                          "js-duty": {"regions": ["JS"]}})
    beijing = timezone(timedelta(hours=8))
    until = (datetime.now(beijing) + timedelta(days=2)).replace(second=0, microsecond=0)
    with RunningGateway(kafka, tokens, prefix) as gw, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        worker.start()
        try:
            wait_for(lambda: group_ready(kafka.bootstrap, app_id), 90, "the worker to join its group")
            pages = {who: console(browser, gw.url, tokens[who]) for who in ("rcc", "sh-duty", "js-duty")}
            assert pages["sh-duty"].locator("#console").is_hidden()
            cc = pages["rcc"]
            cc.locator("#console summary").click()
            cc.check('#heightened-form input[value="SH"]')
            cc.fill("#hm-until", until.strftime("%Y-%m-%dT%H:%M"))
            cc.fill("#hm-multiplier", "0.5")
            cc.fill("#hm-reason", "China International Import Expo")
            cc.click("#heightened-form button[type=submit]")
            cc.wait_for_selector('#hm-result[data-ok="yes"]', timeout=10_000)
            assert "已宣布 上海 加强模式" in cc.locator("#hm-result").inner_text()
            (event,) = controls()
            assert event["regions"] == ["SH"] and event["issued_by"] == "rcc" and event["threshold_multiplier"] == 0.5
            assert event["ends_at"] == until.astimezone(timezone.utc)      # typed in Beijing time, stored in UTC

            # the worker's announcement on every wall in scope; a HIGH alert of SH inside the window is broadcast
            announcement = f'li.alert[data-alert-id]:has(.kind[title="HEIGHTENED_MODE"])'
            for page in pages.values():
                page.wait_for_selector(announcement, timeout=60_000)
            s = Script()
            inside = s.alert("PVG", int(time.time() * 1000), "SMUGGLING", "HIGH", subject=token(1), source="OFFICER")
            producer = Producer({"bootstrap.servers": kafka.bootstrap})
            for topic, key, value in s.encoded(get_codec(), prefix):
                producer.produce(topic, value, key)
            assert producer.flush(30) == 0
            broadcast = 'li.alert:has(.kind[title="BROADCAST"])'
            pages["js-duty"].wait_for_selector(broadcast, timeout=60_000)
            assert inside["event_id"] in pages["js-duty"].locator(broadcast).inner_html()

            # ended early from the announcement, on the command centre's wall only
            pages["sh-duty"].locator(f"{announcement} summary").click()
            assert pages["sh-duty"].locator(f"{announcement} .act-end").count() == 0
            cc.locator(f"{announcement} summary").click()
            cc.click(f"{announcement} .act-end")
            # (the row's answer lasts until the worker's new announcement replaces the row: the bus is the oracle)
            wait_for(lambda: len(controls()) == 2, 30, "the end of the window on the control topic")
            first, ended = controls()
            assert ended["window_id"] == event["event_id"] and ended["issued_by"] == "rcc"
            assert ended["starts_at"] == event["starts_at"] and ended["ends_at"] < event["ends_at"]
            # the worker's new version of the announcement replaces the row: the window has ended, nothing to end
            for page in (cc, pages["sh-duty"]):
                page.wait_for_function(
                    f"() => {{ const li = document.querySelector('{announcement}'); return li && li._alert "
                    f"&& li._alert.details.changed_by === '{ended['event_id']}'; }}", timeout=60_000)
            cc.locator(f"{announcement} summary").click()
            assert cc.locator(f"{announcement} .act-end").count() == 0
            # its new end in Beijing time, not epoch milliseconds
            shown = cc.locator(f"{announcement} .evidence").inner_text()
            assert ended["ends_at"].astimezone(beijing).strftime("%Y-%m-%d %H:%M:%S") in shown, shown
            assert str(int(ended["ends_at"].timestamp() * 1000)) not in shown
            # the alert was inside the window as it ended: its broadcast stands
            assert pages["js-duty"].locator(f"{broadcast}.withdrawn").count() == 0
        finally:
            browser.close()
            worker.stop(20)


def test_the_wall_speaks_chinese_in_beijing_time_switches_to_english_and_holds_its_layout(kafka, unique, tmp_path,
                                                                                          pub):
    from datetime import datetime, timezone

    tokens = write_access_file(tmp_path, {"rcc": {"all": True}})
    yesterday = derived_alert(must_act=["SH", "JS", "ZJ", "AH"], severity="CRITICAL", kind="SYSTEMIC_ESCALATION",
                              station_id="ZJ-NBZS", summary="Stowaway cases rising in all four regions")
    yesterday["occurred_at"] = datetime(2026, 12, 6, 8, 48, tzinfo=timezone.utc)      # 16:48 in Beijing
    today = derived_alert(must_act=["JS", "ZJ", "AH"], inform=["SH"], severity="HIGH", kind="PORT_SHOPPING",
                          station_id="AH-HFE", summary="Refused at Pudong, tried Lukou and Xiaoshan")
    today["occurred_at"] = datetime(2026, 12, 7, 0, 59, tzinfo=timezone.utc)          # 08:59 in Beijing
    with RunningGateway(kafka, tokens, f"{unique}.") as gw, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = console(browser, gw.url, tokens["rcc"])
            assert page.evaluate("document.documentElement.lang") == "zh-CN"
            assert page.locator("h1").inner_text().startswith("长三角预警墙")
            assert page.locator("#status").inner_text() == "实时"
            pub.publish_many([yesterday, today])
            rows = {a["alert_id"]: page.locator(f'li[data-alert-id="{a["alert_id"]}"] summary') for a in (yesterday, today)}
            for row in rows.values():
                row.wait_for(timeout=5_000)
            old, new = (rows[yesterday["alert_id"]], rows[today["alert_id"]])
            # Beijing time with the date: yesterday 16:48 is told apart from today 08:59
            assert old.locator(".time").inner_text() == "2026-12-06 16:48:00"
            assert new.locator(".time").inner_text() == "2026-12-07 08:59:00"
            assert (old.locator(".sev").inner_text(), old.locator(".kind").inner_text()) == ("严重", "区域性升级")
            assert old.locator(".region").inner_text() == "上海/江苏/浙江/安徽"           # names from the reference data
            assert new.locator(".where").get_attribute("title") == "合肥新桥国际机场边检站"
            new.click()
            details = page.locator(f'li[data-alert-id="{today["alert_id"]}"] .evidence').inner_text()
            assert "须处置" in details and "知会" in details and "上海" in details and "确认属实" in details

            def overlaps() -> list:
                return page.evaluate("""() => [...document.querySelectorAll('#alerts > li > details > summary')]
                    .flatMap(s => {
                      const cells = [...s.children].filter(c => !c.hidden && c.getBoundingClientRect().width > 0);
                      const out = [];
                      for (let i = 0; i < cells.length; i++) for (let j = i + 1; j < cells.length; j++) {
                        const a = cells[i].getBoundingClientRect(), b = cells[j].getBoundingClientRect();
                        if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1)
                          out.push([cells[i].className, cells[j].className]);
                      }
                      return out;
                    })""")

            ARTIFACTS.mkdir(exist_ok=True)
            for width in (1400, 1920):
                page.set_viewport_size({"width": width, "height": 900})
                assert overlaps() == [], (width, overlaps())
                page.screenshot(path=str(ARTIFACTS / f"gateway-wall-zh-{width}.png"), full_page=True)

            page.click("#lang")                                   # English, one click away, kept for the tab
            assert page.evaluate("document.documentElement.lang") == "en"
            assert page.locator("h1").inner_text().startswith("YRD alert wall")
            assert (old.locator(".kind").inner_text(), old.locator(".region").inner_text()) == (
                "SYSTEMIC_ESCALATION", "Shanghai/Jiangsu/Zhejiang/Anhui")
            assert old.locator(".time").inner_text() == "2026-12-06 16:48:00"   # still Beijing time
            assert overlaps() == []
            page.screenshot(path=str(ARTIFACTS / "gateway-wall-en-1920.png"), full_page=True)
            page.reload()
            page.wait_for_selector("#status.live", timeout=10_000)
            assert page.locator("#status").inner_text() == "live"
        finally:
            browser.close()


def test_an_alert_nobody_acknowledges_escalates_once_on_the_region_and_command_centre_walls(kafka, unique, tmp_path,
                                                                                           pub):
    """A real worker's escalation stage (rule set with CRITICAL = 0.1 min) reads the alert and raises its ESCALATION."""
    import sys

    from confluent_kafka import Consumer, TopicPartition

    from gateway_harness import records_on
    from kit.faults import Proc, group_ready, wait_for
    from schemas import topics
    from streams import derived
    from streams.app import StreamsConfig, ensure_topics
    from streams.escalation import KIND, RULE_ID

    rules = tmp_path / "rules.toml"
    text = (Path(__file__).resolve().parents[1] / "streams" / "rules.toml").read_text()
    assert "\nCRITICAL = 5\n" in text
    rules.write_text(text.replace("\nCRITICAL = 5\n", "\nCRITICAL = 0.1\n"))
    prefix, app_id = f"{unique}.", f"{unique}-w"
    ensure_topics(StreamsConfig(kafka.bootstrap, prefix=prefix))
    worker = Proc("worker", [str(Path(sys.executable).with_name("yrdbus")), "worker", "--prefix", prefix, "--app-id",
                             app_id, "--partitions", "2", "--rules", str(rules), "--data-dir", str(tmp_path / "w")],
                  {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": kafka.bootstrap, "YRDBUS_VAR_DIR": str(tmp_path / "w")},
                  tmp_path / "w")
    tokens = write_access_file(tmp_path, {"sh-duty": {"regions": ["SH"]}, "rcc": {"all": True}})
    with RunningGateway(kafka, tokens, prefix) as gw, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        worker.start()
        try:
            wait_for(lambda: group_ready(kafka.bootstrap, app_id), 90, "the worker to join its group")
            walls = {who: console(browser, gw.url, tokens[who]) for who in ("sh-duty", "rcc")}
            alert = derived_alert(must_act=["SH"], inform=["JS"], severity="CRITICAL", station_id="SH-PVG",
                                  summary="Watch-listed traveller flagged in JS is at Pudong T2 immigration")
            pub.publish(alert)
            escalation_id = derived.alert_id(RULE_ID, [alert["alert_id"]], "escalation")
            row = f'li[data-alert-id="{escalation_id}"]'
            for page in walls.values():     # 6 s after the alert was emitted, and a tick of the worker's
                page.wait_for_selector(row, timeout=60_000)
                assert "未响应升级" in page.locator(row).inner_text()      # the kind, in Chinese
            # once: the stage reads more of its ticks (each 2 s) past the time, and raises nothing more
            escalation_topic = f"{prefix}streams.escalation"
            c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": app_id, "enable.auto.commit": False})
            try:
                _, seen = c.get_watermark_offsets(TopicPartition(escalation_topic, 0), timeout=10)
                wait_for(lambda: c.committed([TopicPartition(escalation_topic, 0)], timeout=10)[0].offset >= seen + 4,
                         60, "the escalation stage to read four more records")
            finally:
                c.close()
            raised = [rec for _, rec in records_on(kafka.bootstrap, prefix + topics.DERIVED_ALERTS, "derived_alert")
                      if rec["kind"] == KIND]
            assert [(r["alert_id"], r["details"]["escalates"], r["must_act"], r["inform"], r["severity"])
                    for r in raised] == [(escalation_id, alert["alert_id"], ["SH"], ["JS", "ZJ", "AH"], "CRITICAL")]
            for page in walls.values():
                assert page.locator(row).count() == 1
        finally:
            browser.close()
            worker.stop(20)
