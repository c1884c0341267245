"""The tile routes of the app's own server: Deep Zoom descriptors and tiles of the slides a page offered,
on the same origin and port as the pages (no second port, no CORS).

    GET /tiles/{token}.dzi                              the DZI XML
    GET /tiles/{token}_files/{level}/{col}_{row}.jpeg   a tile (.png too)
    GET /tiles/maps/{token}.png                         a tumour map, one grey pixel per cell (`map_png`)
    GET /viewer/openseadragon.min.js                    the viewer's bundle (app/components/static, pinned)

A token names a slide the page offered (`SERVER.offer(path)`), never a path: anything else is a 404. Tiles
are made in at most two threads at a time, so a viewer streaming tiles never takes every thread from the
pages on a 2-core machine. Responses may be cached for a day: a token changes when its slide does.
"""

from pathlib import Path

from anyio import CapacityLimiter, to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pcam_core.slides.tiles import FORMATS, TileServer

SERVER = TileServer()
CACHE = {"Cache-Control": "public, max-age=86400, immutable"}
_THREADS: CapacityLimiter | None = None


def _threads() -> CapacityLimiter:
    global _THREADS  # made in the server's event loop, on the first request
    if _THREADS is None:
        _THREADS = CapacityLimiter(2)
    return _THREADS


async def dzi(request: Request) -> Response:
    try:
        xml = await to_thread.run_sync(SERVER.dzi, request.path_params["token"], limiter=_threads())
    except KeyError:
        return Response("no such slide", status_code=404)
    return Response(xml, media_type="application/xml", headers=CACHE)


async def tile(request: Request) -> Response:
    params = request.path_params
    if params["fmt"] not in FORMATS:
        return Response("no such format", status_code=404)
    try:
        data = await to_thread.run_sync(SERVER.tile, params["token"], params["level"], params["col"],
                                        params["row"], params["fmt"], limiter=_threads())
    except (KeyError, ValueError):
        return Response("no such tile", status_code=404)
    return Response(data, media_type=FORMATS[params["fmt"]], headers=CACHE)


async def tumour_map(request: Request) -> Response:
    try:
        data = SERVER.map(request.path_params["token"])
    except KeyError:
        return Response("no such map", status_code=404)
    return Response(data, media_type="image/png", headers=CACHE)


def offer(slide_path: Path, prob) -> tuple[str, str]:
    """The URLs of a slide's DZI and of its map (P per cell) for a viewer on a page; ValueError when the
    slide cannot be opened for tiles."""
    return f"/tiles/{SERVER.offer(slide_path)}.dzi", f"/tiles/maps/{SERVER.offer_map(prob)}.png"


def unreadable(slide_path: Path) -> int:
    """How many tiles of the slide could not be read so far (served grey)."""
    return SERVER.failed(SERVER.offer(slide_path))


BUNDLE = Path(__file__).resolve().parents[1] / "components" / "static"
ROUTES = [Route("/tiles/maps/{token}.png", tumour_map),
          Route("/tiles/{token}.dzi", dzi),
          Route("/tiles/{token}_files/{level:int}/{col:int}_{row:int}.{fmt}", tile),
          Mount("/viewer", StaticFiles(directory=BUNDLE), name="viewer")]
