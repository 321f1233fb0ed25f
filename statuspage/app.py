"""Routes of the public status page under ``/status`` (served by the api), and the ops API that
posts incident updates under ``/v1/ops/status``."""

from __future__ import annotations

from typing import Any

from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Redirect

from orchestrator.api.input_guard import read_form
from orchestrator.api.openapi import Answer, contract, problem
from orchestrator.api.schemas import IncidentIn, IncidentUpdateIn
from orchestrator.bootstrap import Container
from statuspage import render
from statuspage.service import RateLimited
from statuspage.snapshot import Snapshot
from statuspage.texts import UI, t

HTML = "text/html; charset=utf-8"
_CACHE = {"Cache-Control": "public, max-age=5"}


def _lang(lang: str | None) -> str:
    return "en" if (lang or "").lower().startswith("en") else "id"


async def _snapshot(container: Container) -> Snapshot:
    return await container.status_page.snapshots.get()


def _cached(snap: Snapshot, key: tuple[str, ...], build: Any) -> Any:
    value = snap.renders.get(key)
    if value is None:
        value = snap.renders[key] = build()
    return value


class StatusPageController(Controller):
    path = "/status"
    tags = ("status page",)
    include_in_schema = False

    @get("/", summary="The public status page")
    async def page(self, container: NamedDependency[Container],
                   lang: FromQuery[str | None] = None) -> Response[str]:
        snap, lg = await _snapshot(container), _lang(lang)
        body = _cached(snap, ("page", lg), lambda: render.status_page(snap, lg))
        return Response(body, media_type=HTML, headers=_CACHE)

    @get("/incidents/{incident_id:str}", summary="One incident with its timeline")
    async def incident(self, container: NamedDependency[Container], incident_id: FromPath[str],
                       lang: FromQuery[str | None] = None) -> Response[str]:
        snap, lg = await _snapshot(container), _lang(lang)
        found = next((i for i in (*snap.incidents, *snap.maintenances) if i.id == incident_id),
                     None)
        if found is None:
            return Response(render.lookup_page(lg, error=t("not_found", lg)).replace(
                t("lookup", lg), "404", 1), media_type=HTML, status_code=404)
        return Response(render.incident_page(found, snap, lg), media_type=HTML, headers=_CACHE)

    @get("/orders", summary="The order lookup form")
    async def lookup_form(self, lang: FromQuery[str | None] = None) -> Response[str]:
        return Response(render.lookup_page(_lang(lang)), media_type=HTML)

    @get("/return", summary="Where e-wallet apps send the customer back: the lookup form")
    async def wallet_return(self, lang: FromQuery[str | None] = None) -> Redirect:
        return Redirect(path=f"/status/orders{'?lang=en' if _lang(lang) == 'en' else ''}")

    @post("/orders", summary="Look up one's own order", status_code=200)
    async def lookup(self, request: Request[Any, Any, Any],
                     container: NamedDependency[Container],
                     lang: FromQuery[str | None] = None) -> Response[str]:
        form = await read_form(request)
        lg = _lang(str(form.get("lang") or lang or ""))
        code = str(form.get("code") or "")[:64]
        contact = str(form.get("contact") or "")[:320]
        if not code.strip() or not contact.strip():
            return Response(render.lookup_page(lg, error=t("bad_input", lg), code=code),
                            media_type=HTML, status_code=422)
        client = request.client.host if request.client else "unknown"
        try:
            found = await container.status_page.lookup(code, contact, client)
        except RateLimited as exc:
            message = UI["rate_limited"][1 if lg == "en" else 0].format(seconds=exc.retry_after)
            return Response(render.lookup_page(lg, error=message, code=code), media_type=HTML,
                            status_code=429, headers={"Retry-After": str(exc.retry_after)})
        if found is None:
            return Response(render.lookup_page(lg, error=t("not_found", lg), code=code),
                            media_type=HTML, status_code=404)
        return Response(render.lookup_page(lg, result=found), media_type=HTML,
                        headers={"Cache-Control": "no-store"})

    # -- feeds and badges -------------------------------------------------------------------

    @get("/history.atom")
    async def atom(self, container: NamedDependency[Container],
                   lang: FromQuery[str | None] = None) -> Response[str]:
        snap, lg = await _snapshot(container), _lang(lang)
        base = container.status_page.base_url
        body = _cached(snap, ("atom", lg), lambda: render.atom(snap, base, lg))
        return Response(body, media_type="application/atom+xml; charset=utf-8", headers=_CACHE)

    @get("/history.rss")
    async def rss(self, container: NamedDependency[Container],
                  lang: FromQuery[str | None] = None) -> Response[str]:
        snap, lg = await _snapshot(container), _lang(lang)
        base = container.status_page.base_url
        body = _cached(snap, ("rss", lg), lambda: render.rss(snap, base, lg))
        return Response(body, media_type="application/rss+xml; charset=utf-8", headers=_CACHE)

    @get("/badge/{component_id:str}")
    async def badge(self, container: NamedDependency[Container], component_id: FromPath[str],
                    lang: FromQuery[str | None] = None) -> Response[str]:
        snap, lg = await _snapshot(container), _lang(lang)
        view = snap.by_id.get(component_id.removesuffix(".svg"))
        if view is None:
            return Response("unknown component", media_type=MediaType.TEXT, status_code=404)
        label = view.component.name_en if lg == "en" else view.component.name
        return Response(render.badge(label, view, lg), media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=30"})

    # -- Atlassian Statuspage-shaped API ----------------------------------------------------

    @get("/api/v2/summary.json")
    async def summary(self, container: NamedDependency[Container],
                      lang: FromQuery[str | None] = None) -> dict[str, Any]:
        snap, lg = await _snapshot(container), _lang(lang)
        base = container.status_page.base_url
        return _cached(snap, ("summary", lg), lambda: snap.summary_json(lg, base))  # type: ignore[no-any-return]

    @get("/api/v2/status.json")
    async def status(self, container: NamedDependency[Container],
                     lang: FromQuery[str | None] = None) -> dict[str, Any]:
        snap = await _snapshot(container)
        return {"page": snap.page(container.status_page.base_url),
                "status": snap.status_json(_lang(lang))}

    @get("/api/v2/components.json")
    async def components(self, container: NamedDependency[Container],
                         lang: FromQuery[str | None] = None) -> dict[str, Any]:
        snap = await _snapshot(container)
        return {"page": snap.page(container.status_page.base_url),
                "components": snap.components_json(_lang(lang))}

    @get("/api/v2/incidents.json")
    async def incidents(self, container: NamedDependency[Container],
                        lang: FromQuery[str | None] = None) -> dict[str, Any]:
        snap, base = await _snapshot(container), container.status_page.base_url
        return {"page": snap.page(base),
                "incidents": [snap.incident_json(i, _lang(lang), base) for i in snap.incidents]}

    @get("/api/v2/incidents/unresolved.json")
    async def unresolved(self, container: NamedDependency[Container],
                         lang: FromQuery[str | None] = None) -> dict[str, Any]:
        snap, base = await _snapshot(container), container.status_page.base_url
        return {"page": snap.page(base),
                "incidents": [snap.incident_json(i, _lang(lang), base)
                              for i in snap.unresolved()]}

    @get("/api/v2/scheduled-maintenances/upcoming.json")
    async def upcoming(self, container: NamedDependency[Container],
                       lang: FromQuery[str | None] = None) -> dict[str, Any]:
        snap, base = await _snapshot(container), container.status_page.base_url
        return {"page": snap.page(base),
                "scheduled_maintenances": [snap.incident_json(m, _lang(lang), base)
                                           for m in snap.upcoming()]}

    @get("/api/v2/scheduled-maintenances/active.json")
    async def active(self, container: NamedDependency[Container],
                     lang: FromQuery[str | None] = None) -> dict[str, Any]:
        snap, base = await _snapshot(container), container.status_page.base_url
        return {"page": snap.page(base),
                "scheduled_maintenances": [snap.incident_json(m, _lang(lang), base)
                                           for m in snap.active_maintenance()]}


_INCIDENT_REFUSED = problem("invalid_request: an unknown status, impact or component "
                            "(`field` names it).")
COMPONENTS = contract("ops", {200: Answer(description="`components`: each with its published "
                                                      "status, candidate and observations")})
OPEN_INCIDENT = contract("ops", body=True, answers={
    201: Answer(description="The incident's id"), 422: _INCIDENT_REFUSED})
UPDATE = contract("ops", body=True, answers={
    201: Answer(description="The update's id"), 404: problem("No such incident (not_found)."),
    422: _INCIDENT_REFUSED})

class StatusOpsController(Controller):
    """People post incidents and updates, every post audited, and read why each component shows
    what it shows (ops token, ``ops`` scope)."""

    path = "/v1/ops/status"
    tags = ("ops",)

    @get("/components", summary="Per component: what the page shows, what is pending, and why",
         responses=COMPONENTS.responses, operation_class=COMPONENTS.operation)
    async def components(self, request: Request[Any, Any, Any],
                         container: NamedDependency[Container]) -> dict[str, Any]:
        await container.auth.ops(request, "ops")
        return {"components": await container.status_page.component_states()}

    @post("/incidents", status_code=201, summary="Open an incident by hand",
          responses=OPEN_INCIDENT.responses, operation_class=OPEN_INCIDENT.operation)
    async def open_incident(self, request: Request[Any, Any, Any],
                            data: JSONBody[IncidentIn],
                            container: NamedDependency[Container]) -> dict[str, Any]:
        principal = await container.auth.ops(request, "ops")
        incident_id = await container.status_page.open_incident(
            name=data.name, name_en=data.name_en, status=data.status, impact=data.impact,
            components=data.components, body=data.body, body_en=data.body_en,
            actor=f"ops:{principal.name}")
        return {"id": incident_id}

    @post("/incidents/{incident_id:str}/updates", status_code=201,
          summary="Post an update to an incident (automatic or not)",
          responses=UPDATE.responses, operation_class=UPDATE.operation)
    async def post_update(self, request: Request[Any, Any, Any], incident_id: FromPath[str],
                          data: JSONBody[IncidentUpdateIn],
                          container: NamedDependency[Container]) -> dict[str, Any]:
        principal = await container.auth.ops(request, "ops")
        update_id = await container.status_page.post_update(
            incident_id, status=data.status, body=data.body, body_en=data.body_en,
            actor=f"ops:{principal.name}")
        return {"id": update_id, "incident_id": incident_id}
