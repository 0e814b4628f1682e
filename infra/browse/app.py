"""The `spacetime browse` web app: read-only pages over the roots of a Catalog (Starlette).

Every file it serves is named by a root number and a key or a relative path that is checked
against that root: clips come out of their shard tar by byte range (tarindex), run files must
resolve (symlinks followed) to a file inside the run folder. There are no write endpoints.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from infra.browse import runs
from infra.browse.catalog import Catalog, Root
from infra.browse.tarindex import member_index, safe_name

HERE = Path(__file__).parent
SCORES = ("flow", "text", "sharpness", "dark", "bright", "motion")
RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
MEDIA = {".mp4": "video/mp4", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif"}


def filtered(df: pd.DataFrame, params: dict[str, str], texts: Any) -> pd.DataFrame:
    """Rows matching the query: `q` (caption text, any set; `texts()` gives the lower-case
    texts), `camera`, and `COL_min`/`COL_max` on any numeric column."""
    keep = pd.Series(True, index=df.index)
    q = params.get("q", "").strip().lower()
    if q:
        keep &= texts().str.contains(q, regex=False)
    if params.get("camera") and "camera" in df:
        keep &= df["camera"] == params["camera"]
    for name, value in params.items():
        col, _, bound = name.rpartition("_")
        if bound not in ("min", "max") or col not in df or not value.strip():
            continue
        try:
            limit = float(value)
        except ValueError:
            raise HTTPException(400, f"{name}: not a number: {value!r}") from None
        keep &= (df[col] >= limit) if bound == "min" else (df[col] <= limit)
    return df[keep.fillna(False)]


def histogram(values: pd.Series, bins: int = 12) -> list[dict[str, float]]:
    v = values.dropna().to_numpy(dtype=float)
    if not len(v):
        return []
    counts, edges = np.histogram(v, bins=bins)
    top = max(1, int(counts.max()))
    return [
        {"lo": float(edges[i]), "hi": float(edges[i + 1]), "n": int(c), "h": int(c) / top}
        for i, c in enumerate(counts)
    ]


def range_response(request: Request, size: int, read: Any, media_type: str) -> Response:
    """200 with the whole body, or 206 with the one byte range asked for (what <video> needs)."""
    headers = {"Accept-Ranges": "bytes"}
    spec = request.headers.get("range")
    if spec is None:
        return Response(read(0, size), media_type=media_type, headers=headers)
    m = RANGE.match(spec.strip())
    if m is None or m.groups() == ("", ""):
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    a, b = m.groups()
    if a == "":  # the last b bytes
        start, end = max(0, size - int(b)), size - 1
    else:
        start, end = int(a), min(size - 1, int(b) if b else size - 1)
    if start >= size or start > end:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(
        read(start, end - start + 1), status_code=206, media_type=media_type, headers=headers
    )


def make_app(catalog: Catalog) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    storage = catalog.storage

    def root(request: Request, *kinds: str) -> tuple[int, Root]:
        try:
            i = int(request.path_params["i"])
            return i, catalog.root(i, *kinds)
        except (KeyError, ValueError):
            raise HTTPException(404, "no such root") from None

    texts: dict[int, pd.Series] = {}

    def texts_of(i: int, df: pd.DataFrame) -> pd.Series:
        """Every caption of each clip in one lower-case string (made once per root)."""
        if i not in texts:
            out = df["caption"].fillna("") if "caption" in df else pd.Series("", index=df.index)
            for s in catalog.caption_sets:
                out = out + "\n" + df["key"].map(s.captions).fillna("")
            texts[i] = out.str.lower()
        return texts[i]

    def captions_of(key: str, row: dict[str, Any]) -> list[tuple[str, str]]:
        out = [("source caption", row.get("caption") or "")]
        out += [(s.name, s.captions.get(key, "")) for s in catalog.caption_sets]
        return out

    async def index(request: Request) -> Response:
        return templates.TemplateResponse(request, "index.html", {"roots": catalog.roots})

    async def dataset(request: Request) -> Response:
        i, r = root(request, "clips", "selection")
        assert r.clips is not None
        params = dict(request.query_params)
        df = filtered(r.clips, params, lambda: texts_of(i, r.clips))
        per = min(200, max(1, int(params.get("per_page", 24) or 24)))
        page = max(0, int(params.get("page", 0) or 0))
        rows = df.iloc[page * per : (page + 1) * per].to_dict("records")
        cards = [{"row": row, "captions": captions_of(row["key"], row)} for row in rows]
        hists = {"duration (s)": histogram(df["seconds"]), "height (px)": histogram(df["height"])}
        hists |= {c: histogram(df[c]) for c in SCORES if c in df}
        query = {k: v for k, v in params.items() if k != "page"}
        return templates.TemplateResponse(
            request,
            "dataset.html",
            {
                "i": i,
                "root": r,
                "cards": cards,
                "total": len(r.clips),
                "matching": len(df),
                "page": page,
                "pages": max(1, -(-len(df) // per)),
                "query": query,
                "hists": hists,
                "cameras": sorted(r.clips["camera"].dropna().unique())
                if "camera" in r.clips
                else [],
                "rejected": [] if r.rejected is None else r.rejected.head(200).to_dict("records"),
                "errors": r.errors[:200],
            },
        )

    async def clip(request: Request) -> Response:
        i, r = root(request, "clips", "selection")
        key = request.path_params["key"]
        assert r.clips is not None
        match = r.clips[r.clips["key"] == key]
        if not len(match):
            raise HTTPException(404, "no such clip")
        row = match.iloc[0].to_dict()
        shard = catalog.shard_of(i, key)
        off, size = member_index(shard, storage).get(f"{key}.json", (0, 0))
        meta = json.loads(storage.read_range(shard, off, size)) if size else {}
        return templates.TemplateResponse(
            request,
            "clip.html",
            {
                "i": i,
                "root": r,
                "row": row,
                "meta": json.dumps(meta, indent=2, sort_keys=True),
                "captions": captions_of(key, row),
            },
        )

    async def media(request: Request) -> Response:
        i, _ = root(request, "clips", "selection")
        key = request.path_params["key"]
        try:
            shard = catalog.shard_of(i, key)
        except KeyError:
            raise HTTPException(404, "no such clip") from None
        member = member_index(shard, storage).get(f"{key}.mp4")
        if member is None or not safe_name(f"{key}.mp4"):
            raise HTTPException(404, "no such clip")
        off, size = member
        return range_response(
            request, size, lambda a, n: storage.read_range(shard, off + a, n), "video/mp4"
        )

    async def run_page(request: Request) -> Response:
        i, r = root(request, "run")
        run = Path(r.uri)
        curves = {
            runs.CURVES[tag]: runs.svg_path(points)
            for tag, points in runs.curves(run).items()
            if points
        }
        return templates.TemplateResponse(
            request,
            "run.html",
            {
                "i": i,
                "root": r,
                "curves": curves,
                "checkpoints": runs.checkpoints(run),
                "previews": runs.previews(run),
                "evaluation": runs.evaluation(run),
            },
        )

    async def run_file(request: Request) -> Response:
        _, r = root(request, "run")
        rel = request.path_params["path"]
        base = Path(r.uri).resolve()
        path = (base / rel).resolve()
        # The resolved path (symlinks followed) must stay inside the run folder.
        if not safe_name(rel) or not path.is_relative_to(base) or not path.is_file():
            raise HTTPException(404, "no such file")
        kind = MEDIA.get(path.suffix.lower())
        if kind is None:
            raise HTTPException(404, "not a media file")
        size = path.stat().st_size

        def read(a: int, n: int) -> bytes:
            with path.open("rb") as f:
                f.seek(a)
                return f.read(n)

        return range_response(request, size, read, kind)

    async def caption_set(request: Request) -> Response:
        i, r = root(request, "captions", "latents")
        items = sorted(r.captions.items())[:500]
        return templates.TemplateResponse(
            request, "set.html", {"i": i, "root": r, "items": items, "total": len(r.captions)}
        )

    return Starlette(
        routes=[
            Route("/", index),
            Route("/d/{i:int}", dataset),
            Route("/d/{i:int}/clip/{key}", clip),
            Route("/m/{i:int}/{key}.mp4", media),
            Route("/r/{i:int}", run_page),
            Route("/r/{i:int}/file/{path:path}", run_file),
            Route("/s/{i:int}", caption_set),
            Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
        ]
    )
