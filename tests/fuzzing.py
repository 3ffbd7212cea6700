"""What the fuzz tests share: how many inputs to try, and hostile values of every shape.

``make test`` runs each fuzz target on a few hundred inputs; ``make fuzz`` sets ``YRDBUS_FUZZ_EXAMPLES``
(100,000) and runs them all (docs/security.md records the last run). The end-to-end checks that go
through a live server (HTTP, WebSocket) try at most ``YRDBUS_FUZZ_E2E_EXAMPLES`` inputs.
"""
from __future__ import annotations

import functools
import math
import os
import struct

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("YRDBUS_FUZZ_EXAMPLES", "300"))
E2E_EXAMPLES = min(EXAMPLES, int(os.environ.get("YRDBUS_FUZZ_E2E_EXAMPLES", "150")))
#: a long run is made of searches of this many inputs each: hypothesis keeps a record of every input of
#: one search, which makes a single search of 100,000 much slower than twenty of 5,000
CHUNK = 5000


def fuzz(examples: int | None = None):
    """A fuzz target: ``examples`` inputs (default ``EXAMPLES``), no deadline, no health check in the way.

    Goes above ``@given``; runs the search ``ceil(examples / CHUNK)`` times, each with its own random seed.
    """
    total = examples or EXAMPLES
    per_run = min(total, CHUNK)
    runs = math.ceil(total / per_run)

    def decorate(test):
        searched = settings(max_examples=per_run, deadline=None, database=None,
                            suppress_health_check=list(HealthCheck))(test)
        if runs == 1:
            return searched

        @functools.wraps(searched)
        def repeated(*args, **kwargs):
            for _ in range(runs):
                searched(*args, **kwargs)

        return repeated

    return decorate


#: strings an attacker puts in a text field to reach a SQL engine, a shell or a template
SQL = [
    "'); DROP TABLE yrdbus.clearances; --",
    "' OR '1'='1",
    "\\'; DROP DATABASE yrdbus; --",
    "1; SELECT * FROM system.users",
    "{subject:String}",
    "`; TRUNCATE TABLE alerts; `",
    "\"); INSERT INTO yrdbus.alerts SELECT * FROM file('/etc/passwd'); --",
    "$(rm -rf /)",
    "%s%s%s%n",
    "\u202e\u0000\ufeff",
    "../../../../etc/passwd",
    "SETTINGS readonly = 0",
]

#: a string field's worst cases: huge, binary-ish, SQL, unicode edge cases
hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(SQL),
    st.integers(min_value=10_000, max_value=100_000).map(lambda n: "A" * n),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.text(alphabet=st.characters(min_codepoint=0xD800 - 10, max_codepoint=0xE000 + 10, blacklist_categories=("Cs",)),
            max_size=10),
)

#: any JSON-ish value of the wrong type for a field
wrong_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2 ** 63, max_value=2 ** 80),
    st.floats(allow_nan=True, allow_infinity=True), hostile_text,
    st.lists(st.one_of(st.integers(), hostile_text, st.none()), max_size=4),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.binary(max_size=20),
)


def frame(schema_id: int, body: bytes) -> bytes:
    return struct.pack(">bI", 0, schema_id) + body
