"""A model/dataset hub on loopback: the few endpoints huggingface_hub's snapshot_download uses, serving local
directories, with scripted failures (429, 500, a reply slower than the client's timeout) before the real answers."""

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """repos: {'org/name': directory}. failures: a list consumed one per request: 429, 500 or 'timeout'
    (the reply waits `stall` seconds). Every request is recorded as (method, path, status)."""

    def __init__(self, repos, failures=(), stall=3.0, port=0):
        self.repos = {name: Path(d) for name, d in repos.items()}
        self.failures = list(failures)
        self.stall = stall
        self.requests = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.answer(self, body=False)

            def do_GET(self):
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def statuses(self):
        return [status for _, _, status in self.requests]

    def answer(self, handler, body):
        path = handler.path.split("?")[0]
        if path.startswith("/api/") and not path.startswith(("/api/models/", "/api/datasets/")):  # e.g. telemetry
            self.send(handler, 404, b"{}", body)
            return
        with self.lock:
            failure = self.failures.pop(0) if self.failures else None
        if failure == "timeout":
            self.requests.append((handler.command, handler.path, "timeout"))
            time.sleep(self.stall)
            return
        if failure is not None:
            self.requests.append((handler.command, handler.path, failure))
            self.send(handler, failure, json.dumps({"error": "scripted failure"}).encode(), body)
            return
        status, payload, headers = self.route(path, handler.path.partition("?")[2])
        self.requests.append((handler.command, handler.path, status))
        self.send(handler, status, payload, body, headers)

    @staticmethod
    def tree(root, folder, recursive):
        """The hub's listing of `folder`: its files and folders, or with `recursive` everything below it."""
        base = root / folder
        entries = sorted(base.rglob("*") if recursive else base.iterdir()) if base.is_dir() else []
        return [{"type": "directory", "path": str(p.relative_to(root)), "oid": SHA} if p.is_dir() else
                {"type": "file", "path": str(p.relative_to(root)), "size": p.stat().st_size, "oid": SHA}
                for p in entries]

    def route(self, path, query=""):
        parts = path.strip("/").split("/")
        if parts[0] == "api" and parts[1] in ("models", "datasets"):  # /api/models/org/name[/revision/rev]
            name = "/".join(parts[2:4])
            if name not in self.repos:
                return 404, json.dumps({"error": "Repository not found"}).encode(), {"X-Error-Code": "RepoNotFound"}
            root = self.repos[name]
            files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
            if len(parts) > 4 and parts[4] == "tree":  # /api/models/org/name/tree/rev[/folder][?recursive=true]
                info = self.tree(root, "/".join(parts[6:]), "recursive=true" in query)
            else:
                info = {"id": name, "sha": SHA, "siblings": [{"rfilename": f} for f in files], "private": False}
            return 200, json.dumps(info).encode(), {"Content-Type": "application/json"}
        if parts[0] == "datasets":
            parts = parts[1:]
        name, rest = "/".join(parts[:2]), parts[2:]  # org/name/resolve/rev/file
        path = self.repos.get(name, Path("/nonexistent")) / "/".join(rest[2:])
        if len(rest) < 3 or rest[0] != "resolve" or not path.is_file():
            return 404, b"not found", {"X-Error-Code": "EntryNotFound"}
        data = path.read_bytes()
        etag = hashlib.sha256(data).hexdigest()
        return 200, data, {"ETag": f'"{etag}"', "X-Repo-Commit": SHA, "Content-Type": "application/octet-stream"}

    @staticmethod
    def send(handler, status, payload, body, headers=None):
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if body:
            handler.wfile.write(payload)
