"""The OpenAPI 3.1 document of the JSON API (served at /api/v1/openapi.json)."""

from __future__ import annotations

from typing import Any

from fwdmilter.config import Config
from fwdmilter.states import SENDER_REWRITES, SPF_ACTIONS, SPF_RESULTS

__all__ = ["document"]

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": schema}}}


def _sourced(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "value": value,
            "source": {"enum": ["recipient", "global", "default"]},
            "note": {"type": "string"},
        },
        "required": ["value", "source"],
    }


def _policy() -> dict[str, Any]:
    """The effective policy, as ``fwdctl forward show --json`` has it."""
    actions = {"enum": sorted(SPF_ACTIONS)}
    rewrites = {"enum": sorted(r for r in SENDER_REWRITES if r)}
    names = {"type": "array", "items": {"type": "string"}}
    return {
        "type": "object",
        "description": "what the milter applies to the address, each value with its source:"
        " recipient (set for it), global (the configuration file) or default",
        "properties": {
            "spf": {
                "type": "object",
                "properties": {r: _sourced(actions) for r in SPF_RESULTS},
            },
            "rewrite": _sourced(rewrites),
            "null_sender": _sourced({"enum": ["forward", "hold"]}),
            "trusted": _sourced(names),
            "trusted_networks": _sourced(names),
        },
    }


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
                        "policy": {"$ref": "#/components/schemas/Policy"},
                        "created": {"type": "number"},
                        "updated": {"type": "number"},
                    },
                },
                "Policy": _policy(),
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
                        "spf_actions": {
                            "type": "object",
                            "description": "the address's own action per SPF result;"
                            " inherit drops it (the global one applies)",
                            "additionalProperties": False,
                            "properties": {
                                r: {"enum": [*sorted(SPF_ACTIONS), "inherit"]} for r in SPF_RESULTS
                            },
                        },
                        "rewrite": {
                            "enum": [*sorted(r for r in SENDER_REWRITES if r), "inherit"],
                            "description": "the envelope sender of verified mail (U mail is"
                            " always rewritten); inherit: srs.rewrite",
                        },
                        "add_trusted": {
                            "type": "string",
                            "description": "a forwarder whose mail for the address skips the"
                            " sender's SPF verdict: a network (CIDR) or a domain",
                        },
                        "remove_trusted": {
                            "type": "string",
                            "description": "one of the trusted forwarders, to drop",
                        },
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
                    "summary": "Change targets (new ones confirmed first), contact,"
                    " null-sender choice, SPF actions, sender rewrite or trusted forwarders",
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
