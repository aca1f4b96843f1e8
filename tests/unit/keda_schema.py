"""JSON schemas of KEDA's ScaledObject and TriggerAuthentication (keda.sh/v1alpha1), as far
as the manifests use them, written from KEDA's documentation ("ScaledObject specification",
"Authentication", and the Redis Lists scaler's parameter list, KEDA 2.x).

KEDA's CRD schemas are not in kubernetes-validate; these are strict where the manifests
could go wrong (required fields, documented names only, value types and enums).
"""

from __future__ import annotations

from typing import Any

_STRING_NUMBER = {"type": "string", "pattern": r"^[0-9]+$"}
_STRING_BOOL = {"type": "string", "enum": ["true", "false"]}

REDIS_LIST_METADATA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["listName", "listLength"],
    "properties": {
        "address": {"type": "string", "pattern": r"^[^:\s]+:[0-9]+$"},
        "host": {"type": "string"}, "port": _STRING_NUMBER,
        "addressFromEnv": {"type": "string"}, "hostFromEnv": {"type": "string"},
        "portFromEnv": {"type": "string"},
        "usernameFromEnv": {"type": "string"}, "passwordFromEnv": {"type": "string"},
        "listName": {"type": "string", "minLength": 1},
        "listLength": _STRING_NUMBER,
        "activationListLength": _STRING_NUMBER,
        "enableTLS": _STRING_BOOL, "unsafeSsl": _STRING_BOOL,
        "databaseIndex": _STRING_NUMBER,
    },
    "oneOf": [{"required": ["address"]}, {"required": ["host", "port"]},
              {"required": ["addressFromEnv"]}, {"required": ["hostFromEnv", "portFromEnv"]}],
}

_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                   "namespace": {"type": "string"}, "labels": {"type": "object"},
                   "annotations": {"type": "object"}},
    "additionalProperties": False,
}

SCALED_OBJECT: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"apiVersion": {"type": "string"},
                                   "kind": {"type": "string"}, "name": {"type": "string"},
                                   "envSourceContainerName": {"type": "string"}},
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object", "required": ["failureThreshold", "replicas"]},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {"type": "object"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {
                                "type": "object", "required": ["name"],
                                "additionalProperties": False,
                                "properties": {"name": {"type": "string"},
                                               "kind": {"enum": ["TriggerAuthentication",
                                                                 "ClusterTriggerAuthentication"]}},
                            },
                        },
                        "if": {"properties": {"type": {"const": "redis"}}},
                        "then": {"properties": {"metadata": REDIS_LIST_METADATA}},
                    },
                },
            },
        },
    },
}

REDIS_AUTH_PARAMETERS = ("address", "host", "port", "username", "password", "tls", "ca",
                         "cert", "key", "keyPassword")
"""What the Redis Lists scaler takes from a TriggerAuthentication."""

TRIGGER_AUTHENTICATION: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object", "additionalProperties": False, "minProperties": 1,
            "properties": {
                "secretTargetRef": {
                    "type": "array", "minItems": 1,
                    "items": {"type": "object", "required": ["parameter", "name", "key"],
                              "additionalProperties": False,
                              "properties": {"parameter": {"enum": list(REDIS_AUTH_PARAMETERS)},
                                             "name": {"type": "string"},
                                             "key": {"type": "string"}}},
                },
                "env": {"type": "array"},
                "podIdentity": {"type": "object"},
            },
        },
    },
}

SCHEMAS = {"ScaledObject": SCALED_OBJECT, "TriggerAuthentication": TRIGGER_AUTHENTICATION}
