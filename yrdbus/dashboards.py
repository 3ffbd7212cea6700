"""The Grafana dashboards in the officers' language.

``dashboards/json/*.json`` are the dashboards as written (English, UTC): their SQL and PromQL are the source
that ``yrdbus report`` and the tests run. ``dashboards/zh-CN/*.json`` is the same dashboards in Simplified
Chinese and Beijing time, made from them with the catalogue (``yrdbus.words``): dashboard, panel and column
titles, descriptions and the region variable's label from its ``board.``, ``panel.``, ``paneldesc.``,
``col.`` and ``var.`` messages; alert kinds, severities, statuses, regions and ports shown by name through
value mappings; the time zone Asia/Shanghai. Queries, ids, uids and layout are untouched, so a panel reads the
same rows in either edition. Grafana provisions one edition (``YRDBUS_DASHBOARDS``: the zh-CN folder, the
command centres' default, or the json folder for English).

``yrdbus dashboards build`` writes the Chinese edition; ``--check`` fails when the committed one differs from
what the dashboards and the catalogue make (a test runs it).
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from yrdbus.report import DASHBOARDS_DIR as SOURCE
from yrdbus.words import Words, catalogue

ROOT = SOURCE.parents[1]
EDITIONS = {"zh-CN": SOURCE.parent / "zh-CN"}
TIMEZONE = {"zh-CN": "Asia/Shanghai"}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: columns whose values are codes officers read by name (a panel reading none of them gets no value mapping)
CODED = {"kind", "alert_kind", "severity", "status", "outcome", "region", "regions", "must_act", "inform",
         "entry_region", "exit_region", "support_from", "region_pair", "port", "port_code", "entry_port", "level"}


class DashboardTextError(Exception):
    """A dashboard text the catalogue has no translation for."""


def _queries(panel: dict) -> str:
    return "\n".join(t.get("rawSql") or t.get("expr") or "" for t in panel.get("targets", []))


def value_mappings(words: Words) -> list[dict]:
    """One Grafana value mapping of the codes officers read by name: alert kinds, severities, statuses,
    outcomes, regions and ports (exact values only: a number or other text is shown as it is)."""
    options: dict[str, dict] = {}
    for prefix in ("kind.", "sev.", "status_value.", "outcome."):
        for key, text in sorted(words.messages.items()):
            if key.startswith(prefix) and key[len(prefix):].isupper():
                options.setdefault(key[len(prefix):], {"text": text})
    for code, name in sorted({**words.ports, **words.regions}.items()):
        options[code] = {"text": name}
    for i, code in enumerate(sorted(options)):
        options[code]["index"] = i
    return [{"type": "value", "options": options}]


def translate(board: dict, words: Words, strict: bool = True) -> dict:
    """``board`` in ``words``' language. ``strict``: a title or description without a translation is an error
    (DashboardTextError names it), so no English is left in an edition by accident."""
    out = copy.deepcopy(board)
    uid = board["uid"]
    have = catalogue().get(words.lang, {})

    def say(key: str, english: str) -> str:
        if words.lang != "en" and strict and key not in have:
            raise DashboardTextError(f"{uid}: no {words.lang} text for {key!r} ({english!r}); add it to "
                                     f"connectors/gateway/static/i18n/messages.json")
        return words.messages.get(key, english)

    out["title"] = say(f"board.{uid}", board["title"])
    out["description"] = say(f"boarddesc.{uid}", board.get("description", ""))
    out["timezone"] = TIMEZONE.get(words.lang, board.get("timezone", "utc"))
    for var in out.get("templating", {}).get("list", []):
        if var.get("label"):
            var["label"] = say(f"var.{var['name']}", var["label"])
    mappings = value_mappings(words)
    for panel in out["panels"]:
        title = panel["title"]
        panel["title"] = say(f"panel.{title}", title)
        if panel.get("description"):
            panel["description"] = say(f"paneldesc.{title}", panel["description"])
        names = set(_WORD.findall(_queries(panel)))
        overrides = list(panel.get("fieldConfig", {}).get("overrides", []))
        named = {o["matcher"].get("options") for o in overrides if o.get("matcher", {}).get("id") == "byName"}
        for name in sorted(names):
            key = f"col.{name}"
            if key in words.messages and name not in named:
                overrides.append({"matcher": {"id": "byName", "options": name},
                                  "properties": [{"id": "displayName", "value": words.messages[key]}]})
        config = panel.setdefault("fieldConfig", {"defaults": {}, "overrides": []})
        if names & CODED and any("rawSql" in t for t in panel.get("targets", [])):
            config.setdefault("defaults", {})["mappings"] = config["defaults"].get("mappings", []) + mappings
        config["overrides"] = overrides
    return out


def render(board: dict) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def build(lang: str = "zh-CN", check: bool = False) -> list[Path]:
    """Write (or, with ``check``, compare) the ``lang`` edition of every dashboard; the files that differ."""
    words = Words(lang)
    folder = EDITIONS[lang]
    differ: list[Path] = []
    wanted = {}
    for src in sorted(SOURCE.glob("*.json")):
        wanted[folder / src.name] = render(translate(json.loads(src.read_text(encoding="utf-8")), words))
    stale = [p for p in sorted(folder.glob("*.json")) if p not in wanted] if folder.is_dir() else []
    for path, text in wanted.items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            differ.append(path)
            if not check:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    for path in stale:
        differ.append(path)
        if not check:
            path.unlink()
    return differ
