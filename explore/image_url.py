"""image_url queries: the scoring worker's downloader, run on the serving event loop.

The image is fetched by `gpu_workers.downloader.Fetcher` (the same SSRF guard, robots.txt and
X-Robots-Tag checks and byte limits as the worker's), as a coroutine on uvicorn's own loop: a slow
image host holds no thread, so health checks, embedding queries and the CPU work of other image
queries keep their thread pool. At most `max_concurrent` fetches run at once; more wait their turn.

What a user is told never helps to map a network: the address guard's refusals and bad URLs are
named, every other failure (closed port, 404, timeout, not an image, too large) reads the same and
never carries a byte of what the server sent.
"""

from __future__ import annotations

import asyncio

from altlake.schemas import STATUS_OK
from explore.errors import QueryError

NOT_FETCHED = "image_url could not be fetched as an image"


class ImageUrlFetcher:
    """One aiohttp session per serving process, made on first use inside the running loop."""

    def __init__(self, download_config, max_concurrent: int = 32) -> None:
        self.config = download_config  # a gpu_workers.downloader.DownloadConfig
        self.max_concurrent = max_concurrent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fetcher = None
        self._slots: asyncio.Semaphore | None = None

    async def fetch(self, url: str) -> bytes:
        from gpu_workers.downloader import Fetcher

        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # uvicorn keeps one loop; a test client may start one per request
            self._loop, self._fetcher, self._slots = loop, Fetcher(self.config), asyncio.Semaphore(self.max_concurrent)
        assert self._fetcher is not None and self._slots is not None
        async with self._slots:
            result = await self._fetcher.fetch("query", url)
        if result.status == STATUS_OK and result.body is not None:
            return result.body
        raise QueryError(400, public_reason(result.status))

    async def close(self) -> None:
        if self._fetcher is not None and self._loop is asyncio.get_running_loop():
            await self._fetcher.close()
        self._loop = self._fetcher = self._slots = None


def public_reason(status: str) -> str:
    """The message for a failed fetch: which rule refused it, or one text for every network outcome."""
    if status == "blocked_address":
        return "image_url refused: its host is not a public address (SSRF guard); ask the operator to allow-list it"
    if status == "invalid_url":
        return "image_url is not an http(s) URL with a host"
    if status in ("robots_disallowed", "opted_out"):
        return "image_url refused: the image's site opts out of automated use"
    return NOT_FETCHED
