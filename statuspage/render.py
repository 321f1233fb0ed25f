"""Server-rendered HTML (no JavaScript needed), Atom and RSS feeds, and SVG badges.

Plain Python with ``html.escape`` on every value that came from data: the page is small enough that
a template engine would add a dependency and no safety we do not already have here. Styles are
inline in one ``<style>`` block so a phone makes one request for the whole page.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from orchestrator.domain.money import format_idr
from orchestrator.services.order_view import iso
from statuspage import model
from statuspage.model import ComponentStatus
from statuspage.snapshot import ComponentView, IncidentView, Snapshot
from statuspage.texts import (
    INCIDENT_STATUS_LABELS,
    ORDER_STATE_TEXTS,
    STATUS_LABELS,
    VERIFYING_NEXT_STEP,
    pick,
    t,
    wib,
)

COLORS = {
    ComponentStatus.OPERATIONAL: "#2e8540", ComponentStatus.DEGRADED: "#d4a300",
    ComponentStatus.PARTIAL_OUTAGE: "#e8590c", ComponentStatus.MAJOR_OUTAGE: "#c92a2a",
    ComponentStatus.MAINTENANCE: "#1c7ed6",
}
NO_DATA = "#ced4da"

_CSS = """
body{font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#212529;
background:#f8f9fa}main{max-width:720px;margin:0 auto;padding:16px}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.4em 0 .5em}
.banner{padding:14px 16px;border-radius:8px;color:#fff;font-weight:600}
.card{background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:12px 16px;margin:8px 0}
.row{display:flex;justify-content:space-between;gap:8px;align-items:baseline}
.child{padding-left:1.2em;font-size:.95em}.since{text-align:right}.st{font-weight:600;white-space:nowrap}
.muted{color:#6c757d;font-size:.85em}svg.bars{width:100%;height:28px;display:block;margin:6px 0}
form{display:grid;gap:8px}input{font:inherit;padding:8px;border:1px solid #adb5bd;
border-radius:6px}button{font:inherit;padding:10px;border:0;border-radius:6px;background:#1c7ed6;
color:#fff}nav{display:flex;justify-content:space-between;font-size:.9em;margin-bottom:8px}
.upd{border-left:3px solid #dee2e6;padding-left:10px;margin:8px 0}a{color:#1864ab}
.warn{background:#fff3bf;border:1px solid #ffe066;border-radius:8px;padding:10px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 12px;margin:0}dt{color:#6c757d}
"""


def _page(title: str, body: str, lang: str, *, refresh: bool = False) -> str:
    meta = '<meta http-equiv="refresh" content="60">' if refresh else ""
    return (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">{meta}'
            f"<title>{escape(title)}</title><style>{_CSS}</style>"
            f'<link rel="alternate" type="application/atom+xml" href="/status/history.atom">'
            f'<link rel="alternate" type="application/rss+xml" href="/status/history.rss">'
            f"</head><body><main>{body}</main></body></html>")


def _nav(lang: str, path: str) -> str:
    other = "id" if lang == "en" else "en"
    return (f'<nav><a href="/status{"?lang=en" if lang == "en" else ""}">Lunas</a>'
            f'<a href="{path}?lang={other}" hreflang="{other}">{t("language", lang)}</a></nav>')


def _q(lang: str) -> str:
    return "?lang=en" if lang == "en" else ""


def status_page(snap: Snapshot, lang: str) -> str:
    desc = model.PAGE_DESCRIPTIONS[snap.indicator]
    color = {"none": COLORS[ComponentStatus.OPERATIONAL],
             "maintenance": COLORS[ComponentStatus.MAINTENANCE],
             "minor": COLORS[ComponentStatus.DEGRADED],
             "major": COLORS[ComponentStatus.PARTIAL_OUTAGE],
             "critical": COLORS[ComponentStatus.MAJOR_OUTAGE]}[snap.indicator]
    parts = [_nav(lang, "/status"), f"<h1>{t('title', lang)}</h1>"]
    if snap.stale:
        parts.append(f'<p class="warn">{t("stale", lang)}</p>')
    parts.append(f'<div class="banner" style="background:{color}">'
                 f"{escape(pick(desc, lang))}</div>")
    unresolved = snap.unresolved()
    parts.append(f"<h2>{t('incidents', lang)}</h2>")
    if unresolved:
        parts.extend(_incident_card(i, snap, lang, link=True) for i in unresolved)
    else:
        parts.append(f'<p class="muted">{t("no_incidents", lang)}</p>')
    if snap.maintenances:
        parts.append(f"<h2>{t('maintenance', lang)}</h2>")
        parts.extend(_incident_card(m, snap, lang, link=False) for m in snap.maintenances)
    parts.append(f"<h2>{t('components', lang)}</h2>")
    views = snap.by_id
    for view in snap.components:
        c = view.component
        if c.group_id is not None:
            continue
        rows = [_component_row(view, lang)]
        rows.extend(_component_row(views[m], lang, child=True) for m in c.children
                    if m in views)
        rows.append(_bars(view, lang))
        parts.append(f'<section class="card" id="{escape(c.id)}">{"".join(rows)}</section>')
    parts.append(f'<h2><a href="/status/orders{_q(lang)}">{t("lookup", lang)}</a></h2>')
    resolved = [i for i in snap.incidents if i.status == "resolved"][:10]
    parts.append(f"<h2>{t('history', lang)}</h2>")
    if resolved:
        parts.extend(_incident_card(i, snap, lang, link=True, brief=True) for i in resolved)
    else:
        parts.append(f'<p class="muted">{t("no_history", lang)}</p>')
    parts.append(f'<p class="muted">{t("updated", lang)} {wib(snap.taken_at, lang)} · '
                 f'<a href="/status/history.atom">Atom</a> · '
                 f'<a href="/status/history.rss">RSS</a> · '
                 f'<a href="/status/api/v2/summary.json">JSON</a></p>')
    return _page(t("title", lang), "".join(parts), lang, refresh=True)


def _component_row(view: ComponentView, lang: str, *, child: bool = False) -> str:
    c = view.component
    name = c.name_en if lang == "en" else c.name
    label = pick(STATUS_LABELS[view.status], lang)
    since = "" if view.status is ComponentStatus.OPERATIONAL else (
        f'<div class="muted since">{t("since", lang)} {wib(view.since, lang)}</div>')
    return (f'<div class="row{" child" if child else ""}"><span>{escape(name)}</span>'
            f'<span class="st" style="color:{COLORS[view.status]}" '
            f'data-status="{view.status.value}">{escape(label)}</span></div>{since}')


def _bars(view: ComponentView, lang: str) -> str:
    if not view.bars:
        return ""
    width = 3
    rects = []
    for i, bar in enumerate(view.bars):
        color = NO_DATA if bar.worst is None else COLORS[bar.worst]
        tip = ""
        if bar.uptime is not None and bar.worst is not None and (
                bar.worst is not ComponentStatus.OPERATIONAL):
            tip = (f"<title>{bar.day.isoformat()}: {bar.uptime:.2%} · "
                   f"{escape(pick(STATUS_LABELS[bar.worst], lang))}</title>")
        rects.append(f'<rect x="{i * (width + 1)}" width="{width}" height="28" '
                     f'fill="{color}">{tip}</rect>')
    total = len(view.bars) * (width + 1)
    uptime = (f"{view.uptime:.2%}" if view.uptime is not None else t("no_data", lang))
    return (f'<svg class="bars" viewBox="0 0 {total} 28" preserveAspectRatio="none" '
            f'role="img" aria-label="{t("uptime_90", lang)}">{"".join(rects)}</svg>'
            f'<div class="row muted"><span>{t("uptime_90", lang)}</span>'
            f"<span>{uptime}</span></div>")


def _incident_card(incident: IncidentView, snap: Snapshot, lang: str, *, link: bool,
                   brief: bool = False) -> str:
    name = (incident.name_en or incident.name) if lang == "en" else incident.name
    title = escape(name)
    if link:
        title = f'<a href="/status/incidents/{escape(incident.id)}{_q(lang)}">{title}</a>'
    views = snap.by_id
    affected = ", ".join(escape(views[c].component.name_en if lang == "en" else
                                views[c].component.name) for c in incident.components
                         if c in views)
    head = (f"<strong>{title}</strong><div class=\"muted\">"
            f"{escape(_incident_status(incident.status, lang))}")
    if incident.maintenance and incident.scheduled_for and incident.scheduled_until:
        head += (f" · {wib(incident.scheduled_for, lang)} – "
                 f"{wib(incident.scheduled_until, lang)}")
    head += "</div>"
    if affected:
        head += f'<div class="muted">{t("affected", lang)}: {affected}</div>'
    updates = incident.updates[:1] if brief else incident.updates
    body = "".join(
        f'<div class="upd"><strong>'
        f"{escape(_incident_status(u.status, lang))}</strong>"
        f" — {escape((u.body_en or u.body) if lang == 'en' else u.body)}"
        f'<div class="muted">{wib(u.created_at, lang)}</div></div>' for u in updates)
    return f'<div class="card">{head}{body}</div>'


def _incident_status(status: str, lang: str) -> str:
    return pick(INCIDENT_STATUS_LABELS.get(status, (status, status)), lang)


def incident_page(incident: IncidentView, snap: Snapshot, lang: str) -> str:
    body = (_nav(lang, f"/status/incidents/{incident.id}")
            + _incident_card(incident, snap, lang, link=False)
            + f'<p><a href="/status{_q(lang)}">{t("back", lang)}</a></p>')
    return _page(incident.name_en if lang == "en" and incident.name_en else incident.name,
                 body, lang)


def lookup_page(lang: str, *, result: dict[str, Any] | None = None, error: str | None = None,
                code: str = "") -> str:
    parts = [_nav(lang, "/status/orders"), f"<h1>{t('lookup', lang)}</h1>"]
    if error:
        parts.append(f'<p class="warn" role="alert">{escape(error)}</p>')
    if result is not None:
        parts.append(_order_card(result, lang))
    parts.append(
        f'<form method="post" action="/status/orders{_q(lang)}" class="card">'
        f'<p class="muted">{t("lookup_help", lang)}</p>'
        f'<label>{t("order_code", lang)}<br><input name="code" required maxlength="40" '
        f'autocomplete="off" value="{escape(code)}" style="width:95%"></label>'
        f'<label>{t("contact", lang)}<br><input name="contact" required maxlength="320" '
        f'style="width:95%"></label>'
        f'<input type="hidden" name="lang" value="{lang}">'
        f'<button type="submit">{t("check", lang)}</button></form>'
        f'<p><a href="/status{_q(lang)}">{t("back", lang)}</a></p>')
    return _page(t("lookup", lang), "".join(parts), lang)


def _order_card(r: dict[str, Any], lang: str) -> str:
    texts = ORDER_STATE_TEXTS.get(r["state"], (r["state"], "", r["state"], ""))
    label, step = (texts[2], texts[3]) if lang == "en" else (texts[0], texts[1])
    waiting = VERIFYING_NEXT_STEP.get(r.get("waiting_on") or "")
    if waiting is not None:
        step = waiting[1] if lang == "en" else waiting[0]
    rows = [(t("order_code", lang), r["code"]), (t("state", lang), label),
            (t("amount", lang), format_idr(r["amount"]))]
    if r.get("transfer_amount") is not None:
        rows.append((t("transfer_amount", lang), format_idr(r["transfer_amount"])))
    if r.get("paid_at"):
        rows.append((t("paid_at", lang), wib(r["paid_at"], lang)))
    elif r.get("expires_at"):
        rows.append((t("deadline", lang), wib(r["expires_at"], lang)))
    if r.get("next_check_at"):
        rows.append((t("next_check", lang), wib(r["next_check_at"], lang)))
    dl = "".join(f"<dt>{escape(k)}</dt><dd data-field=\"{i}\">{escape(v)}</dd>"
                 for i, (k, v) in enumerate(rows))
    return (f'<section class="card" data-state="{escape(r["state"])}"><dl>{dl}</dl>'
            f"<h2>{t('next', lang)}</h2><p>{escape(step)}</p></section>")


# -- feeds and badges ---------------------------------------------------------------------------

def _entries(snap: Snapshot) -> Sequence[IncidentView]:
    return snap.incidents[:50]


def _feed_entry(i: IncidentView, lang: str) -> tuple[str, str]:
    """An incident's title and its timeline as HTML, for either feed."""
    name = (i.name_en or i.name) if lang == "en" else i.name
    content = "".join(
        f"<p><strong>{escape(u.status)}</strong> ({escape(wib(u.created_at, lang))}) — "
        f"{escape((u.body_en or u.body) if lang == 'en' else u.body)}</p>"
        for u in i.updates)
    return name, content


def atom(snap: Snapshot, base_url: str, lang: str) -> str:
    entries = []
    for i in _entries(snap):
        name, content = _feed_entry(i, lang)
        entries.append(
            f"<entry><id>tag:lunas,2026:incident:{xml_escape(i.id)}</id>"
            f"<published>{iso(i.created_at)}</published><updated>{iso(i.updated_at)}</updated>"
            f'<link rel="alternate" type="text/html" href="{xml_escape(base_url)}/incidents/'
            f'{xml_escape(i.id)}"/><title>{xml_escape(name)}</title>'
            f'<content type="html">{xml_escape(content)}</content></entry>')
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f'<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="{lang}">'
            f"<id>tag:lunas,2026:status-history</id>"
            f"<title>Lunas — {xml_escape(t('history', lang))}</title>"
            f'<link rel="alternate" type="text/html" href="{xml_escape(base_url)}"/>'
            f'<link rel="self" type="application/atom+xml" href="{xml_escape(base_url)}'
            f'/history.atom"/><updated>{iso(_feed_updated(snap))}</updated>'
            f"<author><name>Lunas</name></author>{''.join(entries)}</feed>")


def rss(snap: Snapshot, base_url: str, lang: str) -> str:
    items = []
    for i in _entries(snap):
        name, content = _feed_entry(i, lang)
        items.append(
            f"<item><title>{xml_escape(name)}</title>"
            f"<link>{xml_escape(base_url)}/incidents/{xml_escape(i.id)}</link>"
            f'<guid isPermaLink="false">lunas-incident-{xml_escape(i.id)}</guid>'
            f"<pubDate>{_rfc822(i.created_at)}</pubDate>"
            f"<description>{xml_escape(content)}</description></item>")
    return ('<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
            f"<title>Lunas — {xml_escape(t('history', lang))}</title>"
            f"<link>{xml_escape(base_url)}</link>"
            f"<description>{xml_escape(t('title', lang))}</description>"
            f"<language>{lang}</language>"
            f"<lastBuildDate>{_rfc822(_feed_updated(snap))}</lastBuildDate>"
            f"{''.join(items)}</channel></rss>")


def _feed_updated(snap: Snapshot) -> datetime:
    return max((i.updated_at for i in snap.incidents), default=snap.taken_at)


def _rfc822(at: datetime) -> str:
    from email.utils import format_datetime
    return format_datetime(at, usegmt=True)


def badge(label: str, view: ComponentView, lang: str) -> str:
    """A shields.io-style badge: "<component> | <status>"."""
    value = pick(STATUS_LABELS[view.status], lang)
    lw, vw = 8 + 7 * len(label), 8 + 7 * len(value)
    color = COLORS[view.status]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{lw + vw}" height="20" role="img" '
            f'aria-label="{escape(label)}: {escape(value)}"><title>{escape(label)}: '
            f'{escape(value)}</title><rect width="{lw}" height="20" fill="#555"/>'
            f'<rect x="{lw}" width="{vw}" height="20" fill="{color}"/>'
            f'<g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" '
            f'text-anchor="middle"><text x="{lw / 2}" y="14">{escape(label)}</text>'
            f'<text x="{lw + vw / 2}" y="14">{escape(value)}</text></g></svg>')
