"""The console's static files (the busd/ui package data), served under /ui.

Read once at start-up, so a request costs a dict lookup. Every answer carries a strong
ETag (a hash of the file) with `Cache-Control: no-cache`: browsers keep the files and
revalidate them with one small 304. The Content-Security-Policy allows scripts, styles,
images and connections from this origin only, no inline code, no framing.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from busd.server.http import error_response, not_modified, response

PREFIX = b"/ui"
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}
POLICY = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
          b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = (b"Content-Security-Policy: " + POLICY + b"\r\n"
                    b"X-Content-Type-Options: nosniff\r\n"
                    b"Referrer-Policy: no-referrer\r\n"
                    b"Cache-Control: no-cache\r\n")


class _File:
    __slots__ = ("body", "etag", "content_type")

    def __init__(self, body: bytes, content_type: bytes) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode()


def _etag_matches(header: bytes, etag: bytes) -> bool:
    """If-None-Match: `*` or a list of tags; compared weakly, as RFC 9110 §13.1.2 says."""
    if header.strip() == b"*":
        return True
    return any(tag.strip().removeprefix(b"W/") == etag for tag in header.split(b","))


class Console:
    """`/ui` (the page) and `/ui/<file>`; any other path under /ui is a 404."""

    def __init__(self) -> None:
        self.files: dict[bytes, _File] = {}
        for entry in resources.files("busd.ui").iterdir():
            content_type = CONTENT_TYPES.get("." + entry.name.rpartition(".")[2])
            if content_type is not None and entry.is_file():
                self.files[PREFIX + b"/" + entry.name.encode()] = _File(entry.read_bytes(),
                                                                       content_type)
        page = self.files[PREFIX + b"/index.html"]
        self.files[PREFIX] = self.files[PREFIX + b"/"] = page

    @staticmethod
    def serves(path: bytes) -> bool:
        return path == PREFIX or path.startswith(PREFIX + b"/")

    def answer(self, path: bytes, if_none_match: bytes | None, close: bool) -> bytes:
        """The answer to a GET (or HEAD) of `path`."""
        found = self.files.get(path)
        if found is None:
            return error_response(404, f"no such console file: "
                                       f"{path.decode(errors='replace')}", close)
        headers = b"ETag: " + found.etag + b"\r\n" + SECURITY_HEADERS
        if if_none_match is not None and _etag_matches(if_none_match, found.etag):
            return not_modified(headers, close)
        return response(200, found.body, headers=headers, content_type=found.content_type,
                        close=close)
