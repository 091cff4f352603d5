"""The backend API's OpenAPI document, served at ``/api/openapi.json``.

Imports the task model's defaults only. Data, not code: kept apart from ``server.api`` so the
handlers read without 350 lines of schema between them; a test checks the two agree.
"""

from __future__ import annotations

from typing import Any

from roomcast.tasks.poller import DEFAULT_DONE, DEFAULT_FAILED
from roomcast.tasks.store import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from roomcast.types import MAX_OFFSET

__all__ = ["OPENAPI"]


def _error_responses(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}


_POSITION = {
    "type": "object",
    "required": ["room", "epoch", "offset"],
    "properties": {"room": {"type": "string"}, "epoch": {"type": "string"}, "offset": {"type": "integer"}},
}
_JSON = "application/json"
_TASK_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_PATH = {"type": "string", "description": "a dotted path into the answer, e.g. data.percent (a digit indexes a list)"}
_POLL_SPEC = {
    "type": "object",
    "description": "Follow an upstream job: GET url every interval; map its JSON answer to the task; done/failed "
    "status values end it. Transient errors (no answer, 5xx, 408, 429) are retried; more than 'retries' in a row, "
    "or any other non-2xx or non-JSON answer, fail the task with the reason; past 'timeout' it is timed_out. "
    "Progress is scaled by 100/progress_scale and clamped to 0-100. See roomcast.tasks.poller.",
    "required": ["url"],
    "additionalProperties": False,
    "properties": {
        "url": {
            "type": "string",
            "format": "uri",
            "description": "http(s), no credentials (use headers); "
            "under a --poll-allow prefix (by default any with an API key, none without)",
        },
        "interval": {"type": "number", "exclusiveMinimum": 0, "default": 2},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "default": 3600, "description": "seconds in all"},
        "request_timeout": {"type": "number", "exclusiveMinimum": 0, "default": 10},
        "retries": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 3},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "fields": {
            "type": "object",
            "additionalProperties": False,
            "properties": {name: _PATH for name in ("progress", "step", "message", "status", "result", "error")},
        },
        "progress_scale": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 100,
            "description": "the upstream value meaning 100 % (1 for a fraction)",
        },
        "done": {"type": "array", "items": {}, "default": list(DEFAULT_DONE)},
        "failed": {"type": "array", "items": {}, "default": list(DEFAULT_FAILED)},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "roomcast backend API",
        "version": "1",
        "description": "Publish to rooms and inspect them from application backends. Every route but this "
        "document needs the API key; with none configured, loopback clients only, directly (no proxy "
        "headers, a loopback Host, no foreign Origin). POST bodies are application/json.",
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            },
            "Position": _POSITION,
            "PollSpec": _POLL_SPEC,
        },
        "responses": {
            f"E{status}": {"description": text, "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for status, text in [
                (400, "Bad request"),
                (401, "Missing or invalid API key"),
                (403, "No API key configured, and not a direct local client"),
                (404, "No such task"),
                (405, "Method not allowed"),
                (409, "The task's state forbids this change"),
                (413, "Body too large"),
                (415, "The body is not Content-Type: application/json"),
                (503, "The server is shutting down: nothing was done; retry"),
            ]
        },
    },
    "security": [{"bearer": []}, {"apiKey": []}],
    "paths": {
        "/api/publish": {
            "post": {
                "summary": "Publish an event to a room",
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["room", "event"],
                                "properties": {"room": {"type": "string"}, "event": {"type": "string"}, "data": {}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Its position in the room's stream",
                        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Position"}}},
                    },
                    **_error_responses(400, 401, 403, 413, 415, 503),
                },
            }
        },
        "/api/broadcast": {
            "post": {
                "summary": "Publish one event to several rooms",
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["rooms", "event"],
                                "properties": {
                                    "rooms": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                                    "event": {"type": "string"},
                                    "data": {},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "One position per room",
                        "content": {
                            _JSON: {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "results": {"type": "array", "items": {"$ref": "#/components/schemas/Position"}}
                                    },
                                }
                            }
                        },
                    },
                    **_error_responses(400, 401, 403, 413, 415, 503),
                },
            }
        },
        "/api/rooms": {
            "get": {
                "summary": "Rooms with members in this process, with connection and user counts",
                "responses": {
                    "200": {
                        "description": "The rooms",
                        "content": {
                            _JSON: {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "rooms": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "properties": {
                                                    "room": {"type": "string"},
                                                    "connections": {"type": "integer"},
                                                    "users": {"type": "integer"},
                                                },
                                            },
                                        }
                                    },
                                }
                            }
                        },
                    },
                    **_error_responses(401, 403),
                },
            }
        },
        "/api/history": {
            "get": {
                "summary": "A room's publications after an offset, while history holds them",
                "parameters": [
                    {"name": "room", "in": "query", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "since",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                    },
                    {"name": "epoch", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "complete is false when history no longer holds them all",
                        "content": {_JSON: {"schema": {"type": "object"}}},
                    },
                    **_error_responses(400, 401, 403),
                },
            }
        },
        "/api/presence": {
            "get": {
                "summary": "Connections and distinct users in a room",
                "parameters": [{"name": "room", "in": "query", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {
                        "description": "Presence",
                        "content": {
                            _JSON: {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "room": {"type": "string"},
                                        "connections": {"type": "integer"},
                                        "users": {"type": "array", "items": {"type": "string"}},
                                    },
                                }
                            }
                        },
                    },
                    **_error_responses(400, 401, 403),
                },
            }
        },
        "/api/tasks": {
            "post": {
                "summary": "Create a task (pending) for a worker to report on, or (running) following an "
                "upstream job's status URL when 'poll' is given",
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["kind"],
                                "properties": {
                                    "kind": {"type": "string"},
                                    "id": {
                                        "type": "string",
                                        "description": "the caller's own id (a Celery task id); 409 if taken",
                                    },
                                    "title": {"type": "string"},
                                    "owner": {"type": "string"},
                                    "deadline": {"type": "number"},
                                    "metadata": {"type": "object"},
                                    "poll": {"$ref": "#/components/schemas/PollSpec"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": {"description": "The task, with its id"},
                    **_error_responses(400, 401, 403, 413, 415, 503),
                    "409": {"$ref": "#/components/responses/E409"},
                },
            },
            "get": {
                "summary": "Tasks, newest first, filtered by status (comma-separated), kind, owner",
                "parameters": [
                    *(
                        {"name": n, "in": "query", "schema": {"type": "string"}}
                        for n in ("status", "kind", "owner", "cursor")
                    ),
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE_SIZE,
                            "default": DEFAULT_PAGE_SIZE,
                        },
                    },
                ],
                "responses": {"200": {"description": "{tasks, next_cursor}"}, **_error_responses(400, 401, 403)},
            },
        },
        "/api/tasks/{id}": {
            "get": {
                "summary": "One task",
                "parameters": [_TASK_ID],
                "responses": {"200": {"description": "The task"}, "404": {"$ref": "#/components/responses/E404"}},
            }
        },
        **{
            f"/api/tasks/{{id}}/{action}": {
                "post": {
                    "summary": summary,
                    "parameters": [_TASK_ID],
                    "requestBody": {"content": {_JSON: {"schema": {"type": "object", "properties": fields}}}},
                    "responses": {
                        "200": {"description": "The task after the change"},
                        **_error_responses(400, 401, 403, 413, 415, 503),
                        "404": {"$ref": "#/components/responses/E404"},
                        "409": {"$ref": "#/components/responses/E409"},
                    },
                }
            }
            for action, summary, fields in [
                (
                    "progress",
                    "Report progress (0-100), step, message; starts a pending task",
                    {"progress": {"type": "number"}, "step": {"type": "string"}, "message": {"type": "string"}},
                ),
                ("complete", "Complete with a result", {"result": {}}),
                ("fail", "Fail with an error", {"error": {"type": "string"}}),
                (
                    "stop",
                    "Request a stop: stopping now, cancelled when acknowledged or after the grace period",
                    {"by": {"type": "string"}},
                ),
                (
                    "cancel",
                    "End the task cancelled now (a worker acknowledging a stop)",
                    {"reason": {"type": "string"}},
                ),
            ]
        },
        "/api/disconnect": {
            "post": {
                "summary": "Disconnect one connection, or every connection of a user",
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {"connection": {"type": "string"}, "user": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "How many were disconnected",
                        "content": {
                            _JSON: {"schema": {"type": "object", "properties": {"disconnected": {"type": "integer"}}}}
                        },
                    },
                    **_error_responses(400, 401, 403, 413, 415, 503),
                },
            }
        },
    },
}
