"""A loopback HTTP server with byte ranges, standing in for a web server or an S3 endpoint in tests.

GDAL's ``/vsicurl/`` (``https://`` inputs) and ``/vsis3/`` (``s3://`` inputs, path-style
addressing with ``AWS_S3_ENDPOINT`` pointing here) read with HTTP ``Range`` requests, which
``http.server`` alone does not answer. Requests are logged per path, so a test can show that a
run reads a mosaic partially rather than downloading it.

The server runs in its own process: GDAL holds the GIL while it opens a dataset, so a server
thread in the reading process would never answer (a deadlock, not a slow test).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import http.server
import os
import re
from pathlib import Path


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    request_log: str  # set per server: one requested path per line

    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        path = self.translate_path(self.path.split("?", 1)[0])
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        with open(self.request_log, "a") as log:
            log.write(self.path.split("?", 1)[0] + "\n")
        size = os.path.getsize(path)
        f = open(path, "rb")
        m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            f.seek(start)
            self._left = max(0, end - start + 1)
        else:
            self.send_response(200)
            self._left = size
        self.send_header("Content-Length", str(self._left))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(os.path.getmtime(path))))
        self.end_headers()
        return f

    def copyfile(self, source, outputfile):
        outputfile.write(source.read(self._left))


class RequestCounts:
    """Requests per path so far (read from the server's log)."""

    def __init__(self, log: Path):
        self.log = log

    def __getitem__(self, path: str) -> int:
        return self.counts()[path]

    def counts(self) -> collections.Counter:
        return (
            collections.Counter(self.log.read_text().splitlines())
            if self.log.exists()
            else collections.Counter()
        )

    def clear(self) -> None:
        self.log.write_text("")


def _serve_forever(root: str, request_log: str, ready) -> None:
    handler = functools.partial(
        type("Handler", (_RangeHandler,), {"request_log": request_log}), directory=root
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ready.send(server.server_address[1])
    server.serve_forever()


@contextlib.contextmanager
def serve(root: Path | str):
    """Serve ``root`` on 127.0.0.1 (a free port) from a child process; yields ``(base_url, counts)``."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    log = Path(root) / ".requests.log"
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_serve_forever, args=(str(root), str(log), send), daemon=True)
    proc.start()
    try:
        if not receive.poll(60):
            raise RuntimeError("the test HTTP server did not start")
        yield f"http://127.0.0.1:{receive.recv()}", RequestCounts(log)
    finally:
        proc.terminate()
        proc.join(10)


def s3_env(base_url: str) -> dict:
    """GDAL settings that send ``s3://`` / ``/vsis3/`` reads to the server at ``base_url``, unsigned."""
    return {
        "AWS_S3_ENDPOINT": base_url.split("://", 1)[1],
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_NO_SIGN_REQUEST": "YES",
    }
