"""The dashboards' Chinese edition (dashboards/zh-CN, yrdbus/dashboards.py): the same queries, ids and layout as
dashboards/json, every title, description, column and label in Simplified Chinese, codes by name, Beijing
time; and the committed edition is the one the dashboards and the catalogue make."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from yrdbus import dashboards
from yrdbus.words import Words

pytestmark = pytest.mark.unit   # no Java, Kafka or ClickHouse: `make unit`

YRDBUS = str(Path(sys.executable).with_name("yrdbus"))
HAN = re.compile(r"[\u4e00-\u9fff]")
SOURCES = sorted(dashboards.SOURCE.glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_committed_chinese_edition_is_what_the_dashboards_and_the_catalogue_make():
    run = subprocess.run([YRDBUS, "dashboards", "build", "--check", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout) == {"check": True, "differ": []}
    assert sorted(p.name for p in dashboards.EDITIONS["zh-CN"].glob("*.json")) == [p.name for p in SOURCES]


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_every_text_is_chinese_and_every_query_and_place_is_the_dashboards_own(source):
    en, zh = load(source), load(dashboards.EDITIONS["zh-CN"] / source.name)
    assert zh["uid"] == en["uid"] and zh["timezone"] == "Asia/Shanghai"
    assert HAN.search(zh["title"]) and HAN.search(zh["description"])
    assert [v.get("label") for v in zh["templating"]["list"]] == ["区域" if v.get("label") else v.get("label")
                                                                   for v in en["templating"]["list"]]
    assert len(zh["panels"]) == len(en["panels"])
    for p_en, p_zh in zip(en["panels"], zh["panels"]):
        where = f"{en['uid']} {p_en['title']!r}"
        assert (p_zh["id"], p_zh["type"], p_zh["gridPos"], p_zh["targets"]) == (
            p_en["id"], p_en["type"], p_en["gridPos"], p_en["targets"]), where
        assert HAN.search(p_zh["title"]), where
        assert not p_en.get("description") or HAN.search(p_zh["description"]), where
        for o in p_zh["fieldConfig"]["overrides"]:
            for prop in o["properties"]:
                if prop["id"] == "displayName":
                    assert HAN.search(prop["value"]), (where, o)


def test_columns_are_named_and_codes_shown_by_name():
    zh = load(dashboards.EDITIONS["zh-CN"] / "command-centre.json")
    rules = next(p for p in zh["panels"] if p["title"] == "规则实际效果")
    names = {o["matcher"]["options"]: o["properties"][0]["value"] for o in rules["fieldConfig"]["overrides"]}
    assert names["precision_in_practice"] == "实际准确率" and names["false_alarms"] == "误报"
    risk = load(dashboards.EDITIONS["zh-CN"] / "risk-analysis-centre.json")
    kinds = next(p for p in risk["panels"] if p["title"] == "研判告警（按类型）")
    (mapping,) = kinds["fieldConfig"]["defaults"]["mappings"]
    words = Words("zh-CN")
    assert mapping["options"]["TREND_RISING"]["text"] == words("kind.TREND_RISING") != "TREND_RISING"
    assert mapping["options"]["SH"]["text"] == "上海" and mapping["options"]["CRITICAL"]["text"] == words("sev.CRITICAL")
    assert mapping["options"]["PVG"]["text"] == words.ports["PVG"]


def test_a_text_without_a_translation_is_named_and_english_stays_one_switch_away():
    board = load(SOURCES[0])
    extra = copy.deepcopy(board)
    extra["panels"][0]["title"] = "A panel nobody translated"
    with pytest.raises(dashboards.DashboardTextError, match="panel.A panel nobody translated"):
        dashboards.translate(extra, Words("zh-CN"))
    # the English edition is the dashboards as written: provisioning points at dashboards/json instead
    english = dashboards.translate(board, Words("en"))
    assert english["title"] == board["title"] and [p["title"] for p in english["panels"]] == [
        p["title"] for p in board["panels"]]
