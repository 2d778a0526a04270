"""Per-request time of a few service routes through the Flask test client (no network, no model work).

Run it from two checkouts to compare them (PYTHONPATH picks the checkout):
    PYTHONPATH=. python scripts/bench_api_routes.py [N]
Routes: GET /v1/labels (no parameters), GET /v1/jobs?limit=5 (a query model),
GET /v1/samples/1 (a path model), POST /v1/annotations/undo (a JSON body model), POST /v1/labels.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from edge_al.api import create_app
from export.tools.fixtures import build_workspace

ROUTES = [
    ("GET", "/v1/labels", None),
    ("GET", "/v1/jobs?limit=5", None),
    ("GET", "/v1/samples/1", None),
    ("POST", "/v1/annotations/undo", {"sample_id": 1}),
    ("POST", "/v1/labels", {"name": "d1"}),
]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        settings, _ = build_workspace(Path(tmp), n=4)
        app = create_app(settings, {"AUTH_REQUIRED": False, "START_MODEL": True})
        client = app.test_client()
        print(f"{n} requests per route, microseconds per request (best of 3)")
        for method, path, body in ROUTES:
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(n):
                    resp = client.open(path, method=method, json=body)
                    assert resp.status_code < 300, (path, resp.status_code, resp.get_data()[:200])
                best = min(best, (time.perf_counter() - t0) / n * 1e6)
            print(f"| {method} {path} | {best:.0f} |")
        app.extensions["edge_al"].stop()
        app.extensions["edge_al"].store.close()


if __name__ == "__main__":
    main()
