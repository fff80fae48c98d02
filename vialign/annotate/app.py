"""The annotation web app: FastAPI serving plain HTML/JS/CSS from the package and a small JSON API.

Only the images that items name are served, from the image root. A request body larger than
`max_body_bytes` is refused with 413 before anything parses it, so one client cannot stall the others.
Request models are strict (no unknown fields, no strings or booleans for numbers). On a non-loopback
host every request needs the access token (header `Authorization: Bearer …` or `?token=`)."""

from __future__ import annotations

import ipaddress
import secrets
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from vialign.annotate.store import AnnotationStore
from vialign.config import Settings
from vialign.records import ImagePathError, confined_image_path

DEFAULT_CRITERIA = {
    "questions": ["relevance", "comprehensiveness", "diversity"],
    "answers": ["accuracy", "completeness", "fluency", "detail"],
}
STATIC = ("index.html", "app.js", "app.css")
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


class AnnotateSettings(Settings):
    criteria: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_CRITERIA.items()}
    )
    weights: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="per kind, criterion weights of the overall score (default: equal)"
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="larger request bodies are refused (413)")

    def overall(self, kind: str, scores: dict[str, float]) -> float:
        weights = self.weights.get(kind) or dict.fromkeys(self.criteria[kind], 1.0)
        return sum(weights[k] * scores[k] for k in weights) / sum(weights.values())


NAME = r"^[\w .@-]+$"
AnnotatorName = Annotated[str, Query(min_length=1, max_length=64, pattern=NAME)]


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CandidateRating(StrictBody):
    candidate: int = Field(ge=0)
    scores: dict[str, float] = Field(max_length=64)


class Submission(StrictBody):
    annotator: str = Field(min_length=1, max_length=64, pattern=NAME)
    ratings: list[CandidateRating] = Field(max_length=256)


class Annotator(StrictBody):
    annotator: str = Field(min_length=1, max_length=64, pattern=NAME)


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, by its Content-Length or while it streams in."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self.refuse(send)
        body, more = [], True
        while more:  # read the whole (bounded) body first, so nothing parses a partial one
            message = await receive()
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
            if sum(map(len, body)) > self.limit:
                return await self.refuse(send)
        replay = iter([{"type": "http.request", "body": b"".join(body), "more_body": False}])

        async def receive_again() -> dict:
            return next(replay, None) or await receive()

        await self.app(scope, receive_again, send)

    async def refuse(self, send: Any) -> None:
        detail = f'{{"detail": "request body over {self.limit} bytes"}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": detail})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_ratings(
    item: dict[str, Any], submission: Submission, settings: AnnotateSettings
) -> dict[int, dict[str, float]]:
    """Every candidate rated once on exactly the kind's criteria, each score in [0, 1]; else 422."""
    criteria = set(settings.criteria[item["kind"]])
    n = len(item["candidates"])
    seen: dict[int, dict[str, float]] = {}
    for r in submission.ratings:
        if r.candidate >= n:
            raise HTTPException(
                422, f"item {item['item_id']!r} has {n} candidates; there is no candidate {r.candidate}"
            )
        if r.candidate in seen:
            raise HTTPException(422, f"candidate {r.candidate} is rated twice")
        if set(r.scores) != criteria:
            raise HTTPException(
                422, f"candidate {r.candidate}: rate exactly {sorted(criteria)}, got {sorted(r.scores)}"
            )
        bad = {k: v for k, v in r.scores.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise HTTPException(422, f"candidate {r.candidate}: scores must lie in [0, 1], got {bad}")
        seen[r.candidate] = r.scores
    if len(seen) != n:
        raise HTTPException(422, f"rate every candidate: missing {sorted(set(range(n)) - set(seen))}")
    return seen


def create_app(
    store: AnnotationStore, image_root: str | Path, settings: AnnotateSettings, token: str | None = None
) -> FastAPI:
    app = FastAPI(title="vialign annotate", docs_url=None, redoc_url=None, openapi_url=None)
    root = Path(image_root)

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.query_params.get("token") or request.headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a valid token is required")

    guard = [Depends(authorised)]

    def item_or_404(item_id: str) -> dict[str, Any]:
        item = store.item(item_id)
        if item is None:
            raise HTTPException(404, f"no item {item_id!r}")
        return item

    @app.get("/", response_class=HTMLResponse, dependencies=guard)
    def index() -> Response:
        return static_file("index.html")

    @app.get("/static/{name}", dependencies=guard)
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, f"no static file {name!r}")
        return static_file(name)

    @app.get("/api/config", dependencies=guard)
    def config() -> dict[str, Any]:
        return {"criteria": settings.criteria}

    @app.get("/api/progress", dependencies=guard)
    def progress() -> dict[str, Any]:
        return store.progress()

    @app.get("/api/items", dependencies=guard)
    def items(annotator: AnnotatorName) -> list[dict[str, Any]]:
        return store.statuses(annotator)

    @app.get("/api/next", dependencies=guard)
    def next_item(annotator: AnnotatorName, after: str | None = None) -> dict[str, Any]:
        return {"item_id": store.next_item(annotator, after)}

    @app.get("/api/items/{item_id}", dependencies=guard)
    def get_item(item_id: str, annotator: AnnotatorName | None = None) -> dict[str, Any]:
        item = item_or_404(item_id)
        mine = store.ratings_of(item_id, annotator) if annotator else {}
        return {**item, "criteria": settings.criteria[item["kind"]], "ratings": mine}

    @app.post("/api/items/{item_id}/ratings", dependencies=guard)
    def submit(item_id: str, submission: Submission) -> dict[str, Any]:
        item = item_or_404(item_id)
        store.submit(item_id, submission.annotator, checked_ratings(item, submission, settings))
        return {"ok": True, "next": store.next_item(submission.annotator, item_id)}

    @app.post("/api/items/{item_id}/skip", dependencies=guard)
    def skip(item_id: str, who: Annotator) -> dict[str, Any]:
        item_or_404(item_id)
        store.skip(item_id, who.annotator)
        return {"ok": True, "next": store.next_item(who.annotator, item_id)}

    @app.get("/images/{path:path}", dependencies=guard)
    def image(path: str) -> FileResponse:
        if "\x00" in path or not path.isprintable():
            raise HTTPException(400, "an image path must be printable text")
        try:
            file = confined_image_path(root, path)
        except ImagePathError as exc:
            raise HTTPException(403, exc.reason) from exc
        if path not in store.image_paths():
            raise HTTPException(404, f"no item shows the image {path!r}")
        if not file.is_file():
            raise HTTPException(404, f"no image {path!r}")
        return FileResponse(file)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def static_file(name: str) -> Response:
    data = resources.files("vialign.annotate").joinpath("static", name).read_bytes()
    return Response(data, media_type=MEDIA_TYPES[Path(name).suffix])
