"""A local stand-in for the Hugging Face Hub: just the HTTP endpoints that huggingface_hub's
create_repo, upload_folder (create_commit) and snapshot_download call, over repositories held
in memory. Tests point HF_ENDPOINT (huggingface_hub.constants.ENDPOINT) at it; nothing leaves
the machine. Every upload is answered "regular" (content inline in the commit, base64), so no
LFS or Xet transfer is needed.

Endpoints (read from huggingface_hub 2.4's hf_api.py, _commit_api.py, file_download.py):
  POST /api/repos/create                                  {name, organization, private, type}
  POST /api/{type}s/{repo}/preupload/{rev}                upload mode of each file
  POST /api/{type}s/{repo}/commit/{rev}                   ndjson: header, then file and deletedFile entries
  POST /api/validate-yaml                                 a README.md's front matter (parsed with yaml)
  GET  /api/{type}s/{repo}[/revision/{rev}]               repo_info (sha, siblings)
  GET  /api/{type}s/{repo}/auth-check/write               may the token write there (HfApi.auth_check(write=True))
  GET  /api/whoami-v2                                     the token's user, orgs and role
  GET  /api/{type}s/{repo}/tree/{rev}                     list_repo_tree (recursive; upload_folder's
                                                          delete_patterns lists the repo with it)
  HEAD/GET /[{type}s/]{repo}/resolve/{rev}/{path}         file metadata and bytes

Who may write, as on the Hub: `hub.tokens` maps a token to its user, orgs and role (the tests'
HF_TOKEN, hf_test, is user `me`, role write). A token writes (creates, preuploads, commits) in its
user's and orgs' namespaces, and to a repo naming its user in `writers` (a collaborator), unless
its role is read. A create elsewhere is 403, as is a preupload or commit; a create of a repo that
exists is 409 only for a token that may create there (the Hub checks the namespace first).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)
    writers: set[str] = field(default_factory=set)
    """Users, beside the namespace's, who may write (collaborators)."""

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)/(preupload|commit|revision|tree|auth-check)/([^/]+)(?:/.*)?$")
INFO = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)$")
RESOLVE = re.compile(r"^/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class FakeHub:
    """`with FakeHub() as hub:` serves on 127.0.0.1; `hub.url` is the endpoint, `hub.repos`
    maps (kind, repo_id) -> Repo, kind "model" or "dataset"."""

    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[str] = []
        self.tokens: dict[str, dict] = {"hf_test": {"name": "me", "orgs": [], "role": "write"}}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                hub.requests.append(f"POST {self.path}")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urlparse(self.path).path
                refusal = hub.write_refusal(self, path, body)
                if refusal:
                    return hub.send(self, *refusal)
                hub.post(self, path, body)

            def do_GET(self):
                hub.requests.append(f"GET {self.path}")
                path = urlparse(self.path).path
                if path == "/api/whoami-v2":
                    return hub.whoami(self)
                if path.endswith("/auth-check/write"):
                    return hub.auth_check(self, path)
                hub.get(self, path, head=False)

            def do_HEAD(self):
                hub.requests.append(f"HEAD {self.path}")
                hub.get(self, urlparse(self.path).path, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- who may write ---------------------------------------------------------------------------

    def identity(self, handler) -> dict | None:
        """The user of the request's token (Authorization: Bearer TOKEN), or None."""
        auth = handler.headers.get("Authorization") or ""
        return self.tokens.get(auth.removeprefix("Bearer ").strip()) if auth.startswith("Bearer ") else None

    def may_create(self, user: dict | None, repo_id: str) -> bool:
        return user is not None and user["role"] != "read" and repo_id.split("/")[0] in (user["name"], *user["orgs"])

    def may_write(self, user: dict | None, kind: str, repo_id: str) -> bool:
        repo = self.repos.get((kind, repo_id))
        return self.may_create(user, repo_id) or (repo is not None and user is not None and user["role"] != "read" and user["name"] in repo.writers)

    def write_refusal(self, handler, path: str, body: bytes) -> tuple[int, dict] | None:
        """The Hub's 401/403 for a create, preupload or commit this token may not make, else None."""
        user = self.identity(handler)
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            if not self.may_create(user, repo_id):
                return (
                    (401, {"error": "Invalid credentials"})
                    if user is None
                    else (403, {"error": f'You don\'t have the rights to create a repo under the namespace "{repo_id.split("/")[0]}"'})
                )
            return None
        m = API.match(path)
        if m and m.group(3) in ("preupload", "commit") and not self.may_write(user, m.group(1)[:-1], unquote(m.group(2))):
            return 403, {"error": f"You don't have write access to {unquote(m.group(2))}"}
        return None

    def whoami(self, handler) -> None:
        user = self.identity(handler)
        if user is None:
            return self.send(handler, 401, {"error": "Invalid credentials in Authorization header"})
        orgs = [{"type": "org", "name": o, "roleInOrg": "write"} for o in user["orgs"]]
        access = {"displayName": "test", "role": user["role"]}
        return self.send(handler, 200, {"type": "user", "name": user["name"], "orgs": orgs, "auth": {"type": "access_token", "accessToken": access}})

    def auth_check(self, handler, path: str) -> None:
        m = API.match(path)
        kind, repo_id = m.group(1)[:-1], unquote(m.group(2))
        if (kind, repo_id) not in self.repos:
            return self.send(handler, 404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"})
        if not self.may_write(self.identity(handler), kind, repo_id):
            return self.send(handler, 403, {"error": f"You don't have write access to {repo_id}"})
        return self.send(handler, 200, {})

    # ---- answers -------------------------------------------------------------------------------

    @staticmethod
    def send(handler, status: int, payload=None, headers: dict | None = None, body: bytes | None = None, head: bool = False) -> None:
        data = body if body is not None else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream" if body is not None else "application/json")
        handler.send_header("Content-Length", str(len(data)))
        if status in (401, 403) and isinstance(payload, dict) and "error" in payload:
            headers = {"X-Error-Message": payload["error"], **(headers or {})}  # the Hub says why in both
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        if not head:
            handler.wfile.write(data)

    def post(self, handler, path: str, body: bytes) -> None:
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            kind = req.get("type") or "model"
            if (kind, repo_id) in self.repos:
                return self.send(handler, 409, {"error": "You already created this repo", "url": f"{self.url}/{repo_id}"})
            self.repos[(kind, repo_id)] = Repo(private=bool(req.get("private")) or req.get("visibility") == "private")
            return self.send(handler, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":  # a commit with a README.md: its front matter must parse to a mapping
            return self.send(handler, *self.validate_card(json.loads(body)["content"]))
        m = API.match(path)
        if not m or (m.group(1)[:-1], unquote(m.group(2))) not in self.repos:
            return self.send(handler, 404, {"error": f"not found: {path}"})
        repo = self.repos[(m.group(1)[:-1], unquote(m.group(2)))]
        if m.group(3) == "preupload":
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in json.loads(body)["files"]]
            return self.send(handler, 200, {"files": files})
        if m.group(3) == "commit":
            for line in body.splitlines():
                entry = json.loads(line)
                if entry["key"] == "file":
                    repo.files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                elif entry["key"] == "deletedFile":
                    repo.files.pop(entry["value"]["path"], None)
            repo.commits.append(hashlib.sha1(repr(sorted(repo.files.items())).encode()).hexdigest())
            return self.send(handler, 200, {"commitUrl": f"{self.url}/{m.group(2)}/commit/{repo.sha}", "commitOid": repo.sha})
        return self.send(handler, 404, {"error": f"not found: {path}"})

    @staticmethod
    def validate_card(content: str) -> tuple[int, dict]:
        import yaml

        if not content.startswith("---\n"):
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        try:
            meta = yaml.safe_load(content.split("---\n", 2)[1])
        except (yaml.YAMLError, IndexError) as exc:
            return 400, {"errors": [{"message": f"invalid YAML: {exc}"}]}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata is not a mapping"}]}
        return 200, {"errors": [], "warnings": []}

    def get(self, handler, path: str, head: bool) -> None:
        info = INFO.match(path)
        if info:  # repo_info without a revision: as /revision/main
            path = f"{path}/revision/main"
        m = API.match(path)
        if m and (m.group(1)[:-1], unquote(m.group(2))) in self.repos:
            repo_id, repo = unquote(m.group(2)), self.repos[(m.group(1)[:-1], unquote(m.group(2)))]
            if m.group(3) == "revision":
                siblings = [{"rfilename": p} for p in sorted(repo.files)]
                return self.send(handler, 200, {"id": repo_id, "sha": repo.sha, "private": repo.private, "siblings": siblings}, head=head)
            if m.group(3) == "tree":
                tree = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()} for p, b in sorted(repo.files.items())]
                return self.send(handler, 200, tree, head=head)
        r = RESOLVE.match(path)
        if r:
            kind = "dataset" if r.group(1) else "model"
            repo = self.repos.get((kind, unquote(r.group(2))))
            name = unquote(r.group(4))
            if repo is not None and name in repo.files:
                data = repo.files[name]
                headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
                return self.send(handler, 200, headers=headers, body=data, head=head)
            return self.send(handler, 404, {"error": "Entry not found"}, headers={"X-Error-Code": "EntryNotFound"}, head=head)
        return self.send(handler, 404, {"error": f"not found: {path}"}, head=head)


def point_at(monkeypatch, url: str, tmp_path: Path) -> None:
    """huggingface_hub pointed at `url` as HF_ENDPOINT would (both constants are computed from
    HF_ENDPOINT when huggingface_hub is imported), with a token and an empty local HF cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN", "hf_test")
