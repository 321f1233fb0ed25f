"""``lunas``: run the service, migrate, and manage merchants, ops tokens and statements.

    lunas run [--demo] [--port PORT]   api + worker in one process (the embedded default)
    lunas api [--port PORT] | worker | migrate
    lunas merchants create NAME [--webhook-url URL] [--account BANK:NUMBER:HOLDER ...] [--json]
    lunas merchants add-account MERCHANT_ID BANK:NUMBER:HOLDER --actor WHO [--reason WHY]
    lunas merchants set-webhook MERCHANT_ID URL --actor WHO [--reason WHY] [--json]
    lunas merchants rotate-secret MERCHANT_ID --actor WHO [--reason WHY] [--overlap SECONDS]
    lunas merchants routing MERCHANT_ID [--json]
    lunas merchants set-routing MERCHANT_ID [--priority RAIL=PROVIDER,...] [--reset]
          [--fallback RAIL=RAIL,...] [--[no-]allow-fallback] --actor WHO [--reason WHY] [--json]
    lunas ops-tokens create NAME [--scope SCOPE ...] --actor WHO [--reason WHY] [--json]
    lunas reconcile import FILE --bank BANK --account NUMBER [--json]
    lunas reconcile unreadable [--state open] [--json]
    lunas reconcile handled ITEM_ID --note WHAT_WAS_DONE --actor WHO
    lunas orders show ORDER_ID   an order's payment record (instruments, evidence, bank lines,
          cases and their audit), as JSON
    lunas reviews list [--state open] [--order ORDER_ID] [--after CASE_ID] [--json]
    lunas reviews resolve CASE_ID --action honour|refund|expire --note WHY --actor WHO
    lunas outbox dead [--merchant ID] [--after EVENT_ID] [--json]
    lunas outbox redeliver (EVENT_ID ... | --merchant ID) --reason WHY --actor WHO
    lunas outbox discard EVENT_ID --reason WHY --actor WHO
    lunas chaos run NAME ... | --all | --fast | --list   game-day experiments (chaos/experiments)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from orchestrator.bootstrap import Container, build
from orchestrator.services.audit import record_audit
from orchestrator.serving import CannotListen, listen, why_cannot_listen
from orchestrator.settings import MAX_WEBHOOK_SECRET_OVERLAP, Settings, SettingsError
from orchestrator.store.engine import (
    DatabaseUnreachable,
    check_migrated,
    check_reachable,
    migrate,
)
from orchestrator.store.merchants import (
    OPS_SCOPES,
    add_payout_account,
    create_merchant,
    create_ops_token,
    payout_account_problem,
)
from orchestrator.store.tables import merchants
from orchestrator.telemetry import logging as log_setup
from orchestrator.telemetry import tracing


def _account(text: str) -> tuple[str, str, str]:
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise argparse.ArgumentTypeError(f"expected BANK:NUMBER:HOLDER, got {text!r}")
    bank, number, holder = (p.strip() for p in parts)
    if problem := payout_account_problem(bank.lower(), number):
        raise argparse.ArgumentTypeError(problem)
    return bank.lower(), number, holder


def _webhook_url(text: str) -> str:
    from orchestrator.services.webhook_endpoints import InvalidWebhookUrl, valid_webhook_url

    try:
        return valid_webhook_url(text)
    except InvalidWebhookUrl as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None


def _rail_list(text: str) -> tuple[str, list[str]]:
    """``va=xendit,midtrans`` (``qris=`` for an empty list); the names are checked against
    what Lunas has by the service, which says which one it does not know."""
    rail, sep, names = text.partition("=")
    if not sep or not rail.strip():
        raise argparse.ArgumentTypeError(f"expected RAIL=NAME,NAME..., got {text!r}")
    return rail.strip().lower(), [n.strip().lower() for n in names.split(",") if n.strip()]


def _overlap(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value <= MAX_WEBHOOK_SECRET_OVERLAP.total_seconds():
        raise argparse.ArgumentTypeError(
            f"expected 0 to {MAX_WEBHOOK_SECRET_OVERLAP.total_seconds():g} seconds, got {text!r}")
    return value


MAX_NAME = 200
"""The width of ``merchants.name`` and ``ops_tokens.name``."""


def _name(what: str, example: str) -> Callable[[str], str]:
    """A stripped, non-empty name that fits its column, for an argparse ``type``."""
    def checked(text: str) -> str:
        from orchestrator.domain.text import text_problem

        name = text.strip()
        if not name:
            raise argparse.ArgumentTypeError(f"a {what} needs a name, e.g. {example!r}")
        if len(name) > MAX_NAME:
            raise argparse.ArgumentTypeError(f"a {what} name is kept to {MAX_NAME} characters")
        if problem := text_problem(name):
            raise argparse.ArgumentTypeError(f"the name {problem}")
        return name
    return checked


CLI_ACTOR = "cli:"
"""What the audit log puts before a person named with ``--actor``."""


def _actor(text: str) -> str:
    """Who, for the audit log: a blank name recorded an action by nobody, and one wider than
    ``audit_log.actor`` (with ``CLI_ACTOR``) failed in the database after the decision."""
    name = _name("person", "sari")(text)
    if len(CLI_ACTOR + name) > MAX_NAME:
        raise argparse.ArgumentTypeError(
            f"a person's name is kept to {MAX_NAME - len(CLI_ACTOR)} characters")
    return name


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65_535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 1 to 65535, got {text!r}")
    return int(text)


_PORT_SETTING = "LUNAS_PORT or --port"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lunas", description="Lunas payment orchestrator")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="api + worker in one process (embedded default)")
    run.add_argument("--demo", action="store_true",
                     help="create a demo merchant and ops token on first start")
    api = sub.add_parser("api", help="serve the HTTP API")
    for serves in (run, api):
        serves.add_argument("--port", type=_port,
                            help="listen on this port instead of LUNAS_PORT (8000)")
    sub.add_parser("worker", help="run the outbox relay and scheduled sweeps")
    sub.add_parser("migrate", help="bring the database schema up to date")
    ch = sub.add_parser("chaos", help="game day experiments (see chaos/gameday)"
                        ).add_subparsers(dest="action", required=True)
    # Dispatched in ``main`` before parsing: the game day's runner reads its own arguments.
    ch.add_parser("run", help="NAME ... | --all | --fast | --list", add_help=False
                  ).add_argument("experiment_args", nargs=argparse.REMAINDER)

    m = sub.add_parser("merchants").add_subparsers(dest="action", required=True)
    mc = m.add_parser("create", help="create a merchant; prints its API key once")
    mc.add_argument("name", type=_name("merchant", "Toko Kopi"))
    mc.add_argument("--webhook-url", type=_webhook_url)
    mc.add_argument("--account", action="append", type=_account, default=[],
                    metavar="BANK:NUMBER:HOLDER")
    mc.add_argument("--json", action="store_true")
    ma = m.add_parser("add-account", help="add a payout account to a merchant (audited)")
    ma.add_argument("merchant_id")
    ma.add_argument("account", type=_account, metavar="BANK:NUMBER:HOLDER")
    ma.add_argument("--actor", required=True, type=_actor, help="who, e.g. your name")
    ma.add_argument("--reason", help="why; kept in the audit log")
    mw = m.add_parser("set-webhook", help="where the merchant's webhooks go (audited)")
    mw.add_argument("merchant_id")
    mw.add_argument("url", type=_webhook_url, metavar="URL")
    mw.add_argument("--actor", required=True, type=_actor, help="who, e.g. your name")
    mw.add_argument("--reason", help="why; kept in the audit log")
    mw.add_argument("--json", action="store_true")
    mr = m.add_parser("rotate-secret",
                      help="a new webhook signing secret, printed once (audited)")
    mr.add_argument("merchant_id")
    mr.add_argument("--actor", required=True, type=_actor, help="who, e.g. your name")
    mr.add_argument("--reason", help="why; kept in the audit log")
    mr.add_argument("--overlap", type=_overlap, metavar="SECONDS",
                    help="seconds the previous secret still signs beside the new one "
                         "(default LUNAS_WEBHOOK_SECRET_OVERLAP, a day); 0 for a leaked one")
    mr.add_argument("--json", action="store_true")
    mg = m.add_parser("routing", help="a merchant's provider order and fallback, as applied")
    mg.add_argument("merchant_id")
    mg.add_argument("--json", action="store_true")
    ms = m.add_parser("set-routing",
                      help="which providers serve a rail first, and its fallback (audited)")
    ms.add_argument("merchant_id")
    ms.add_argument("--priority", action="append", type=_rail_list, default=[],
                    metavar="RAIL=PROVIDER,...",
                    help="providers to try for RAIL, in order, e.g. va=midtrans,xendit")
    ms.add_argument("--fallback", action="append", type=_rail_list, default=[],
                    metavar="RAIL=RAIL,...",
                    help="rails that stand in when RAIL cannot be served, in order, e.g. "
                         "va=qris,manual_transfer; RAIL= for none")
    ms.add_argument("--allow-fallback", action=argparse.BooleanOptionalAction, default=None,
                    help="whether an order may be served on a fallback rail at all (without: "
                         "it waits, captured, until its own rail can be served)")
    ms.add_argument("--reset", action="store_true",
                    help="drop the merchant's overrides first: back to the defaults")
    ms.add_argument("--actor", required=True, type=_actor, help="who, e.g. your name")
    ms.add_argument("--reason", help="why; kept in the audit log")
    ms.add_argument("--json", action="store_true")

    o = sub.add_parser("ops-tokens").add_subparsers(dest="action", required=True)
    oc = o.add_parser("create", help="create an ops bearer token; printed once (audited)")
    oc.add_argument("name", type=_name("token", "finance-sari"))
    oc.add_argument("--scope", action="append", choices=OPS_SCOPES, default=None)
    oc.add_argument("--actor", required=True, type=_actor, help="who issues it, e.g. your name")
    oc.add_argument("--reason", help="why; kept in the audit log")
    oc.add_argument("--json", action="store_true")

    od_ = sub.add_parser("orders").add_subparsers(dest="action", required=True)
    os_ = od_.add_parser("show", help="an order's payment record, as JSON (GET /v1/ops/orders)")
    os_.add_argument("order_id")

    rv = sub.add_parser("reviews").add_subparsers(dest="action", required=True)
    rl = rv.add_parser("list", help="review cases (open by default)")
    rl.add_argument("--state", default="open", help="open | resolved | '' for all")
    rl.add_argument("--order", help="only this order's cases")
    rl.add_argument("--after", help="continue after this case (the last of the previous 1000)")
    rl.add_argument("--json", action="store_true")
    rr = rv.add_parser("resolve", help="honour, refund or expire a case (audited)")
    rr.add_argument("case_id")
    rr.add_argument("--action", dest="decision", required=True,
                    choices=["honour", "refund", "expire"])
    rr.add_argument("--note", required=True, help="why; kept in the audit log")
    rr.add_argument("--actor", required=True, type=_actor, help="who decides, e.g. your name")
    rr.add_argument("--json", action="store_true")

    ob = sub.add_parser("outbox").add_subparsers(dest="action", required=True)
    od = ob.add_parser("dead", help="dead-lettered events (oldest first)")
    od.add_argument("--merchant", help="only this merchant's")
    od.add_argument("--after", help="continue after this event (the last of the previous 1000)")
    od.add_argument("--json", action="store_true")
    orr = ob.add_parser("redeliver", help="send dead events again (audited)")
    orr.add_argument("event_ids", nargs="*", metavar="EVENT_ID")
    orr.add_argument("--merchant", help="every dead event of this merchant")
    orr.add_argument("--reason", required=True, help="why; kept in the audit log")
    orr.add_argument("--actor", required=True, type=_actor, help="who, e.g. your name")
    odi = ob.add_parser("discard", help="let one dead event go for good (audited)")
    odi.add_argument("event_id")
    odi.add_argument("--reason", required=True, help="why; kept in the audit log")
    odi.add_argument("--actor", required=True, type=_actor, help="who, e.g. your name")

    r = sub.add_parser("reconcile").add_subparsers(dest="action", required=True)
    ri = r.add_parser("import", help="import a bank statement file")
    ri.add_argument("file", type=Path)
    ri.add_argument("--bank", required=True, choices=["bca", "mandiri", "bri"])
    ri.add_argument("--account", required=True)
    ri.add_argument("--actor", default="cli", type=_actor)
    ri.add_argument("--json", action="store_true")
    ru = r.add_parser("unreadable", help="items the mutation feed listed that Lunas cannot read")
    ru.add_argument("--state", default="open", help="open | read | handled | '' for all")
    ru.add_argument("--json", action="store_true")
    rh = r.add_parser("handled", help="close an unreadable feed item (audited)")
    rh.add_argument("item_id")
    rh.add_argument("--note", required=True, help="what was done about its money")
    rh.add_argument("--actor", required=True, type=_actor, help="who, e.g. your name")
    rh.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["chaos", "run"]:
        # The game day drives its own stack; it needs no Lunas settings of its own.
        from chaos.gameday.runner import main as run_chaos
        return run_chaos(argv[2:])
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "worker":
            settings.refuse_unscraped_production_worker()
    except SettingsError as exc:
        print(f"lunas: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "port", None):
        settings = replace(settings, http=replace(settings.http, port=args.port))
    handler = _COMMANDS[(args.command, getattr(args, "action", None))]
    log_setup.configure(settings.telemetry)
    traces = tracing.configure(settings.telemetry)
    try:
        return _runner(args.command)(handler(settings, args))
    except (DatabaseUnreachable, CannotListen) as exc:
        print(f"lunas: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if traces is not None:
            traces.shutdown()  # export what is still buffered


def _runner(command: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """``lunas api`` and ``lunas worker`` run on uvloop when it is installed: uvicorn would pick
    it itself (``loop="auto"``), but serving inside our own ``asyncio.run`` bypasses that choice.
    On the capture benchmark uvloop saves about a tenth of the api's CPU per order; the worker,
    draining status reads after an outage, spent a fifth of its CPU in asyncio's own loop and
    socket transports. The other commands keep asyncio's loop."""
    if command in ("api", "worker"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run
    return asyncio.run


async def _with_container(
    settings: Settings, work: Callable[[Container], Awaitable[int]], *, migrates: bool = False
) -> int:
    """``work`` on a container whose database answers and, unless ``work`` migrates it first,
    holds Lunas's schema: either refusal is one line (``DatabaseUnreachable``)."""
    container = build(settings)
    try:
        await check_reachable(container.db.engine)
        if not migrates:
            await check_migrated(container.db.engine)
        return await work(container)
    finally:
        await container.close()


async def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    async def work(c: Container) -> int:
        await migrate(c.db.engine)
        print("lunas: schema is up to date")
        return 0
    return await _with_container(settings, work, migrates=True)


async def _merchants_create(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.services.webhook_endpoints import InvalidWebhookUrl

    async def work(c: Container) -> int:
        try:
            async with c.db.transaction() as conn:
                created = await create_merchant(conn, name=args.name,
                                                webhook_url=args.webhook_url,
                                                accounts=args.account, now=c.clock.now(),
                                                egress=c.settings.webhook_egress)
        except (ValueError, InvalidWebhookUrl) as exc:  # the URL: where production lets it go
            print(f"lunas: {exc}; no merchant created", file=sys.stderr)
            return 1
        out = {"merchant_id": created.merchant_id, "api_key": created.api_key,
               "webhook_secret": created.webhook_secret,
               "accounts": [asdict(a) for a in created.accounts]}
        if args.json:
            print(json.dumps(out))
        else:
            print(f"merchant id:     {created.merchant_id}")
            print(f"API key:         {created.api_key}   (shown once; stored hashed)")
            print(f"webhook secret:  {created.webhook_secret}")
            for a in created.accounts:
                print(f"payout account:  {a.bank.upper()} {a.account_number} a.n. {a.account_name}")
        return 0
    return await _with_container(settings, work)


async def _merchants_add_account(settings: Settings, args: argparse.Namespace) -> int:
    async def work(c: Container) -> int:
        bank, number, holder = args.account
        async with c.db.transaction() as conn:
            exists = (await conn.execute(sa.select(merchants.c.id)
                                         .where(merchants.c.id == args.merchant_id))).first()
            if exists is None:
                print(f"lunas: no merchant {args.merchant_id}", file=sys.stderr)
                return 1
            added = await add_payout_account(conn, merchant_id=args.merchant_id, bank=bank,
                                             number=number, holder=holder, now=c.clock.now())
            if added is not None:
                # Where customers are told to send money: who added it and why, in its own
                # transaction. The number's last digits only, as everywhere outside the table.
                await record_audit(conn, actor=f"cli:{args.actor}",
                                   action="merchant.payout_account_added",
                                   subject_type="merchant", subject_id=args.merchant_id,
                                   reason=args.reason, now=c.clock.now(), details={
                                       "bank": added.bank,
                                       "account_number": f"…{added.account_number[-4:]}",
                                       "account_name": added.account_name})
        if added is None:
            print(f"lunas: {args.merchant_id} already has {bank.upper()} {number}; nothing added",
                  file=sys.stderr)
            return 1
        print(f"lunas: added {bank.upper()} {number} to {args.merchant_id}")
        return 0
    return await _with_container(settings, work)


async def _merchants_set_webhook(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.domain.errors import DomainError
    from orchestrator.services.webhook_endpoints import set_webhook_url

    async def work(c: Container) -> int:
        try:
            url = await set_webhook_url(c.db, merchant_id=args.merchant_id, url=args.url,
                                        actor=f"cli:{args.actor}", reason=args.reason,
                                        now=c.clock.now(), egress=c.settings.webhook_egress)
        except DomainError as exc:
            print(f"lunas: {exc.detail}", file=sys.stderr)
            return 1
        print(json.dumps({"merchant_id": args.merchant_id, "webhook_url": url}) if args.json
              else f"lunas: {args.merchant_id} webhooks now go to {url} (from the next try)")
        return 0
    return await _with_container(settings, work)


async def _merchants_rotate_secret(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from orchestrator.domain.errors import DomainError
    from orchestrator.services.order_view import iso, wib
    from orchestrator.services.webhook_endpoints import rotate_webhook_secret

    async def work(c: Container) -> int:
        overlap = (c.settings.webhooks.secret_overlap if args.overlap is None
                   else timedelta(seconds=args.overlap))
        try:
            rotated = await rotate_webhook_secret(
                c.db, merchant_id=args.merchant_id, overlap=overlap, actor=f"cli:{args.actor}",
                reason=args.reason, now=c.clock.now())
        except DomainError as exc:
            print(f"lunas: {exc.detail}", file=sys.stderr)
            return 1
        until = rotated.previous_valid_until
        if args.json:
            print(json.dumps({"merchant_id": rotated.merchant_id,
                              "webhook_secret": rotated.webhook_secret,
                              "previous_valid_until": iso(until)}))
            return 0
        print(f"merchant id:     {rotated.merchant_id}")
        print(f"webhook secret:  {rotated.webhook_secret}   (shown once)")
        print("previous secret: " + (
            f"still signs beside it until {iso(until)} ({wib(until)}): deploy the new one "
            "before then" if until is not None else "no longer signs (overlap 0)"))
        return 0
    return await _with_container(settings, work)


def _print_routing(routing: dict[str, Any]) -> None:
    for rail, providers in routing["priorities"].items():
        fallback = ", ".join(routing["fallback"].get(rail, ())) or "none"
        set_here = "  (set for this merchant)" if (
            rail in routing["overrides"].get("priorities", {})
            or rail in routing["overrides"].get("fallback", {})) else ""
        print(f"  {rail:<8} {', '.join(providers):<20} fallback: {fallback}{set_here}")
    print(f"  fallback allowed: {'yes' if routing['allow_fallback'] else 'no'}")


async def _merchants_routing(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.domain.errors import DomainError
    from orchestrator.services.merchant_routing import routing_of

    async def work(c: Container) -> int:
        try:
            routing = (await routing_of(c.db, args.merchant_id)).render()
        except DomainError as exc:
            print(f"lunas: {exc.detail}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(routing))
        else:
            print(f"{args.merchant_id}:")
            _print_routing(routing)
        return 0
    return await _with_container(settings, work)


async def _merchants_set_routing(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.domain.errors import DomainError
    from orchestrator.services.merchant_routing import set_routing

    async def work(c: Container) -> int:
        try:
            routing = (await set_routing(
                c.db, merchant_id=args.merchant_id, actor=f"cli:{args.actor}",
                reason=args.reason, now=c.clock.now(), priorities=dict(args.priority),
                fallback=dict(args.fallback), allow_fallback=args.allow_fallback,
                reset=args.reset)).render()
        except DomainError as exc:
            print(f"lunas: {exc.detail}; nothing changed", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(routing))
        else:
            print(f"lunas: {args.merchant_id} routes the next order so:")
            _print_routing(routing)
        return 0
    return await _with_container(settings, work)


async def _ops_tokens_create(settings: Settings, args: argparse.Namespace) -> int:
    async def work(c: Container) -> int:
        scopes = tuple(args.scope or OPS_SCOPES)
        async with c.db.transaction() as conn:
            token_id, token = await create_ops_token(conn, name=args.name, scopes=scopes,
                                                     now=c.clock.now())
            await record_audit(conn, actor=f"cli:{args.actor}", action="ops_token.created",
                               subject_type="ops_token", subject_id=token_id,
                               reason=args.reason, now=c.clock.now(),
                               details={"name": args.name, "scopes": list(scopes)})
        if args.json:
            print(json.dumps({"token_id": token_id, "token": token, "scopes": list(scopes)}))
        else:
            print(f"ops token: {token}   (shown once; stored hashed; scopes: {', '.join(scopes)})")
        return 0
    return await _with_container(settings, work)


async def _reconcile_import(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.domain.errors import StatementRejected

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"lunas: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    async def work(c: Container) -> int:
        try:
            report = await c.reconciliation.import_statement(
                bank=args.bank, account_number=args.account, data=data,
                filename=args.file.name, actor=f"cli:{args.actor}")
        except StatementRejected as exc:
            print(f"lunas: statement refused, nothing imported: {exc.detail}", file=sys.stderr)
            return 1
        print(json.dumps(asdict(report)) if args.json else
              "\n".join(f"{k:>16}: {v}" for k, v in asdict(report).items()))
        return 0
    return await _with_container(settings, work)


async def _reconcile_unreadable(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.domain.errors import DomainError

    async def work(c: Container) -> int:
        try:
            items = await c.unreadable_feed_items.listing(state=args.state or None, limit=1000)
        except DomainError as exc:
            print(f"lunas: {exc.detail}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(items))
        else:
            for item in items:
                print(f"{item['id']}  {item['state']:<8} {item['first_seen_at']}  "
                      f"{item['problem']}\n    {item['raw_item'][:200]}")
        return 0
    return await _with_container(settings, work)


async def _reconcile_handled(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.domain.errors import DomainError

    async def work(c: Container) -> int:
        try:
            item = await c.unreadable_feed_items.handled(
                args.item_id, actor=f"cli:{args.actor}", note=args.note, now=c.clock.now())
        except DomainError as exc:
            print(f"lunas: {exc.detail}", file=sys.stderr)
            return 1
        print(json.dumps(item) if args.json else f"{item['id']} handled by {item['closed_by']}")
        return 0
    return await _with_container(settings, work)


async def _outbox_dead(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.domain.errors import DomainError
    from orchestrator.services.dead_letters import list_dead

    async def work(c: Container) -> int:
        try:
            dead = await list_dead(c.db, limit=1000, merchant_id=args.merchant,
                                   after=args.after)
        except DomainError as exc:
            print(f"lunas: {exc.detail}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(dead))
        else:
            for e in dead:
                print(f"{e['event_id']}  {e['event_type']:<28} merchant {e['merchant_id']}  "
                      f"tries {e['attempts']:>3}  {e['last_error'] or ''}")
        return 0
    return await _with_container(settings, work)


async def _outbox_redeliver(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.domain.errors import DomainError
    from orchestrator.services.dead_letters import redeliver

    if bool(args.event_ids) == bool(args.merchant):  # said in this command's own words
        print("lunas: name the events to send again (EVENT_ID ...) or a merchant (--merchant ID)"
              + (", not both" if args.merchant else ""), file=sys.stderr)
        return 2

    async def work(c: Container) -> int:
        try:
            sent = await redeliver(c.db, event_ids=args.event_ids, merchant_id=args.merchant,
                                   actor=f"cli:{args.actor}", reason=args.reason,
                                   now=c.clock.now())
        except DomainError as exc:
            print(f"lunas: {exc.detail}", file=sys.stderr)
            return 1
        print(f"{len(sent)} events pending again")
        return 0
    return await _with_container(settings, work)


async def _outbox_discard(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.domain.errors import DomainError
    from orchestrator.services.dead_letters import discard

    async def work(c: Container) -> int:
        try:
            event = await discard(c.db, event_id=args.event_id, actor=f"cli:{args.actor}",
                                  reason=args.reason, now=c.clock.now())
        except DomainError as exc:
            print(f"lunas: {exc.detail}", file=sys.stderr)
            return 1
        print(f"{event['event_id']} {event['status']}")
        return 0
    return await _with_container(settings, work)


async def _orders_show(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.domain.errors import DomainError
    from orchestrator.services.order_record import order_record

    async def work(c: Container) -> int:
        try:
            found = await order_record(c.db, order_id=args.order_id)
        except DomainError as exc:
            print(f"lunas: {exc.detail}", file=sys.stderr)
            return 1
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return 0
    return await _with_container(settings, work)


async def _reviews_list(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.domain.errors import DomainError
    from orchestrator.services.reviews import list_cases

    async def work(c: Container) -> int:
        try:
            cases = await list_cases(c.db, state=args.state or None, limit=1000,
                                     order_id=args.order, after=args.after)
        except DomainError as exc:
            print(f"lunas: {exc.detail}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(cases))
        else:
            for case in cases:
                # The currency beside the amount: a currency_mismatch case's is not rupiah
                # (``?`` on one opened before Lunas recorded it). Last, the answers
                # ``reviews resolve --action`` takes for it (``-`` once it is resolved).
                print(f"{case['id']}  {case['state']:<8} {case['reason']:<32} "
                      f"{case['recommended_action']:<17} {case['amount']:>12} "
                      f"{case['currency'] or '?'}  order {case['order_id']}  "
                      f"actions {'|'.join(case['allowed_actions']) or '-'}")
        return 0
    return await _with_container(settings, work)


async def _reviews_resolve(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.domain.errors import DomainError
    from orchestrator.services.reviews import resolve_case

    async def work(c: Container) -> int:
        try:
            case = await resolve_case(c.db, case_id=args.case_id, action=args.decision,
                                      actor=f"cli:{args.actor}", note=args.note,
                                      now=c.clock.now(),
                                      quarantine=c.settings.unique_codes.quarantine)
        except DomainError as exc:
            print(f"lunas: {exc.detail}", file=sys.stderr)
            return 1
        print(json.dumps(case) if args.json else
              f"{case['id']} resolved: {case['resolution']} by {case['resolved_by']}")
        return 0
    return await _with_container(settings, work)


async def _serve(container: Container, stop: asyncio.Event,
                 sockets: list[socket.socket]) -> None:
    import uvicorn

    from orchestrator.app import create_app
    from orchestrator.serving import EmbeddedServer

    http = container.settings.http
    # log_config=None: uvicorn's records go through our redacting formatter, not its own.
    app = create_app(container, close_on_shutdown=False, freeze_startup_heap=True)
    config = uvicorn.Config(app, host=http.host,
                            port=http.port, log_level="warning", access_log=False,
                            log_config=None, proxy_headers=True,
                            forwarded_allow_ips=list(http.trusted_proxies))
    server = EmbeddedServer(config)
    server_task = asyncio.create_task(server.serve(sockets=sockets))
    stopping = asyncio.create_task(stop.wait())
    # Either a signal (stop) ends the server, or the server ends (e.g. port taken) and stops
    # the rest of the process with it.
    await asyncio.wait({server_task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    server.should_exit = True
    stopping.cancel()
    await server_task


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _api(settings: Settings, _args: argparse.Namespace) -> int:
    sockets = listen(settings.http.host, settings.http.port, setting=_PORT_SETTING)

    async def work(c: Container) -> int:
        print(f"lunas api listening on {c.settings.http.base_url}")
        await _serve(c, _stop_on_signals(), sockets)
        return 0
    try:
        return await _with_container(settings, work)
    finally:
        for sock in sockets:
            sock.close()


async def _worker(settings: Settings, _args: argparse.Namespace) -> int:
    from orchestrator.worker import run_worker

    async def work(c: Container) -> int:
        exporter = None
        if c.settings.http.worker_metrics_port:
            from prometheus_client import start_http_server

            host, port = c.settings.http.host, c.settings.http.worker_metrics_port
            try:
                exporter, _ = start_http_server(port, addr=host, registry=c.metrics.registry)
            except OSError as error:
                raise CannotListen(why_cannot_listen(
                    host, port, error, setting="LUNAS_WORKER_METRICS_PORT")) from error
            print(f"lunas worker metrics on http://{c.settings.http.host}:"
                  f"{c.settings.http.worker_metrics_port}/metrics", flush=True)
        try:
            await run_worker(c, _stop_on_signals(), freeze_startup_heap=True)
        finally:
            if exporter is not None:
                exporter.shutdown()
        return 0
    return await _with_container(settings, work)


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    """Everything in one process: api, worker and, on the embedded default (no gateway URLs),
    the provider simulators with the providers pointed at them."""
    from chaos.sim.runner import Simulators, start_simulators
    from orchestrator.worker import run_worker

    # The port first: nothing is started or announced on a port another process holds.
    sockets = listen(settings.http.host, settings.http.port, setting=_PORT_SETTING)
    sims: Simulators | None = None

    async def work(c: Container) -> int:
        await migrate(c.db.engine)
        demo = await _demo_credentials(c) if args.demo else None
        _print_banner(c, demo, sims)
        stop = _stop_on_signals()
        await asyncio.gather(_serve(c, stop, sockets), run_worker(c, stop))
        return 0
    try:
        p = settings.providers
        if p.start_simulators or (settings.database.is_sqlite and not (p.midtrans_url
                                                                        or p.xendit_url)):
            sims = await start_simulators(credentials=p, lunas_url=settings.http.base_url)
            settings = replace(settings, providers=replace(
                p, midtrans_url=sims.midtrans.data_url, xendit_url=sims.xendit.data_url))
        return await _with_container(settings, work, migrates=True)
    finally:
        for sock in sockets:
            sock.close()
        if sims is not None:
            await sims.stop()


async def _demo_credentials(c: Container) -> dict[str, Any] | None:
    async with c.db.transaction() as conn:
        if (await conn.execute(sa.select(sa.func.count()).select_from(merchants))).scalar_one():
            return None
        now = c.clock.now()
        created = await create_merchant(conn, name="Toko Demo", webhook_url=None,
                                        accounts=[("bca", "0123456789", "TOKO DEMO")], now=now)
        _, token = await create_ops_token(conn, name="demo-finance", scopes=OPS_SCOPES, now=now)
    return {"merchant_id": created.merchant_id, "api_key": created.api_key, "ops_token": token}


def _print_banner(c: Container, demo: dict[str, Any] | None, sims: Any = None) -> None:
    base = c.settings.http.base_url
    print(f"Lunas is serving on {base}  (database: {c.settings.database.url})")
    print(f"  API docs (OpenAPI): {base}/schema   health: {base}/healthz   rails: {base}/v1/rails")
    if sims is not None:
        print(f"  Midtrans simulator: {sims.midtrans.data_url}  (control: "
              f"{sims.midtrans.control_url})")
        print(f"  Xendit simulator:   {sims.xendit.data_url}  (control: {sims.xendit.control_url})")
    if demo:
        print("  Demo merchant created (shown once):")
        print(f"    merchant id: {demo['merchant_id']}")
        print(f"    API key:     {demo['api_key']}")
        print(f"    ops token:   {demo['ops_token']}")
    else:
        print("  Get a merchant key:  .venv/bin/lunas merchants create 'My Shop' "
              "--account bca:9876543210:MY SHOP")
    print("  Stop with Ctrl-C.")


_Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]
_COMMANDS: dict[tuple[str, str | None], _Command] = {
    ("run", None): _run,
    ("api", None): _api,
    ("worker", None): _worker,
    ("migrate", None): _migrate,
    ("merchants", "create"): _merchants_create,
    ("merchants", "add-account"): _merchants_add_account,
    ("merchants", "set-webhook"): _merchants_set_webhook,
    ("merchants", "rotate-secret"): _merchants_rotate_secret,
    ("merchants", "routing"): _merchants_routing,
    ("merchants", "set-routing"): _merchants_set_routing,
    ("ops-tokens", "create"): _ops_tokens_create,
    ("reconcile", "import"): _reconcile_import,
    ("reconcile", "unreadable"): _reconcile_unreadable,
    ("reconcile", "handled"): _reconcile_handled,
    ("outbox", "dead"): _outbox_dead,
    ("outbox", "redeliver"): _outbox_redeliver,
    ("outbox", "discard"): _outbox_discard,
    ("orders", "show"): _orders_show,
    ("reviews", "list"): _reviews_list,
    ("reviews", "resolve"): _reviews_resolve,
}

if __name__ == "__main__":
    sys.exit(main())
