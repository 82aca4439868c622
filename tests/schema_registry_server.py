"""A small HTTP server speaking the Schema Registry endpoints confluent-kafka's client calls.

No Confluent-compatible registry server can be installed here (none on PyPI,
npm or Debian), so the client paths are tested against this one. It answers
with the response shapes of Confluent's REST API (docs.confluent.io, "Schema
Registry API Reference"; checked against confluent-kafka's client, which reads
`id`, `schema`, `schemaType`, `subject`, `version`, `is_compatible`,
`error_code` and `message`):

  POST /subjects/{s}/versions        -> {"id": 100001}; 409 error_code 409 if not BACKWARD compatible
  POST /subjects/{s}                 -> {"subject", "version", "id", "schema"}; 404 40401 / 40403
  GET  /schemas/ids/{id}             -> {"schema": "..."}; 404 {"error_code": 40403, "message": "Schema 7 not found"}
  GET  /subjects/{s}/versions/latest -> {"subject", "version", "id", "schema"}; 404 40401
  GET  /subjects                     -> ["interactions-value"]
  POST /compatibility/subjects/{s}/versions/latest?verbose=true -> {"is_compatible": bool, "messages": [...]}
  GET  /config/{s}?defaultToGlobal=true -> {"compatibilityLevel": "BACKWARD"}

Ids start at 100001 so a test cannot pass by confusing them with the file registry's id 1.
With `basic_auth` set, requests without it get 401 {"error_code": 401, "message": "Unauthorized"}.
Compatibility (BACKWARD: the new schema reads data of the latest one) uses Avro's own checker.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from features.codec import canonical_form, compatibility_problem

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass
class RegistryState:
    schemas: dict[int, str] = field(default_factory=dict)  # id -> schema text
    subjects: dict[str, list[int]] = field(default_factory=dict)  # subject -> ids by version
    next_id: int = 100001
    requests: list[str] = field(default_factory=list)
    fail_with: int | None = None  # answer every request with this HTTP status (outage)

    def register(self, subject: str, text: str) -> tuple[int, str | None]:
        form = canonical_form(json.loads(text))
        for schema_id in self.subjects.get(subject, []):
            if canonical_form(json.loads(self.schemas[schema_id])) == form:
                return schema_id, None
        versions = self.subjects.get(subject, [])
        if versions:
            problem = compatibility_problem(json.loads(self.schemas[versions[-1]]), json.loads(text))
            if problem is not None:
                return 0, problem
        existing = next(
            (i for i, t in self.schemas.items() if canonical_form(json.loads(t)) == form), None
        )  # the same schema under another subject keeps its id
        schema_id = existing if existing is not None else self.next_id
        if existing is None:
            self.schemas[schema_id] = text
            self.next_id += 1
        self.subjects.setdefault(subject, []).append(schema_id)
        return schema_id, None


class FakeSchemaRegistry:
    """Runs the server on a free port of 127.0.0.1 in a thread; `url` is its base URL."""

    def __init__(self, basic_auth: str | None = None) -> None:
        self.state = RegistryState()
        self._basic_auth = basic_auth
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeSchemaRegistry:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        state = self.state
        expected_auth = "Basic " + base64.b64encode(self._basic_auth.encode()).decode() if self._basic_auth else None

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, code: int, message: str) -> None:
                self._send(status, {"error_code": code, "message": message})

            def _guard(self) -> bool:
                state.requests.append(f"{self.command} {self.path}")
                if state.fail_with is not None:
                    self._error(state.fail_with, 50001, "Error in the backend data store")
                    return False
                if expected_auth and self.headers.get("Authorization") != expected_auth:
                    self._error(401, 401, "Unauthorized")
                    return False
                return True

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                body: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
                return body

            def do_GET(self) -> None:
                if not self._guard():
                    return
                parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
                if parts[:2] == ["schemas", "ids"] and len(parts) == 3:
                    schema_id = int(parts[2])
                    if schema_id not in state.schemas:
                        return self._error(404, 40403, f"Schema {schema_id} not found")
                    return self._send(200, {"schema": state.schemas[schema_id]})
                if parts == ["subjects"]:
                    return self._send(200, sorted(state.subjects))
                if len(parts) == 4 and parts[0] == "subjects" and parts[2:] == ["versions", "latest"]:
                    versions = state.subjects.get(parts[1])
                    if not versions:
                        return self._error(404, 40401, f"Subject '{parts[1]}' not found.")
                    schema_id = versions[-1]
                    body = {"subject": parts[1], "version": len(versions), "id": schema_id}
                    return self._send(200, {**body, "schema": state.schemas[schema_id]})
                if parts[0] == "config":
                    return self._send(200, {"compatibilityLevel": "BACKWARD"})
                return self._error(404, 404, "HTTP 404 Not Found")

            def do_POST(self) -> None:
                if not self._guard():
                    return
                parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
                body = self._body()
                if body.get("schemaType", "AVRO") != "AVRO":
                    return self._error(422, 42201, "Only Avro schemas are served by this test registry")
                text = body["schema"]
                if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
                    schema_id, problem = state.register(parts[1], text)
                    if problem is not None:
                        return self._error(
                            409,
                            409,
                            "Schema being registered is incompatible with an earlier schema for subject "
                            f'"{parts[1]}", details: [{problem}]',
                        )
                    return self._send(200, {"id": schema_id})
                if len(parts) == 2 and parts[0] == "subjects":
                    versions = state.subjects.get(parts[1])
                    if not versions:
                        return self._error(404, 40401, f"Subject '{parts[1]}' not found.")
                    form = canonical_form(json.loads(text))
                    for version, schema_id in enumerate(versions, start=1):
                        if canonical_form(json.loads(state.schemas[schema_id])) == form:
                            found = {"subject": parts[1], "version": version, "id": schema_id}
                            return self._send(200, {**found, "schema": state.schemas[schema_id]})
                    return self._error(404, 40403, "Schema not found")
                if parts[:2] == ["compatibility", "subjects"] and len(parts) == 5:
                    versions = state.subjects.get(parts[2])
                    if not versions:
                        return self._error(404, 40401, f"Subject '{parts[2]}' not found.")
                    problem = compatibility_problem(json.loads(state.schemas[versions[-1]]), json.loads(text))
                    return self._send(200, {"is_compatible": problem is None, "messages": [problem] if problem else []})
                return self._error(404, 404, "HTTP 404 Not Found")

        return Handler
