"""Fuzzing from the service's own /v1/openapi.json (schemathesis), with every check, as each role.

Bounded: a few examples per operation (``EDGE_AL_FUZZ_EXAMPLES``, default 6), in-process through
the WSGI app, with the admin, annotator and scorer keys on every generated request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings

from edge_al.api import create_app
from edge_al.api.auth import create_key
from edge_al.store import open_store
from tests.api_support import build_workspace

pytestmark = pytest.mark.stores

ROLES = ("admin", "annotator", "scorer")
_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429"]  # schemathesis's default for schema-valid requests
# What no schema can state, allowed besides: bytes that are schema-valid binary but no decodable image
# (400), and items naming samples or labels the store does not hold (422). Every other check runs as is.
_FACTS = [
    ("/v1/score", "400"),
    ("/v1/samples", "400"),
    ("/v1/annotations", "422"),
    ("/v1/annotations/undo", "422"),
]
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {
        "operations": [
            {"include-path": path, "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, status]}}}
            for path, status in _FACTS
        ]
    }
)
EXAMPLES = int(os.environ.get("EDGE_AL_FUZZ_EXAMPLES", "6"))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, module_db_url: str | None) -> Iterator[tuple[Flask, dict[str, str]]]:
    settings_, _ = build_workspace(tmp_path_factory.mktemp("fuzz"), n=12, db_url=module_db_url)
    store = open_store(settings_)
    keys = {role: create_key(store, role, f"{role}-fuzz")[1] for role in ROLES}
    store.close()
    app = create_app(settings_, {"START_MODEL": True})
    yield app, keys
    app.extensions["edge_al"].stop()
    app.extensions["edge_al"].store.close()


def _summary(exc: BaseException) -> str:
    """The failed checks' titles and the response's first line of each (the whole report is long)."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    keep = [x for x in lines if x.startswith(("- ", "[", "`", "Hint"))]
    return " | ".join(keep)[:700] or lines[0][:300]


def _fuzz(operation: Any, keys: dict[str, str], examples: int = EXAMPLES, **call: Any) -> list[str]:
    """Run one operation's examples as every role; the failures found (hypothesis does not shrink them).
    ``call``: passed to ``case.call_and_validate`` (``base_url=`` for a real server)."""
    found: list[str] = []

    @given(case=operation.as_strategy())
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              phases=[Phase.explicit, Phase.generate])  # fmt: skip
    def run(case: Any) -> None:
        for role in ROLES:
            try:
                case.call_and_validate(headers={"Authorization": f"Bearer {keys[role]}"}, **call)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                found.append(f"{operation.label} as {role}: {type(exc).__name__}: {_summary(exc)}")

    run()
    return found


def test_every_operation_conforms_for_every_role(fuzzed: tuple[Flask, dict[str, str]]) -> None:
    app, keys = fuzzed
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", app, config=CONFIG)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operations += 1
        failures += _fuzz(result.ok(), keys)
    assert operations == 23  # every route of the document
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:60])
