"""Real servers on 127.0.0.1 for the sharing tests: a static HTTP server over a directory, and moto's S3 server."""

from __future__ import annotations

import functools
import http.server
import logging
import os
import threading
from pathlib import Path


class _LoggingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files read-only and records every request (method, path) so tests can assert nothing was written."""

    requests: list[tuple[str, str]]

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def _record(self) -> None:
        self.server.requests.append((self.command, self.path))  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._record()
        super().do_GET()

    def do_HEAD(self) -> None:
        self._record()
        super().do_HEAD()

    def _refuse(self) -> None:
        self._record()
        self.send_error(405, "read-only server")

    do_PUT = do_POST = do_DELETE = do_PATCH = _refuse


class StaticHTTPServer:
    """`with StaticHTTPServer(directory) as srv:` serves `directory` at `srv.url` (port chosen by the OS)."""

    def __init__(self, directory: Path):
        handler = functools.partial(_LoggingHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.requests = []  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self.httpd.requests  # type: ignore[attr-defined]

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] not in ("GET", "HEAD")]

    def __enter__(self) -> StaticHTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def fake_aws_env() -> dict[str, str]:
    """Credentials moto accepts; never real ones (tests must not reach AWS)."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """moto's S3-compatible server in a thread on 127.0.0.1; `endpoint_url` for s3fs/boto3."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def __enter__(self) -> S3Server:
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint_url, key="testing", secret="testing",
                                 skip_instance_cache=True)

    def upload(self, directory: Path, bucket: str, prefix: str) -> str:
        fs = self.filesystem()
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        for root, _, files in os.walk(directory):
            for f in files:
                rel = Path(root, f).relative_to(directory).as_posix()
                fs.pipe_file(f"{bucket}/{prefix}/{rel}", Path(root, f).read_bytes())
        return f"s3://{bucket}/{prefix}"
