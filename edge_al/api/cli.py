"""CLI verbs of the service: ``serve``, ``worker``, ``keys add|list|revoke``.

``serve`` runs the app under waitress (pure Python, threads, no fork: the same on Linux and on
the Windows PCs of a line). It binds first, then compiles the model, then serves. For several
processes on Linux, gunicorn without ``--preload`` (each worker builds the app, and compiles the
model, after the fork): see the README.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import sys
from typing import Any

from edge_al.argtypes import positive_int

from .auth import ROLES, create_key, list_keys, revoke_key

__all__ = ["is_loopback", "register"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR = 0, 1


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(ctx: Any) -> int:
    from . import create_app
    from .wsgi_server import create_server

    a = ctx.args
    if a.role == "scoring":
        return cmd_serve_box(ctx)
    if a.no_auth and not is_loopback(a.host):
        print(f"edge-al: error: --no-auth only binds to localhost (127.0.0.1, ::1); got --host {a.host}. "
              f"Create keys with `{ctx.cli()} keys add --role admin` to serve on the network.", file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
    if not a.no_auth and not list_keys(ctx.store, include_revoked=False):
        print(f"edge-al: error: no API keys exist, so nobody could call the service. Run `{ctx.cli()} keys add --role admin` "
              "(and scorer/annotator keys for the line and the experts), or pass --no-auth to serve on localhost without keys.",
              file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
    app = create_app(
        ctx.settings,
        {
            "AUTH_REQUIRED": not a.no_auth,
            "START_MODEL": False,  # started below, after binding
            "DEVICE": a.device,
            "MAX_BATCH": a.max_batch,
            "MAX_WAIT_MS": a.max_wait_ms,
            "BATCHING": not a.no_batching,
            "BATCH_POLICY": a.batch_policy,
        },
    )
    svc = app.extensions["edge_al"]
    server = create_server(app, host=a.host, port=a.port, threads=a.threads, ident="edge-al", clear_untrusted_proxy_headers=True)
    stop_worker = None
    try:
        if a.with_worker:
            from edge_al.jobs import start_worker_thread

            stop_worker = start_worker_thread(ctx.settings, manager=svc.jobs)
        svc.start_model()
        app.config["START_MODEL"] = True
        host, port = server.effective_host, server.effective_port
        ready = f"model {svc.holder.version}" if svc.holder is not None and svc.holder.ready else "no model yet (GET /readyz)"
        print(f"edge-al: serving http://{host}:{port} ({ready}; auth {'off' if a.no_auth else 'on'}"
              f"{'; worker in-process' if a.with_worker else ''})", flush=True)  # fmt: skip
        _run_until_stopped(server)
    finally:
        server.close()
        svc.stop()
        if stop_worker is not None:
            stop_worker()
    return EXIT_OK


def _run_until_stopped(server: Any) -> None:
    """Serve until SIGTERM or Ctrl-C (both end as a clean return; the caller's ``finally`` cleans up)."""

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        server.run()
    except KeyboardInterrupt:
        pass


def cmd_serve_box(ctx: Any) -> int:
    """``serve --role scoring``: the box's app on its own home (local registry, outbox; no store)."""
    from edge_al.box import BoxSettings

    from .box import create_box_app
    from .wsgi_server import create_server

    a = ctx.args
    box = BoxSettings.load({"central_url": a.central, "central_folder": a.central_folder, "central_key_file": a.central_key_file,
                            "poll_s": a.poll_s})  # fmt: skip
    if a.no_auth and not is_loopback(a.host):
        print(f"edge-al: error: --no-auth only binds to localhost (127.0.0.1, ::1); got --host {a.host}.", file=sys.stderr)
        return EXIT_ERROR
    if not a.no_auth and not box.central_key:
        print("edge-al: error: a scoring box accepts its scorer key (EDGE_AL_CENTRAL_KEY or --central-key-file) from the line; "
              "none is set. Set one, or pass --no-auth to serve on localhost without keys.", file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
    app = create_box_app(ctx.settings, box, {"AUTH_REQUIRED": not a.no_auth, "DEVICE": a.device, "MAX_BATCH": a.max_batch,
                                             "MAX_WAIT_MS": a.max_wait_ms, "BATCHING": not a.no_batching, "BATCH_POLICY": a.batch_policy})  # fmt: skip
    svc = app.extensions["edge_al"]
    server = create_server(app, host=a.host, port=a.port, threads=a.threads, ident="edge-al", clear_untrusted_proxy_headers=True)
    try:
        svc.start()
        source = box.central_url if box.central_folder is None else "the central registry folder"
        print(f"edge-al: scoring box serving http://{server.effective_host}:{server.effective_port} "
              f"(model {svc.holder.version or 'none yet'}; following {source} every {box.poll_s:g} s)", flush=True)  # fmt: skip
        _run_until_stopped(server)
    finally:
        server.close()
        svc.stop()
    return EXIT_OK


def cmd_worker(ctx: Any) -> int:
    from edge_al.jobs import run_worker

    run_worker(ctx.settings, workers=ctx.args.workers)
    return EXIT_OK


def cmd_keys_add(ctx: Any) -> int:
    key_id, token = create_key(ctx.store, ctx.args.role, ctx.args.name or "")

    def human() -> None:
        print(f"key {key_id} ({ctx.args.role}{', ' + ctx.args.name if ctx.args.name else ''}):")
        print(token)
        print("This key is shown once and stored only as a hash: keep it now.", file=sys.stderr)

    ctx.emit({"id": key_id, "role": ctx.args.role, "name": ctx.args.name or "", "key": token}, human)
    return EXIT_OK


def cmd_keys_list(ctx: Any) -> int:
    rows = list_keys(ctx.store)

    def human() -> None:
        if not rows:
            print(f"no keys: run `{ctx.cli()} keys add --role admin`")
        for r in rows:
            print(f"{r['id']:>4}  {r['role']:<9}  {'revoked' if r['revoked'] else 'active ':<7}  {r['name']}")

    ctx.emit({"keys": rows}, human)
    return EXIT_OK


def cmd_keys_revoke(ctx: Any) -> int:
    changed = revoke_key(ctx.store, ctx.args.id)
    ctx.emit({"id": ctx.args.id, "revoked": True, "changed": changed},
             lambda: print(f"key {ctx.args.id} {'revoked' if changed else 'was already revoked'}"))  # fmt: skip
    return EXIT_OK


def register(sub: Any) -> None:
    """Add serve, worker and keys to the ``edge-al`` parser's subcommands."""
    p = sub.add_parser("serve", help="run the HTTP API (waitress); see the README for gunicorn")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface; needs API keys)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--threads", type=positive_int, default=8, help="request threads (default 8)")
    p.add_argument("--with-worker", action="store_true", help="also run the job worker in this process (single box)")
    p.add_argument("--role", choices=("central", "scoring"), default="central",
                   help="central: the whole service on the workspace (default); scoring: a scoring box that serves /v1/score "
                        "from a local copy of the central service's active model (docs/deployment.md)")  # fmt: skip
    p.add_argument("--central", default=None, metavar="URL", help="scoring: the central service (env EDGE_AL_CENTRAL_URL)")
    p.add_argument("--central-folder", default=None, metavar="DIR",
                   help="scoring: follow the central registry folder mounted here instead (env EDGE_AL_CENTRAL_FOLDER)")  # fmt: skip
    p.add_argument("--central-key-file", default=None, metavar="FILE",
                   help="scoring: a file holding a scorer key of the central service (env EDGE_AL_CENTRAL_KEY_FILE or EDGE_AL_CENTRAL_KEY)")  # fmt: skip
    p.add_argument(
        "--poll-s",
        type=float,
        default=None,
        help="scoring: seconds between polls of the central side (default 5; env EDGE_AL_FOLLOW_POLL_S)",
    )
    p.add_argument("--no-auth", action="store_true", help="no API keys (only on localhost)")
    p.add_argument("--device", default="CPU", help="CPU, GPU, GPU.N or AUTO")
    p.add_argument("--max-batch", type=positive_int, default=8, help="largest batch the dispatcher forms (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request may wait for a batch to fill (default 5)")
    p.add_argument("--no-batching", action="store_true", help="one inference per image (benchmark baseline)")
    p.add_argument("--batch-policy", choices=("adaptive", "fixed"), default="adaptive",
                   help="adaptive: batch size follows the number of concurrent requests (default); fixed: fill to --max-batch")  # fmt: skip
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run the job worker (retrain, score jobs)")
    p.add_argument("--workers", type=positive_int, default=1, help="jobs run at the same time")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("keys", help="API keys: add, list, revoke")
    ks = p.add_subparsers(dest="keys_verb", required=True, metavar="ACTION")
    k = ks.add_parser("add", help="create a key and print it once")
    k.add_argument("--role", required=True, choices=ROLES, help="what the key may do: scorer (line systems), annotator, admin")
    k.add_argument(
        "--name",
        default="",
        help="who or what uses it; an annotator key needs the person's name: decisions and leases are recorded under it",
    )
    k.set_defaults(func=cmd_keys_add)
    k = ks.add_parser("list", help="list keys (never their secrets)")
    k.set_defaults(func=cmd_keys_list)
    k = ks.add_parser("revoke", help="revoke a key by id")
    k.add_argument("id", type=int)
    k.set_defaults(func=cmd_keys_revoke)
