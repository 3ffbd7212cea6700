"""The officers' words: the message catalogue of the wall (``connectors/gateway/static/i18n/messages.json``, one
catalogue for the wall, ``yrdbus alerts tail`` and ``yrdbus report``), the reference data's names of regions and
ports, and Beijing time with the date."""
from __future__ import annotations

import importlib.util
import json
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

BEIJING = timezone(timedelta(hours=8))     # China Standard Time: no daylight saving, so a fixed offset is exact
LANGUAGES = ("zh-CN", "en")


@lru_cache(maxsize=1)
def catalogue() -> dict:
    folder = Path(importlib.util.find_spec("connectors.gateway").submodule_search_locations[0])
    return json.loads((folder / "static" / "i18n" / "messages.json").read_text(encoding="utf-8"))


class Words:
    """Messages, names and times in ``lang`` (zh-CN or en); a message the catalogue lacks in ``lang`` is the English
    one, and one it lacks altogether is its id's last part."""

    def __init__(self, lang: str = "zh-CN"):
        from schemas import reference

        if lang not in LANGUAGES:
            raise ValueError(f"language {lang!r}: expected one of {', '.join(LANGUAGES)}")
        cat = catalogue()
        self.lang = lang
        self.messages = {**cat["en"], **cat.get(lang, {})}
        key = "name_zh" if lang == "zh-CN" else "name"
        self.regions = {c: r.get(key) or r["name"] for c, r in reference.regions().items()}
        self.ports = {c: (getattr(p, key, None) or p.name) for c, p in reference.ports().items()}

    def __call__(self, message_id: str, **values) -> str:
        text = self.messages.get(message_id, message_id.split(".", 1)[-1])
        return text.format(**values) if values else text

    def has(self, message_id: str) -> bool:
        return message_id in self.messages

    def region_list(self, codes) -> str:
        return "/".join(self.regions.get(c, c) for c in codes or []) or "-"

    def value(self, text: str) -> str:
        """A value shown to officers: a region or port code by its name, an alert kind, severity or status by the
        catalogue's word (a pair ``SH -> JS`` name by name); anything else as it is."""
        if self.lang == "en":
            return text
        if text in self.regions:
            return self.regions[text]
        if text in self.ports:
            return self.ports[text]
        for prefix in ("kind.", "sev.", "status_value.", "outcome."):
            if prefix + text in self.messages:
                return self.messages[prefix + text]
        if " -> " in text:
            return " → ".join(self.value(part) for part in text.split(" -> "))
        return text

    @staticmethod
    def beijing(when) -> str:
        """An ISO time (or a datetime; naive is UTC) in Beijing time with the date."""
        try:
            dt = when if isinstance(when, datetime) else datetime.fromisoformat(str(when).replace("Z", "+00:00"))
        except ValueError:
            return str(when)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
