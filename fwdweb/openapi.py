"""The OpenAPI 3.1 document of the JSON API (served at /api/v1/openapi.json)."""

from __future__ import annotations

from typing import Any

from fwdmilter.config import Config

__all__ = ["document"]

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": schema}}}


def document(cfg: Config, version: str) -> dict[str, Any]:
    address = {
        "name": "address",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "email"},
        "description": "the forwarding address the token belongs to",
    }
    record = {"$ref": "#/components/schemas/Forward"}
    denied = {
        "401": _json(_ERROR, "no valid bearer token"),
        "404": _json(_ERROR, "not a forwarding address of the token's owner"),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"fwdmilter-web at {cfg.srs.domain}",
            "version": version,
            "description": "A recipient's own forwarding record (docs/web.md).",
        },
        "servers": [{"url": cfg.web.base_url.rstrip("/") + "/api/v1"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                },
                "Held": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "target": {"type": "string"},
                        "state": {"enum": ["H", "R", "N"]},
                        "sender": {"type": "string"},
                        "held_at": {"type": "number"},
                        "age_seconds": {"type": "integer"},
                        "reason": {"type": "string"},
                        "discard_at": {"type": "number"},
                    },
                },
                "Forward": {
                    "type": "object",
                    "properties": {
                        "address": {"type": "string"},
                        "target": {"type": "string", "description": "the first target"},
                        "targets": {"type": "array", "items": {"type": "string"}},
                        "active": {"type": "boolean"},
                        "contact": {"type": "string"},
                        "null_sender": {"enum": ["forward", "hold"]},
                        "moved_to": {"type": "string"},
                        "pending": {
                            "type": ["object", "null"],
                            "properties": {
                                "target": {"type": "string"},
                                "expires": {"type": "number"},
                            },
                        },
                        "held": {"type": "array", "items": {"$ref": "#/components/schemas/Held"}},
                        "created": {"type": "number"},
                        "updated": {"type": "number"},
                    },
                },
                "Changes": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "target": {
                            "type": "string",
                            "description": "the one target, instead of all: a new one is"
                            " pending until confirmed from the link mailed to it",
                        },
                        "add_target": {
                            "type": "string",
                            "description": "one more target, joining the others once"
                            f" confirmed (at most {cfg.forwarding.max_targets})",
                        },
                        "remove_target": {
                            "type": "string",
                            "description": "a target (or the pending one) to drop; never the last",
                        },
                        "contact": {"type": "string"},
                        "null_sender": {"enum": ["forward", "hold"]},
                    },
                },
            },
        },
        "paths": {
            "/capabilities": {
                "get": {
                    "summary": "What this forwarder does (public)",
                    "responses": {"200": _json({"type": "object"}, "the capabilities")},
                }
            },
            "/sign-in": {
                "post": {
                    "summary": "Mail a sign-in link to the forward's current targets",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"address": {"type": "string"}},
                                    "required": ["address"],
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json({"type": "object"}, "the same answer for any address"),
                        "429": _json(_ERROR, "too many requests from this client"),
                    },
                }
            },
            "/forwards/{address}": {
                "parameters": [address],
                "get": {
                    "summary": "The record",
                    "security": [{"bearer": []}],
                    "responses": {"200": _json(record, "the record"), **denied},
                },
                "patch": {
                    "summary": "Change targets (new ones confirmed first), contact or"
                    " null-sender choice",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Changes"}}
                        },
                    },
                    "responses": {
                        "200": _json(record, "the record after the change"),
                        "400": _json(_ERROR, "a bad value"),
                        **denied,
                    },
                },
                "delete": {
                    "summary": "Stop forwarding; with moved_to, mail is refused with 551",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"moved_to": {"type": "string"}},
                                }
                            }
                        },
                    },
                    "responses": {"200": _json({"type": "object"}, "deleted"), **denied},
                },
            },
        },
    }
