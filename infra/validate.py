#!/usr/bin/env python3
"""Offline validation of infra/: the checks behind infra/validate.sh, which runs this file in a
venv holding the pinned tools of infra/validate-requirements.txt.

Each check prints `ok` with what it covered, or one line per finding; the process exits 1 when
anything was found. Nothing here touches the network: the Kubernetes schemas ship inside
kubernetes-validate, the CloudFormation/SAM schemas inside cfn-lint and aws-sam-translator.

What is *not* real schema validation, and says so in its output: KEDA's ScaledObject and
TriggerAuthentication and the Gateway API's Gateway and HTTPRoute are CRDs, absent from the
core schemas; they are checked against the minimal structural schemas below (`CRD_SCHEMAS`),
written from the CRDs' documented fields, not generated from the CRDs themselves.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
DOCKER = INFRA / "docker"
SAM_TEMPLATE = INFRA / "sam" / "template.yaml"
DEFAULTS_TOML = REPO / "shared" / "src" / "defaults.toml"
README = REPO / "README.md"
VENV_BIN = Path(sys.executable).parent

# Environment variables with the CODERUN prefix that are not settings.
NOT_SETTINGS = {"CODERUN_CONFIG", "CODERUN_NEW_PASSWORD"}
# What the worker's Role in the jobs namespace must allow, exactly (least privilege).
WORKER_RULES = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
}
# checkov's rules that do not fit coderun anywhere, and why. A rule that does not fit one
# object only is skipped in that object's own `checkov.io/skip…` annotations, with its reason.
CHECKOV_SKIPS = {
    "CKV_K8S_11": "CPU limits: the platform's pods request CPU and do not cap it (a CFS quota "
                  "only throttles a latency-bound API or worker); their memory is limited. Run "
                  "pods do get a CPU limit, their spec's",
    "CKV_K8S_15": "imagePullPolicy Always: images are pinned to release tags that are never "
                  "rebuilt, so IfNotPresent is as safe and spares each pod (and each run) a "
                  "registry round trip",
    "CKV_K8S_35": "secrets as files: both binaries read their settings from CODERUN__* "
                  "variables (the same layer Lambda uses); the values come from a Secret",
    "CKV_K8S_43": "image digests: overlays pin release tags; an operator who wants digests sets "
                  "`digest:` in the overlay's images",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


# --- reporting ------------------------------------------------------------------------------


@dataclass
class Report:
    passed: int = 0
    failed: int = 0
    findings: list[str] = field(default_factory=list)

    def check(self, name: str, findings: list[str], ok_detail: str) -> None:
        if findings:
            self.failed += 1
            for finding in findings:
                print(f"validate: [{name}] {finding}")
            print(f"validate: [{name}] FAILED ({len(findings)} finding(s))")
            self.findings.extend(findings)
        else:
            self.passed += 1
            print(f"validate: [{name}] ok: {ok_detail}")

    def note(self, name: str, text: str) -> None:
        print(f"validate: [{name}] note: {text}")


def rel(path: Path | str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def tool_version(cmd: list[str]) -> str:
    try:
        out = run(cmd)
    except OSError as e:
        return f"unavailable ({e})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def load_yaml_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- settings (shared/src/defaults.toml) ----------------------------------------------------

NAMED_TABLES = ("specs", "languages")


def load_defaults() -> dict:
    with open(DEFAULTS_TOML, "rb") as f:
        return tomllib.load(f)


def setting_keys(defaults: dict) -> set[str]:
    """Dotted keys of every setting; named tables (specs, languages) as `specs.*.field`."""
    keys: set[str] = set()

    def walk(prefix: str, node: dict) -> None:
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else k
            if not prefix and k in NAMED_TABLES and isinstance(v, dict):
                for entry in v.values():
                    for fname in entry:
                        keys.add(f"{k}.*.{fname}")
            elif isinstance(v, dict):
                walk(path, v)
            else:
                keys.add(path)

    walk("", defaults)
    return keys


def dotted_to_pattern(dotted: str) -> str:
    parts = dotted.split(".")
    if parts[0] in NAMED_TABLES and len(parts) == 3:
        parts[1] = "*"
    return ".".join(parts)


def env_to_dotted(name: str) -> str:
    return ".".join(p.lower() for p in name[len("CODERUN__"):].split("__"))


def check_env_name(name: str, keys: set[str]) -> str | None:
    """None when `name` is a valid setting variable (or not one of ours), else why not."""
    if name in NOT_SETTINGS or not name.startswith("CODERUN_"):
        return None
    if not name.startswith("CODERUN__"):
        return f"{name}: not a setting (settings are CODERUN__SECTION__KEY, two underscores)"
    dotted = dotted_to_pattern(env_to_dotted(name))
    if dotted not in keys:
        return f"{name}: no setting `{env_to_dotted(name)}` in shared/src/defaults.toml"
    return None


def toml_keys(doc: dict) -> set[str]:
    keys: set[str] = set()

    def walk(prefix: str, node: dict) -> None:
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                walk(path, v)
            else:
                keys.add(dotted_to_pattern(path))

    walk("", doc)
    return keys


# --- Kubernetes quantities ------------------------------------------------------------------

_SUFFIX = {
    "": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}


def quantity(value: Any) -> float:
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


# --- CRD structural schemas -----------------------------------------------------------------

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253}
_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": _NAME, "namespace": _NAME},
}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_HPA_BEHAVIOR_RULES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "value", "periodSeconds"],
                "properties": {
                    "type": {"enum": ["Pods", "Percent"]},
                    "value": {"type": "integer", "minimum": 1},
                    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
                },
            },
        },
        "tolerance": {"type": ["string", "number"]},
    },
}
_DURATION = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}
_HOSTNAME = {
    "type": "string",
    "maxLength": 253,
    "pattern": r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
}
_PARENT_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "group": {"type": "string"}, "kind": {"type": "string"}, "namespace": _NAME,
        "name": _NAME, "sectionName": _NAME, "port": {"type": "integer"},
    },
}
_BACKEND_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "group": {"type": "string"}, "kind": {"type": "string"}, "namespace": _NAME,
        "name": _NAME, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
        "filters": {"type": "array"},
    },
}
_HTTP_MATCH = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "path": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                "value": {"type": "string", "pattern": "^/", "maxLength": 1024},
            },
        },
        "headers": {"type": "array"},
        "queryParams": {"type": "array"},
        "method": {"enum": ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                            "TRACE", "PATCH"]},
    },
}
_HTTP_FILTER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type"],
    "properties": {
        "type": {"enum": ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror",
                          "RequestRedirect", "URLRewrite", "ExtensionRef", "CORS"]},
        "requestHeaderModifier": {"type": "object"},
        "responseHeaderModifier": {"type": "object"},
        "requestMirror": {"type": "object"},
        "requestRedirect": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "scheme": {"enum": ["http", "https"]},
                "hostname": _HOSTNAME,
                "path": {"type": "object"},
                "port": {"type": "integer"},
                "statusCode": {"enum": [301, 302]},
            },
        },
        "urlRewrite": {"type": "object"},
        "extensionRef": {"type": "object"},
        "cors": {"type": "object"},
    },
}

CRD_SCHEMAS: dict[tuple[str, str], dict] = {
    # keda.sh/v1alpha1 ScaledObject (KEDA 2.x): the spec's documented fields.
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {
                            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                            "name": _NAME, "envSourceContainerName": {"type": "string"},
                        },
                    },
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                    "idleReplicaCount": {"type": "integer", "minimum": 0},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "fallback": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["failureThreshold", "replicas"],
                        "properties": {
                            "failureThreshold": {"type": "integer", "minimum": 0},
                            "replicas": {"type": "integer", "minimum": 0},
                            "behavior": {"type": "string"},
                        },
                    },
                    "advanced": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "restoreToOriginalReplicaCount": {"type": "boolean"},
                            "horizontalPodAutoscalerConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "behavior": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {
                                            "scaleUp": _HPA_BEHAVIOR_RULES,
                                            "scaleDown": _HPA_BEHAVIOR_RULES,
                                        },
                                    },
                                },
                            },
                            "scalingModifiers": {"type": "object"},
                        },
                    },
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"type": "string"},
                                "name": {"type": "string"},
                                "useCachedMetrics": {"type": "boolean"},
                                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                # map[string]string: a bare number is refused by the API server.
                                "metadata": _STR_MAP,
                                "authenticationRef": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["name"],
                                    "properties": {
                                        "name": _NAME,
                                        "kind": {"enum": ["TriggerAuthentication",
                                                          "ClusterTriggerAuthentication"]},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["parameter", "name", "key"],
                            "properties": {
                                "parameter": {"type": "string"}, "name": _NAME,
                                "key": {"type": "string"},
                            },
                        },
                    },
                    "configMapTargetRef": {"type": "array"},
                    "env": {"type": "array"},
                    "podIdentity": {"type": "object"},
                    "hashiCorpVault": {"type": "object"},
                    "azureKeyVault": {"type": "object"},
                    "awsSecretManager": {"type": "object"},
                    "gcpSecretManager": {"type": "object"},
                    "boundServiceAccountToken": {"type": "array"},
                },
            },
        },
    },
    # gateway.networking.k8s.io/v1 (Gateway API standard channel).
    ("gateway.networking.k8s.io/v1", "Gateway"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["gatewayClassName", "listeners"],
                "properties": {
                    "gatewayClassName": _NAME,
                    "addresses": {"type": "array"},
                    "infrastructure": {"type": "object"},
                    "backendTLS": {"type": "object"},
                    "listeners": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 64,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "port", "protocol"],
                            "properties": {
                                "name": _NAME,
                                "hostname": _HOSTNAME,
                                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                "protocol": {"type": "string", "pattern": r"^[A-Za-z0-9./-]+$"},
                                "tls": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "mode": {"enum": ["Terminate", "Passthrough"]},
                                        "certificateRefs": {
                                            "type": "array",
                                            "maxItems": 64,
                                            "items": {
                                                "type": "object",
                                                "additionalProperties": False,
                                                "required": ["name"],
                                                "properties": {
                                                    "group": {"type": "string"},
                                                    "kind": {"type": "string"},
                                                    "name": _NAME,
                                                    "namespace": _NAME,
                                                },
                                            },
                                        },
                                        "options": _STR_MAP,
                                        "frontendValidation": {"type": "object"},
                                    },
                                },
                                "allowedRoutes": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "namespaces": {
                                            "type": "object",
                                            "additionalProperties": False,
                                            "properties": {
                                                "from": {"enum": ["All", "Same", "Selector"]},
                                                "selector": {"type": "object"},
                                            },
                                        },
                                        "kinds": {"type": "array"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "parentRefs": {"type": "array", "maxItems": 32, "items": _PARENT_REF},
                    "hostnames": {"type": "array", "maxItems": 16, "items": _HOSTNAME},
                    "rules": {
                        "type": "array",
                        "maxItems": 16,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": _NAME,
                                "matches": {"type": "array", "maxItems": 64,
                                            "items": _HTTP_MATCH},
                                "filters": {"type": "array", "maxItems": 16,
                                            "items": _HTTP_FILTER},
                                "backendRefs": {"type": "array", "items": _BACKEND_REF},
                                "timeouts": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "request": _DURATION, "backendRequest": _DURATION,
                                    },
                                },
                                "retry": {"type": "object"},
                                "sessionPersistence": {"type": "object"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def validate_doc(doc: dict, version: str, where: str) -> list[str]:
    """Schema findings for one object: core kinds against the Kubernetes schemas (strict), the
    CRD kinds we use against CRD_SCHEMAS."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return [f"{where}: not a Kubernetes object (no apiVersion/kind)"]
    name = f"{doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}"
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is not None:
        validator = jsonschema.Draft202012Validator(crd)
        return [
            f"{where}: {name}: {'.'.join(str(p) for p in e.absolute_path) or '(root)'}: "
            f"{e.message} [structural CRD check]"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        ]
    if doc["apiVersion"].split("/")[0] in ("keda.sh", "gateway.networking.k8s.io"):
        return [f"{where}: {name}: {doc['apiVersion']} {doc['kind']} is not covered by the "
                f"structural CRD checks (ScaledObject/TriggerAuthentication keda.sh/v1alpha1, "
                f"Gateway/HTTPRoute gateway.networking.k8s.io/v1)"]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.utils.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(root)"
        return [f"{where}: {name}: {path}: {e.message}"]
    except kubernetes_validate.utils.SchemaNotFoundError:
        return [f"{where}: {name}: no schema for {doc['apiVersion']} {doc['kind']} in "
                f"Kubernetes {version} (unknown kind, or a CRD this check does not cover)"]
    return []


# --- kustomize ------------------------------------------------------------------------------


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def strip_key(entry: str) -> str:
    """`key=path` (generator files) -> path."""
    return entry.split("=", 1)[1] if "=" in entry else entry


def check_kustomizations() -> tuple[list[str], set[Path], int]:
    """Every path a kustomization names exists (a secretGenerator's git-ignored env file needs
    its `.example` sibling instead), and every manifest file under infra/k8s is named by one."""
    findings: list[str] = []
    referenced: set[Path] = set()
    count = 0
    gitignore = (K8S / ".gitignore").read_text() if (K8S / ".gitignore").exists() else ""
    for kdir in kustomization_dirs():
        count += 1
        kfile = kdir / "kustomization.yaml"
        k = yaml.safe_load(kfile.read_text()) or {}
        where = rel(kfile)
        for obsolete in ("patchesStrategicMerge", "patchesJson6902", "bases", "commonLabels",
                         "vars"):
            if obsolete in k:
                findings.append(f"{where}: `{obsolete}` is deprecated in kustomize v5; use "
                                f"patches/resources/labels/replacements")

        def need(path_str: str, what: str, may_be_dir: bool = False) -> None:
            if re.match(r"^[a-z]+://", path_str) or path_str.startswith("github.com/"):
                findings.append(f"{where}: {what} {path_str}: remote references cannot be "
                                f"validated offline or pinned; vendor the file")
                return
            p = (kdir / path_str).resolve()
            referenced.add(p)
            if may_be_dir and p.is_dir():
                if not (p / "kustomization.yaml").exists():
                    findings.append(f"{where}: {what} {path_str} is a folder without "
                                    f"kustomization.yaml")
            elif not p.is_file():
                findings.append(f"{where}: {what} {path_str} does not exist")

        for r in k.get("resources", []) or []:
            need(r, "resource", may_be_dir=True)
        for c in k.get("components", []) or []:
            need(c, "component", may_be_dir=True)
        for c in k.get("configurations", []) or []:
            need(c, "configuration")
        for c in k.get("crds", []) or []:
            need(c, "crd")
        for p in k.get("patches", []) or []:
            if "path" in p:
                need(p["path"], "patch")
            elif "patch" not in p:
                findings.append(f"{where}: a patch with neither path nor patch")
        for gen_kind in ("configMapGenerator", "secretGenerator"):
            for gen in k.get(gen_kind, []) or []:
                for entry in (gen.get("files") or []):
                    need(strip_key(entry), f"{gen_kind} {gen.get('name')} file")
                for entry in (gen.get("envs") or []) + ([gen["env"]] if "env" in gen else []):
                    p = kdir / entry
                    if gen_kind == "secretGenerator" and not p.exists():
                        example = p.with_name(p.stem + ".example" + p.suffix)
                        referenced.add(example.resolve())
                        if not example.is_file():
                            findings.append(f"{where}: secretGenerator env file {entry} is not "
                                            f"committed (good) but {rel(example)} is missing")
                        if p.name not in gitignore:
                            findings.append(f"{where}: {entry} holds secrets but is not in "
                                            f"infra/k8s/.gitignore")
                    else:
                        need(entry, f"{gen_kind} {gen.get('name')} env file")
                        if gen_kind == "secretGenerator":
                            findings.append(f"{where}: {entry} exists in the work tree; make "
                                            f"sure it is git-ignored and never committed")
    # Orphans: manifests nobody includes are never applied, and never checked after render.
    for f in sorted(K8S.rglob("*")):
        if not f.is_file() or f.name in ("kustomization.yaml", "secrets.env") or \
                f.suffix not in (".yaml", ".yml", ".json", ".env", ".toml"):
            continue
        if f.resolve() not in referenced:
            findings.append(f"{rel(f)}: not named by any kustomization.yaml")
    return findings, referenced, count


def find_kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        out = run(["kubectl", "kustomize", "--help"])
        if out.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


def render_overlay(cmd: list[str], overlay: Path,
                   components: tuple[str, ...] = ()) -> tuple[list[dict] | None, str]:
    """Renders `overlay` in a scratch copy of infra/k8s where each missing secrets.env is the
    committed example (so nothing real is read), with the opt-in `components` added to it."""
    with tempfile.TemporaryDirectory(prefix="coderun-validate-") as tmp:
        copy_root = Path(tmp) / "k8s"
        shutil.copytree(K8S, copy_root, ignore=shutil.ignore_patterns("secrets.env"))
        for example in copy_root.rglob("*.example.env"):
            example.with_name(example.name.replace(".example", "")).write_text(
                example.read_text())
        target = copy_root / overlay.relative_to(K8S)
        if components:
            kfile = target / "kustomization.yaml"
            k = yaml.safe_load(kfile.read_text()) or {}
            k["components"] = list(k.get("components") or []) + list(components)
            kfile.write_text(yaml.safe_dump(k, sort_keys=False))
        out = run(cmd + [str(target)])
        if out.returncode != 0:
            return None, out.stderr.strip() or out.stdout.strip()
        return [d for d in yaml.safe_load_all(out.stdout) if d is not None], ""


def pseudo_render_base() -> list[dict]:
    """What kustomize would render for base/, minus hashes and patches: its resources, its
    generated ConfigMaps, and coderun-secrets from the local overlay's example. Used only when
    no kustomize is installed."""
    base = K8S / "base"
    k = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for r in k.get("resources", []):
        docs.extend(load_yaml_docs(base / r))
    for gen in k.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for env in gen.get("envs", []):
            data.update(parse_env_file(base / env))
        for entry in gen.get("files", []):
            key, _, path = entry.partition("=")
            if not path:
                key, path = Path(entry).name, entry
            data[key] = (base / path).read_text()
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": gen["name"], "namespace": gen.get("namespace")},
                     "data": data})
    secrets = parse_env_file(K8S / "overlays" / "local" / "secrets.example.env")
    docs.append({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "coderun-secrets", "namespace": "coderun"},
                 "type": "Opaque",
                 "data": {k: base64.b64encode(v.encode()).decode() for k, v in secrets.items()}})
    return docs


def parse_env_file(path: Path) -> dict[str, str]:
    data: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            data[key] = value
    return data


# --- checks on a rendered set of objects ----------------------------------------------------


def pod_spec_of(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec")
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"].get("spec")
    if kind in WORKLOAD_KINDS:
        return doc["spec"]["template"].get("spec")
    return None


def pod_labels_of(doc: dict) -> dict:
    if doc.get("kind") == "Pod":
        return doc["metadata"].get("labels", {}) or {}
    if doc.get("kind") == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return (doc["spec"]["template"].get("metadata") or {}).get("labels", {}) or {}


def all_containers(spec: dict) -> list[dict]:
    return (spec.get("initContainers") or []) + (spec.get("containers") or []) + \
        (spec.get("ephemeralContainers") or [])


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class Objects:
    def __init__(self, docs: list[dict]):
        self.docs = docs
        self.index: dict[tuple[str, str | None, str], dict] = {}
        for d in docs:
            meta = d.get("metadata") or {}
            ns = None if d["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding") \
                else meta.get("namespace")
            self.index[(d["kind"], ns, meta.get("name"))] = d

    def get(self, kind: str, ns: str | None, name: str) -> dict | None:
        return self.index.get((kind, ns, name))

    def of_kind(self, *kinds: str) -> Iterable[dict]:
        return (d for d in self.docs if d["kind"] in kinds)


def name_of(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc['kind']}/{meta.get('namespace', '-')}/{meta.get('name')}"


def resolve_env(objs: Objects, doc: dict, container: dict, defaults: dict) -> dict[str, str]:
    """The container's settings-relevant environment: envFrom ConfigMaps, then env literals
    (secrets as `<secret>`)."""
    ns = doc["metadata"].get("namespace")
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        ref = src.get("configMapRef")
        if ref:
            cm = objs.get("ConfigMap", ns, ref["name"])
            if cm:
                env.update(cm.get("data") or {})
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "configMapKeyRef" in vf:
                cm = objs.get("ConfigMap", ns, vf["configMapKeyRef"]["name"])
                env[e["name"]] = (cm or {}).get("data", {}).get(vf["configMapKeyRef"]["key"], "")
            else:
                env[e["name"]] = "<from " + next(iter(vf)) + ">"
    return env


def setting(env: dict[str, str], objs: Objects, ns: str, defaults: dict, dotted: str) -> Any:
    """A setting's effective value for a container: env var, then its coderun.toml, then the
    compiled default."""
    name = "CODERUN__" + "__".join(p.upper() for p in dotted.split("."))
    if name in env:
        return env[name]
    node: Any = None
    config_file = env.get("CODERUN_CONFIG")
    if config_file:
        for cm in objs.of_kind("ConfigMap"):
            if cm["metadata"].get("namespace") != ns:
                continue
            for key, text in (cm.get("data") or {}).items():
                if key == Path(config_file).name and key.endswith(".toml"):
                    node = tomllib.loads(text)
    for source in (node, defaults):
        cur = source
        for part in dotted.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is not None:
            return cur
    return None


def workload_findings(d: dict, objs: Objects, keys: set[str], what: str) -> list[str]:
    """A workload's pod: its references (ConfigMaps, Secrets, ServiceAccount, variables, probe
    ports) and its CODERUN__ variables against the settings. The generic policies (Pod
    Security, hardening, resources, image tags, probes) are checkov's (`check_policies`)."""
    findings: list[str] = []

    def bad(doc: dict, msg: str) -> None:
        findings.append(f"{what}: {name_of(doc)}: {msg}")

    spec = pod_spec_of(d)
    if spec is None:
        return findings
    ns = d["metadata"].get("namespace")
    for v in spec.get("volumes") or []:
        vtype = next((k for k in v if k != "name"), None)
        if vtype == "configMap" and not objs.get("ConfigMap", ns, v["configMap"]["name"]):
            bad(d, f"volume {v['name']}: ConfigMap {v['configMap']['name']} not found")
        if vtype == "secret" and not objs.get("Secret", ns, v["secret"]["secretName"]):
            bad(d, f"volume {v['name']}: Secret {v['secret']['secretName']} not found")
    sa = spec.get("serviceAccountName")
    if sa and not objs.get("ServiceAccount", ns, sa):
        bad(d, f"serviceAccountName {sa} not found")
    if d["kind"] in ("Deployment", "StatefulSet"):
        sel = d["spec"]["selector"].get("matchLabels", {})
        if not matches(sel, pod_labels_of(d)):
            bad(d, "selector does not match the pod template's labels")
    for c in all_containers(spec):
        cn = f"container {c['name']}"
        # Variables: references resolve, $(VAR) expansions name defined variables.
        defined: set[str] = set()
        for src in c.get("envFrom") or []:
            if "configMapRef" in src:
                cm = objs.get("ConfigMap", ns, src["configMapRef"]["name"])
                if not cm:
                    bad(d, f"{cn}: envFrom ConfigMap {src['configMapRef']['name']} not found")
                else:
                    for key in cm.get("data") or {}:
                        defined.add(key)
                        if why := check_env_name(key, keys):
                            bad(d, f"{cn}: envFrom {cm['metadata']['name']}: {why}")
            if "secretRef" in src and not objs.get("Secret", ns, src["secretRef"]["name"]):
                bad(d, f"{cn}: envFrom Secret {src['secretRef']['name']} not found")
        for e in c.get("env") or []:
            if why := check_env_name(e["name"], keys):
                bad(d, f"{cn}: env {why}")
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(e.get("value", ""))):
                if ref not in defined:
                    bad(d, f"{cn}: env {e['name']} expands $({ref}), defined nowhere before")
            vf = e.get("valueFrom") or {}
            if "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                s = objs.get("Secret", ns, ref["name"])
                if not s:
                    bad(d, f"{cn}: env {e['name']}: Secret {ref['name']} not found")
                elif ref["key"] not in (s.get("data") or {}) | (s.get("stringData") or {}):
                    bad(d, f"{cn}: env {e['name']}: Secret {ref['name']} has no key "
                           f"{ref['key']}")
            if "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                cm = objs.get("ConfigMap", ns, ref["name"])
                if not cm:
                    bad(d, f"{cn}: env {e['name']}: ConfigMap {ref['name']} not found")
                elif ref["key"] not in (cm.get("data") or {}):
                    bad(d, f"{cn}: env {e['name']}: ConfigMap {ref['name']} has no key "
                           f"{ref['key']}")
            defined.add(e["name"])
        for arg in (c.get("command") or []) + (c.get("args") or []):
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(arg)):
                if ref not in defined:
                    bad(d, f"{cn}: argument expands $({ref}), which is not defined")
        port_names = {p.get("name") for p in c.get("ports") or []}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            http = ((c.get(probe) or {}).get("httpGet") or {})
            if isinstance(http.get("port"), str) and http["port"] not in port_names:
                bad(d, f"{cn}: {probe} port {http['port']} is not a container port")
    return findings


def check_objects(docs: list[dict], defaults: dict, keys: set[str], what: str) -> list[str]:
    findings: list[str] = []
    objs = Objects(docs)

    def bad(doc: dict, msg: str) -> None:
        findings.append(f"{what}: {name_of(doc)}: {msg}")

    namespaces = {d["metadata"]["name"] for d in objs.of_kind("Namespace")}
    for d in docs:
        ns = (d.get("metadata") or {}).get("namespace")
        if d["kind"] != "Namespace" and not ns:
            bad(d, "no namespace (every object names its own: coderun or coderun-jobs)")
        elif ns and ns not in namespaces:
            bad(d, f"namespace {ns} is not created by these manifests")

    # --- workloads: references and settings names (policies: checkov)
    for d in docs:
        findings.extend(workload_findings(d, objs, keys, what))

    # --- the settings files in ConfigMaps
    for cm in objs.of_kind("ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            if key.endswith(".toml"):
                try:
                    parsed = tomllib.loads(text)
                except tomllib.TOMLDecodeError as e:
                    bad(cm, f"{key}: not TOML: {e}")
                    continue
                for k in sorted(toml_keys(parsed) - keys):
                    bad(cm, f"{key}: no setting `{k}` in shared/src/defaults.toml")

    # --- Services, PDBs, HPAs
    pods = [(d, pod_labels_of(d), pod_spec_of(d)) for d in docs if pod_spec_of(d) is not None]
    for svc in objs.of_kind("Service"):
        ns = svc["metadata"]["namespace"]
        sel = svc["spec"].get("selector") or {}
        targets = [(d, spec) for d, labels, spec in pods
                   if d["metadata"]["namespace"] == ns and matches(sel, labels)]
        if not targets:
            bad(svc, f"selector {sel} matches no pod template")
        for p in svc["spec"].get("ports") or []:
            tp = p.get("targetPort")
            if isinstance(tp, str) and targets and not any(
                    tp in {cp.get("name") for c in spec.get("containers", [])
                           for cp in c.get("ports") or []} for _, spec in targets):
                bad(svc, f"targetPort {tp} is not a port name of the selected pods")
    for pdb in objs.of_kind("PodDisruptionBudget"):
        ns = pdb["metadata"]["namespace"]
        sel = pdb["spec"]["selector"].get("matchLabels", {})
        if not any(d["metadata"]["namespace"] == ns and matches(sel, labels)
                   for d, labels, _ in pods):
            bad(pdb, f"selector {sel} matches no pod template")
    for hpa in objs.of_kind("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if not objs.get(ref["kind"], hpa["metadata"]["namespace"], ref["name"]):
            bad(hpa, f"scaleTargetRef {ref['kind']}/{ref['name']} not found")

    # --- RBAC
    for rb in objs.of_kind("RoleBinding"):
        ns = rb["metadata"]["namespace"]
        ref = rb["roleRef"]
        if ref["kind"] == "Role" and not objs.get("Role", ns, ref["name"]):
            bad(rb, f"roleRef Role {ref['name']} not found in {ns}")
        for s in rb.get("subjects") or []:
            if s["kind"] == "ServiceAccount" and not objs.get(
                    "ServiceAccount", s.get("namespace", ns), s["name"]):
                bad(rb, f"subject ServiceAccount {s.get('namespace', ns)}/{s['name']} not found")

    # --- the worker: consumer name, executor namespace and its rights, the run pods' account
    workers = [d for d in objs.of_kind("Deployment", "StatefulSet")
               if any(c["name"] == "worker" for c in pod_spec_of(d).get("containers", []))]
    if not workers:
        findings.append(f"{what}: no worker Deployment (a container named `worker`)")
    for w in workers:
        ns = w["metadata"]["namespace"]
        spec = pod_spec_of(w)
        c = next(c for c in spec["containers"] if c["name"] == "worker")
        env = resolve_env(objs, w, c, defaults)
        name_env = next((e for e in c.get("env") or [] if e["name"] == "CODERUN__WORKER__NAME"),
                        None)
        if not name_env or ((name_env.get("valueFrom") or {}).get("fieldRef") or {}).get(
                "fieldPath") != "metadata.name":
            bad(w, "CODERUN__WORKER__NAME must come from the pod name (downward API)")
        if setting(env, objs, ns, defaults, "worker.executor") != "kubernetes":
            bad(w, "worker.executor is not `kubernetes`")
        jobs_ns = setting(env, objs, ns, defaults, "kubernetes.namespace")
        if jobs_ns not in namespaces:
            bad(w, f"kubernetes.namespace {jobs_ns} is not created by these manifests")
        else:
            jns = objs.get("Namespace", None, jobs_ns)
            labels = jns["metadata"].get("labels") or {}
            if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
                bad(jns, "the jobs namespace must enforce the restricted Pod Security Standard")
        sa = spec.get("serviceAccountName")
        granted: dict[tuple[str, str], set[str]] = {}
        for rb in objs.of_kind("RoleBinding"):
            if rb["metadata"]["namespace"] != jobs_ns:
                continue
            if not any(s["kind"] == "ServiceAccount" and s["name"] == sa
                       and s.get("namespace") == ns for s in rb.get("subjects") or []):
                continue
            role = objs.get("Role", jobs_ns, rb["roleRef"]["name"]) or {}
            for rule in role.get("rules") or []:
                for g in rule.get("apiGroups") or [""]:
                    for r in rule.get("resources") or []:
                        granted.setdefault((g, r), set()).update(rule.get("verbs") or [])
        if granted != WORKER_RULES:
            def show(rules: dict) -> str:
                return ", ".join(f"{g or 'core'}/{r}: {'/'.join(sorted(v))}"
                                 for (g, r), v in sorted(rules.items()))
            bad(w, f"its rights in {jobs_ns} are [{show(granted)}], expected exactly "
                   f"[{show(WORKER_RULES)}]")
        if spec.get("automountServiceAccountToken") is not True:
            bad(w, "the worker needs its service account token (in-cluster client)")
        run_sa = setting(env, objs, ns, defaults, "kubernetes.service_account")
        if run_sa:
            sa_doc = objs.get("ServiceAccount", jobs_ns, run_sa)
            if not sa_doc:
                bad(w, f"kubernetes.service_account {run_sa} not found in {jobs_ns}")
            elif sa_doc.get("automountServiceAccountToken") is not False:
                bad(sa_doc, "the run pods' account must not automount a token")
            for rb in objs.of_kind("RoleBinding", "ClusterRoleBinding"):
                if any(s["kind"] == "ServiceAccount" and s["name"] == run_sa
                       and s.get("namespace", rb["metadata"].get("namespace")) == jobs_ns
                       for s in rb.get("subjects") or []):
                    bad(rb, f"binds a role to the run pods' account {run_sa}")

        # Capacity vs. the jobs namespace's LimitRange and ResourceQuota.
        capacity = int(setting(env, objs, ns, defaults, "capacity.default"))
        specs = {**(defaults.get("specs") or {})}
        biggest = {
            "cpu": max(s["cpu_millis"] for s in specs.values()) / 1000,
            "memory": max(s["memory_mib"] for s in specs.values()) * 2**20,
            "ephemeral-storage": max(s["disk_mib"] for s in specs.values()) * 2**20,
        }
        lrs = [d for d in objs.of_kind("LimitRange") if d["metadata"]["namespace"] == jobs_ns]
        rqs = [d for d in objs.of_kind("ResourceQuota") if d["metadata"]["namespace"] == jobs_ns]
        if not lrs:
            bad(w, f"no LimitRange in {jobs_ns}")
        if not rqs:
            bad(w, f"no ResourceQuota in {jobs_ns}")
        for lr in lrs:
            for lim in lr["spec"]["limits"]:
                for res, need in biggest.items():
                    have = (lim.get("max") or {}).get(res)
                    if lim.get("type") == "Container" and have is not None and \
                            quantity(have) < need:
                        bad(lr, f"max {res} {have} is below the largest spec's")
        for rq in rqs:
            hard = rq["spec"]["hard"]
            for res in ("cpu", "memory"):
                for scope in ("requests", "limits"):
                    have = hard.get(f"{scope}.{res}")
                    if have is not None and quantity(have) < capacity * biggest[res]:
                        bad(rq, f"{scope}.{res} {have} < capacity.default ({capacity}) x the "
                                f"largest spec")
            if "pods" in hard and int(hard["pods"]) < capacity:
                bad(rq, f"pods {hard['pods']} < capacity.default ({capacity})")

        # The jobs namespace's network: all denied but for named peers; no ingress at all.
        nps = [d for d in objs.of_kind("NetworkPolicy") if d["metadata"]["namespace"] == jobs_ns]
        if not any(np["spec"].get("podSelector") == {} and
                   set(np["spec"].get("policyTypes") or []) == {"Ingress", "Egress"} and
                   not np["spec"].get("ingress") and not np["spec"].get("egress")
                   for np in nps):
            bad(w, f"no default-deny NetworkPolicy (ingress and egress) in {jobs_ns}")
        for np in nps:
            if np["spec"].get("ingress"):
                bad(np, "allows ingress to run pods")
            for rule in np["spec"].get("egress") or []:
                if not rule.get("to"):
                    bad(np, "an egress rule without `to` allows every destination")
                for peer in rule.get("to") or []:
                    cidr = (peer.get("ipBlock") or {}).get("cidr", "")
                    if cidr.endswith("/0"):
                        bad(np, f"egress to {cidr}")
                    if "namespaceSelector" in peer and not peer.get("podSelector"):
                        bad(np, "egress to a whole namespace; name the pods")
                if not rule.get("ports"):
                    bad(np, "an egress rule without ports allows every port")

    # --- KEDA
    for so in objs.of_kind("ScaledObject"):
        ns = so["metadata"]["namespace"]
        ref = so["spec"]["scaleTargetRef"]
        target = objs.get(ref.get("kind", "Deployment"), ns, ref["name"])
        if not target:
            bad(so, f"scaleTargetRef {ref['name']} not found")
        if so["spec"].get("minReplicaCount", 0) < 1:
            bad(so, "minReplicaCount < 1: running runs would go unwatched at lag 0")
        if target and target["spec"].get("replicas") is not None:
            bad(target, "sets replicas although KEDA scales it (apply would fight the HPA)")
        for trig in so["spec"]["triggers"]:
            auth = trig.get("authenticationRef")
            if auth:
                ta = objs.get(auth.get("kind", "TriggerAuthentication"), ns, auth["name"])
                if not ta:
                    bad(so, f"authenticationRef {auth['name']} not found")
                else:
                    for sref in ta["spec"].get("secretTargetRef") or []:
                        s = objs.get("Secret", ns, sref["name"])
                        if not s or sref["key"] not in (s.get("data") or {}):
                            bad(ta, f"secretTargetRef {sref['name']}/{sref['key']} not found")
            if trig["type"] != "redis-streams":
                continue
            md = trig["metadata"]
            modes = [m for m in ("pendingEntriesCount", "streamLength", "lagCount") if m in md]
            if modes != ["lagCount"]:
                bad(so, f"redis-streams trigger: expected lagCount mode only, got {modes}")
            if "stream" not in md or "consumerGroup" not in md:
                bad(so, "redis-streams trigger needs stream and consumerGroup")
            host, _, port = md.get("address", "").partition(":")
            parts = host.split(".")
            if len(parts) < 2 or not objs.get("Service", parts[1], parts[0]) or not any(
                    str(p["port"]) == port
                    for p in objs.get("Service", parts[1], parts[0])["spec"]["ports"]):
                bad(so, f"redis-streams address {md.get('address')} is no Service port here")
            if target:
                c = next((c for c in pod_spec_of(target)["containers"]), None)
                env = resolve_env(objs, target, c, defaults)
                prefix = setting(env, objs, ns, defaults, "redis.prefix")
                group = setting(env, objs, ns, defaults, "queue.group")
                if md.get("stream") != f"{prefix}:runs":
                    bad(so, f"stream {md.get('stream')} is not `{prefix}:runs` (redis.prefix)")
                if md.get("consumerGroup") != group:
                    bad(so, f"consumerGroup {md.get('consumerGroup')} is not `{group}` "
                            f"(queue.group)")

    # --- Gateway API
    for route in objs.of_kind("HTTPRoute"):
        ns = route["metadata"]["namespace"]
        for pref in route["spec"].get("parentRefs") or []:
            gw = objs.get("Gateway", pref.get("namespace", ns), pref["name"])
            if not gw:
                bad(route, f"parentRef Gateway {pref['name']} not found")
                continue
            listeners = {ln["name"]: ln for ln in gw["spec"]["listeners"]}
            if "sectionName" in pref and pref["sectionName"] not in listeners:
                bad(route, f"sectionName {pref['sectionName']} is no listener of {pref['name']}")
            chosen = [listeners[pref["sectionName"]]] if pref.get("sectionName") in listeners \
                else list(listeners.values())
            for host in route["spec"].get("hostnames") or []:
                if not any(fnmatch.fnmatch(host, ln.get("hostname", "*")) for ln in chosen):
                    bad(route, f"hostname {host} matches no listener it attaches to")
        for rule in route["spec"].get("rules") or []:
            for b in rule.get("backendRefs") or []:
                if b.get("kind", "Service") != "Service":
                    continue
                svc = objs.get("Service", b.get("namespace", ns), b["name"])
                if not svc:
                    bad(route, f"backendRef Service {b['name']} not found")
                elif "port" not in b or b["port"] not in [p["port"] for p in svc["spec"]["ports"]]:
                    bad(route, f"backendRef {b['name']}: port {b.get('port')} is not a port of "
                               f"the Service")
            # A /metrics rule may only turn requests away (a redirect, no backend); and a rule
            # whose prefix covers /metrics (such as /) on coderun-functions, which serves
            # /metrics, needs such a rule beside it.
            to_functions = any(b.get("name") == "coderun-functions"
                               for b in rule.get("backendRefs") or [])
            for m in rule.get("matches") or []:
                value = (m.get("path") or {}).get("value", "")
                if value.startswith("/metrics") and rule.get("backendRefs"):
                    bad(route, "exposes /metrics publicly")
                kind = (m.get("path") or {}).get("type", "PathPrefix")
                if kind == "PathPrefix" and "/metrics".startswith(value.rstrip("/") + "/") \
                        and to_functions and not any(
                            (m2.get("path") or {}).get("value") == "/metrics"
                            and not r2.get("backendRefs")
                            for r2 in route["spec"].get("rules") or []
                            for m2 in r2.get("matches") or []):
                    bad(route, f"prefix {value} exposes /metrics publicly (add a /metrics "
                               f"rule that redirects)")
    for gw in objs.of_kind("Gateway"):
        names = [ln["name"] for ln in gw["spec"]["listeners"]]
        if len(names) != len(set(names)):
            bad(gw, "listener names repeat")
        for ln in gw["spec"]["listeners"]:
            if ln["protocol"] == "HTTPS" and not (ln.get("tls") or {}).get("certificateRefs"):
                bad(gw, f"HTTPS listener {ln['name']} without certificateRefs")

    # --- the public routes the frontend calls
    api_paths = {(m.get("path") or {}).get("value") for r in objs.of_kind("HTTPRoute")
                 for rule in r["spec"].get("rules") or [] for m in rule.get("matches") or []
                 if any(b["name"] == "coderun-functions" for b in rule.get("backendRefs") or [])}
    for needed in ("/api/v1", "/healthz", "/readyz", "/"):
        if needed not in api_paths:
            findings.append(f"{what}: no HTTPRoute sends {needed} to coderun-functions")

    # --- Secrets: the example's keys are exactly the ones used
    used: set[tuple[str, str]] = set()
    for d in docs:
        spec = pod_spec_of(d)
        for c in all_containers(spec) if spec else []:
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    used.add((ref["name"], ref["key"]))
    for ta in objs.of_kind("TriggerAuthentication"):
        for sref in ta["spec"].get("secretTargetRef") or []:
            used.add((sref["name"], sref["key"]))
    for s in objs.of_kind("Secret"):
        for key in s.get("data") or {}:
            if (s["metadata"]["name"], key) not in used:
                bad(s, f"key {key} is used by nothing")

    # --- The worker never signs or checks tokens: it gets no JWT secret
    for d in objs.of_kind("Deployment"):
        if name_of(d).endswith("/coderun-worker"):
            for c in all_containers(pod_spec_of(d) or {}):
                if any(e.get("name") == "CODERUN__AUTH__JWT_SECRET" for e in c.get("env") or []):
                    bad(d, f"container {c.get('name')} gets CODERUN__AUTH__JWT_SECRET, which "
                           f"the worker never needs")
    return findings


# --- the checks -----------------------------------------------------------------------------


def check_yaml(report: Report) -> None:
    files = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml")
                   and "local" not in p.relative_to(INFRA).parts[:1])
    out = run([str(VENV_BIN / "yamllint"), "-f", "parsable", "-c", str(INFRA / ".yamllint.yaml")]
              + [str(f) for f in files])
    findings = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 and not findings:
        findings = [out.stderr.strip()]
    report.check("yamllint", [rel(f) if Path(f).exists() else f for f in findings],
                 f"{len(files)} YAML files")


def check_manifests(report: Report, version: str) -> None:
    findings, referenced, count = check_kustomizations()
    report.check("kustomization-references", findings,
                 f"{count} kustomizations, every named file present, no orphan manifests")

    findings = []
    n_core = n_crd = 0
    for kdir in kustomization_dirs():
        k = yaml.safe_load((kdir / "kustomization.yaml").read_text()) or {}
        for r in k.get("resources", []) or []:
            p = kdir / r
            if not p.is_file():
                continue
            try:
                docs = load_yaml_docs(p)
            except yaml.YAMLError as e:
                findings.append(f"{rel(p)}: {e}")
                continue
            for doc in docs:
                findings.extend(validate_doc(doc, version, rel(p)))
                if (doc.get("apiVersion"), doc.get("kind")) in CRD_SCHEMAS:
                    n_crd += 1
                else:
                    n_core += 1
    report.check(
        "manifest-schemas", findings,
        f"{n_core} objects against the Kubernetes {version} schemas (kubernetes-validate "
        f"{kubernetes_validate.__version__}, strict), {n_crd} KEDA/Gateway API objects against "
        f"the structural schemas of validate.py (not the CRDs' own schemas)")


# Every set of objects rendered for the checks, by name: checkov scans them at the end.
RENDERED: list[tuple[str, list[dict]]] = []


def check_render(report: Report, version: str, defaults: dict, keys: set[str],
                 skip: bool) -> list[dict]:
    """Renders and checks each overlay; returns the production overlay's objects (or base's,
    assembled, without kustomize) for the checks that need a whole installation."""
    cmd = None if skip else find_kustomize()
    if cmd is None:
        report.note("render", ("skipped by --skip-render" if skip else
                               "no kustomize or kubectl on PATH: the overlays are not rendered; "
                               "checking base/ assembled by validate.py instead (generators "
                               "without hashes, no patches)"))
        docs = pseudo_render_base()
        RENDERED.append(("base (assembled)", docs))
        findings = []
        for doc in docs:
            findings.extend(validate_doc(doc, version, "base (assembled)"))
        findings.extend(check_objects(docs, defaults, keys, "base (assembled)"))
        report.check("objects", findings, f"base/ assembled: {len(docs)} objects consistent")
        return docs
    kversion = tool_version(cmd[:1] + (["version", "--client"] if cmd[0] == "kubectl"
                                         else ["version"]))
    overlays = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    chosen: list[dict] = []
    for overlay in overlays:
        name = f"render {overlay.name}"
        docs, err = render_overlay(cmd, overlay)
        if docs is None:
            report.check(name, [f"{' '.join(cmd)} {rel(overlay)}: {err}"], "")
            continue
        RENDERED.append((f"overlays/{overlay.name}", docs))
        findings = []
        for doc in docs:
            findings.extend(validate_doc(doc, version, f"overlays/{overlay.name} (rendered)"))
        findings.extend(check_objects(docs, defaults, keys, f"overlays/{overlay.name}"))
        report.check(name, findings,
                     f"{len(docs)} objects rendered with `{' '.join(cmd)}` ({kversion}): "
                     f"schemas, references, settings names, KEDA trigger vs queue settings, "
                     f"quota vs capacity, the worker's rights, the jobs namespace's isolation")
        if overlay.name == "production" or not chosen:
            chosen = docs
        if overlay.name == "production":
            check_console_opt_in(report, cmd, overlay, docs, version, defaults, keys)
    return chosen


def console_routes(docs: list[dict]) -> list[str]:
    """The HTTPRoutes that send traffic to the MinIO console."""
    return [name_of(d) for d in docs if d.get("kind") == "HTTPRoute" and any(
        ref.get("name") == "minio-console"
        for rule in (d.get("spec") or {}).get("rules") or []
        for ref in rule.get("backendRefs") or [])]


def check_console_opt_in(report: Report, cmd: list[str], overlay: Path, docs: list[dict],
                         version: str, defaults: dict, keys: set[str]) -> None:
    """Production exposes the MinIO console (whose login is the storage's root user) only when
    its operator opts in with the `console` component; with it, the overlay still renders and
    passes every check."""
    findings = [f"overlays/production: {r} routes the MinIO console publicly without the opt-in "
                f"component" for r in console_routes(docs)]
    opted, err = render_overlay(cmd, overlay, components=("console",))
    if opted is None:
        findings.append(f"overlays/production + console: {err}")
    else:
        RENDERED.append(("overlays/production + console", opted))
        if not console_routes(opted):
            findings.append("overlays/production + console: no route to the console")
        for doc in opted:
            findings.extend(validate_doc(doc, version, "overlays/production + console"))
        findings.extend(check_objects(opted, defaults, keys, "overlays/production + console"))
    report.check("console-opt-in", findings,
                 "production routes no MinIO console by default; with the `console` component "
                 "it does, and still passes every check")


def newest_source_mtime() -> float:
    """Newest change to what the worker binary is built from (its tests excluded)."""
    files = [REPO / "Cargo.lock", REPO / "shared" / "Cargo.toml", REPO / "worker" / "Cargo.toml"]
    for folder in ("shared/src", "shared/migrations", "worker/src"):
        files.extend(f for f in (REPO / folder).rglob("*") if f.is_file())
    return max(f.stat().st_mtime for f in files if f.exists())


def check_run_job(report: Report, version: str, keys: set[str], docs: list[dict]) -> list[dict]:
    """The Jobs the worker's Kubernetes executor builds (`coderun-worker print-job`: one per
    configured spec, no database) against the jobs namespace these manifests set up: schema,
    the LimitRange, the ServiceAccount, the NetworkPolicies. Returns them for checkov. Needs the
    worker binary `cargo test --workspace` has just built (`just test` runs it first); skipped
    without one."""
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    binary = target / "debug" / "coderun-worker"
    if not binary.is_file():
        report.note("run-job", f"skipped: no {binary} (cargo build -p coderun-worker)")
        return []
    if binary.stat().st_mtime < newest_source_mtime():
        report.note("run-job", f"skipped: {binary} is older than the sources (rebuild it)")
        return []
    # Never execute a binary that would not understand the subcommand: an older worker would
    # ignore it and start consuming.
    if b"print-job" not in binary.read_bytes():
        report.note("run-job", f"skipped: {binary} has no print-job subcommand")
        return []
    objs = Objects(docs)
    worker = next((d for d in objs.of_kind("Deployment") if any(
        c["name"] == "worker" for c in pod_spec_of(d)["containers"])), None)
    if worker is None:
        report.check("run-job", ["no worker Deployment to take the settings from"], "")
        return []
    container = next(c for c in pod_spec_of(worker)["containers"] if c["name"] == "worker")
    env = {k: v for k, v in resolve_env(objs, worker, container, {}).items()
           if k.startswith("CODERUN__") and not v.startswith("<from")}
    findings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="coderun-validate-") as tmp:
        config = Path(tmp) / "coderun.toml"
        config.write_text("")
        for cm in objs.of_kind("ConfigMap"):
            if cm["metadata"]["namespace"] == worker["metadata"]["namespace"]:
                for key, text in (cm.get("data") or {}).items():
                    if key.endswith(".toml"):
                        config.write_text(text)
        env.update({
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tmp,
            "CODERUN_CONFIG": str(config),
            "CODERUN__LOCAL_STACK": "true",
            # Nothing real to reach: the Jobs of the specs need no database, Redis or S3.
            "CODERUN__DATABASE__URL": "postgres://nobody@127.0.0.1:9/none",
            "CODERUN__REDIS__URL": "redis://127.0.0.1:9",
            "RUST_LIB_BACKTRACE": "0",
        })
        try:
            out = run([str(binary), "print-job"], env=env, timeout=60)
        except subprocess.TimeoutExpired:
            report.check("run-job", [f"{binary} print-job did not finish in 60 s"], "")
            return []
    if out.returncode != 0:
        report.check("run-job", [f"{binary} print-job failed: {out.stderr.strip()[:2000]}"], "")
        return []
    jobs = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    if not jobs:
        findings.append("print-job printed no Job")
    for job in jobs:
        findings.extend(run_job_findings(job, version, keys, docs, objs))
    report.check("run-job", findings,
                 f"the {len(jobs)} Jobs `coderun-worker print-job` builds (one per spec, "
                 f"production settings) fit the jobs namespace: schema ({version}, strict), "
                 f"LimitRange, ServiceAccount without token, NetworkPolicy selection")
    return jobs


def run_job_findings(job: dict, version: str, keys: set[str], docs: list[dict],
                     objs: Objects) -> list[str]:
    """One printed run Job against the jobs namespace these manifests set up."""
    findings: list[str] = []
    where = f"print-job {job['metadata'].get('name')}"
    findings.extend(validate_doc(job, version, where))
    findings.extend(workload_findings(job, Objects(docs + [job]), keys, where))
    ns = job["metadata"].get("namespace")
    if not objs.get("Namespace", None, ns):
        findings.append(f"{where}: the Job's namespace {ns} is not created by these manifests")
    spec = pod_spec_of(job)
    if spec.get("automountServiceAccountToken") is not False:
        findings.append(f"{where}: the run pod mounts a service account token")
    sa = spec.get("serviceAccountName")
    if sa and (objs.get("ServiceAccount", ns, sa) or {}).get(
            "automountServiceAccountToken") is not False:
        findings.append(f"{where}: ServiceAccount {ns}/{sa} missing or automounting")
    labels = pod_labels_of(job)
    policies = [np for np in objs.of_kind("NetworkPolicy") if np["metadata"]["namespace"] == ns]
    if not any(matches(np["spec"].get("podSelector", {}).get("matchLabels", {}), labels) or
               np["spec"].get("podSelector") == {} for np in policies):
        findings.append(f"{where}: no NetworkPolicy in {ns} selects the run pod")
    for lr in (d for d in objs.of_kind("LimitRange") if d["metadata"]["namespace"] == ns):
        for lim in lr["spec"]["limits"]:
            if lim.get("type") != "Container":
                continue
            for c in all_containers(spec):
                res = c.get("resources") or {}
                for scope in ("requests", "limits"):
                    for r, have in (res.get(scope) or {}).items():
                        top = (lim.get("max") or {}).get(r)
                        if top is not None and quantity(have) > quantity(top):
                            findings.append(f"{where}: container {c['name']} {scope}.{r} {have} "
                                            f"exceeds the LimitRange max {top}")
    return findings


def check_policies(report: Report, checkov: str, rendered: list[tuple[str, list[dict]]],
                   jobs: list[dict]) -> None:
    """The generic policies — Pod Security, RBAC breadth, probes, resources, image tags, service
    account tokens — by checkov, over every rendered overlay and the printed run Jobs. Skipped
    rules: `CHECKOV_SKIPS`, and the `checkov.io/skip…` annotations of single objects."""
    sets = rendered + ([("print-job", jobs)] if jobs else [])
    if not sets:
        report.note("checkov", "nothing rendered to scan")
        return
    with tempfile.TemporaryDirectory(prefix="coderun-checkov-") as tmp:
        for name, docs in sets:
            file = Path(tmp) / (re.sub(r"[^a-z0-9]+", "-", name.lower()) + ".yaml")
            file.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        out = run([checkov, "--directory", tmp, "--framework", "kubernetes", "--output", "json",
                   "--quiet", "--compact", "--skip-download",
                   "--skip-check", ",".join(sorted(CHECKOV_SKIPS))])
    if out.returncode not in (0, 1):
        report.check("checkov", [f"checkov failed: {out.stderr.strip()[-2000:]}"], "")
        return
    result = json.loads(out.stdout or "{}")
    results = result if isinstance(result, list) else [result]
    findings = []
    passed = 0
    for r in results:
        passed += (r.get("summary") or {}).get("passed", 0)
        for f in (r.get("results") or {}).get("failed_checks") or []:
            findings.append(f"{Path(f['file_path']).stem}: {f['resource']}: {f['check_id']} "
                            f"{f['check_name']}")
    version = tool_version([checkov, "--version"])
    report.check("checkov", sorted(set(findings)),
                 f"checkov {version}: {passed} passed on {', '.join(n for n, _ in sets)}; "
                 f"skipped everywhere: {', '.join(sorted(CHECKOV_SKIPS))} (CHECKOV_SKIPS)")


def dockerfile_instructions(path: Path) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuations joined; comments dropped."""
    out: list[tuple[int, str, str]] = []
    buf, start = "", 0
    for i, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if not buf:
            start = i
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    return out


def check_runtime_recipes(report: Report) -> None:
    """The run images' Dockerfiles are what infra/runtimes/build.py generates from the recipes
    that also build the local sandbox's root filesystems, and the compiled defaults declare the
    versions and libraries those recipes declare."""
    findings = []
    out = run([sys.executable, str(INFRA / "runtimes" / "build.py"), "--dockerfiles", "--check"],
              cwd=REPO)
    if out.returncode != 0:
        findings.extend(line for line in (out.stdout + out.stderr).splitlines() if line)
    defaults = tomllib.loads((REPO / "shared" / "src" / "defaults.toml").read_text())
    recipes = sorted((INFRA / "runtimes").glob("*.toml"))
    for language, settings in defaults.get("languages", {}).items():
        recipe_path = INFRA / "runtimes" / f"{settings.get('runtime', '')}.toml"
        if not recipe_path.is_file():
            findings.append(f"languages.{language}.runtime: no recipe {rel(recipe_path)}")
            continue
        recipe = tomllib.loads(recipe_path.read_text())
        if settings.get("version") != recipe["version"]["prefix"]:
            findings.append(f"languages.{language}.version {settings.get('version')!r} is not "
                            f"{rel(recipe_path)}'s {recipe['version']['prefix']!r}")
        declared = [f"{lib['name']} {lib['prefix']}" for lib in recipe["libraries"]]
        if settings.get("libraries") != declared:
            findings.append(f"languages.{language}.libraries {settings.get('libraries')} are not "
                            f"{rel(recipe_path)}'s {declared}")
        if settings.get("image") != f"coderun/run-{recipe['name']}:bookworm":
            findings.append(f"languages.{language}.image {settings.get('image')!r} is not the "
                            f"image built from {rel(recipe_path)}")
    report.check("runtime-recipes", findings,
                 f"{len(recipes)} recipes: run Dockerfiles generated from them, the languages' "
                 "versions, libraries and images declared as they declare")


def check_dockerfiles(report: Report) -> None:
    dockerfiles = sorted(DOCKER.rglob("*.Dockerfile")) + sorted(DOCKER.rglob("Dockerfile"))
    hadolint = str(VENV_BIN / "hadolint")
    findings = []
    for f in dockerfiles:
        out = run([hadolint, "--no-color", "-c", rel(DOCKER / ".hadolint.yaml"), rel(f)],
                  cwd=REPO)
        if out.returncode != 0:
            findings.extend(line for line in (out.stdout + out.stderr).splitlines() if line)
    report.check("hadolint", findings,
                 f"{len(dockerfiles)} Dockerfiles ({tool_version([hadolint, '--version'])})")

    findings = []
    for f in dockerfiles:
        where = rel(f)
        instr = dockerfile_instructions(f)
        args: dict[str, str] = {}
        stages: list[str] = []
        last_user: str | None = None
        copies_context = False
        for line, word, rest in instr:
            if word == "ARG" and not stages:
                k, _, v = rest.partition("=")
                args[k.strip()] = v.strip()
            elif word == "FROM":
                parts = rest.split()
                image = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                               lambda m: args.get(m.group(1), m.group(0)),
                               [p for p in parts if not p.startswith("--")][0])
                if image.lower() not in stages:
                    last = image.rsplit("/", 1)[-1]
                    if "$" in image:
                        findings.append(f"{where}:{line}: FROM {image}: a variable without default")
                    elif "@sha256:" not in image and (":" not in last or
                                                       last.endswith(":latest")):
                        findings.append(f"{where}:{line}: FROM {image}: pin a tag or digest")
                if len(parts) >= 3 and parts[-2].upper() == "AS":
                    stages.append(parts[-1].lower())
                else:
                    stages.append(f"#{len(stages)}")
                last_user = None
            elif word == "USER":
                last_user = rest
            elif word == "ADD" and re.search(r"\bhttps?://", rest):
                findings.append(f"{where}:{line}: ADD of a URL (fetch with a checked download)")
            elif word == "COPY" and "--from" not in rest:
                copies_context = True
        if last_user is None:
            findings.append(f"{where}: the final stage sets no USER (runs as the base's user)")
        elif last_user.split(":")[0] in ("0", "root"):
            findings.append(f"{where}: the final stage runs as root")
        elif "runtimes" in f.parts and last_user not in ("65534", "65534:65534"):
            findings.append(f"{where}: run images use uid 65534 (got USER {last_user})")
        if copies_context:
            ignore = f.with_name(f.name + ".dockerignore")
            if not ignore.is_file():
                findings.append(f"{where}: copies from its context but has no {ignore.name}")
        elif not (f.parent / ".dockerignore").is_file() and \
                not f.with_name(f.name + ".dockerignore").is_file():
            findings.append(f"{where}: no .dockerignore for its context")
    report.check("dockerfile-rules", findings,
                 f"{len(dockerfiles)} Dockerfiles: pinned bases, non-root final USER (65534 for "
                 f"run images), no ADD of URLs, .dockerignore present (validate.py's own rules)")


def check_sam(report: Report, keys: set[str]) -> None:
    cfn_lint = str(VENV_BIN / "cfn-lint")
    version = tool_version([cfn_lint, "--version"])
    out = run([cfn_lint, rel(SAM_TEMPLATE)], cwd=REPO)
    findings = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()] \
        if out.returncode != 0 else []
    report.check("cfn-lint", findings, f"{rel(SAM_TEMPLATE)} ({version})")

    # The real SAM transform, offline (CodeUri must be an S3 URI for it: a stand-in here),
    # then cfn-lint on the plain CloudFormation it produces.
    from samtranslator import __version__ as sam_version
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    findings = []
    template = yaml_parse(SAM_TEMPLATE.read_text())
    functions = {n: r for n, r in template.get("Resources", {}).items()
                 if r.get("Type") == "AWS::Serverless::Function"}
    params = template.get("Parameters", {})
    for name, res in functions.items():
        props = res["Properties"]
        if props.get("Runtime") != "provided.al2023" or props.get("Handler") != "bootstrap":
            findings.append(f"{name}: expected Runtime provided.al2023 and Handler bootstrap")
        routes = {(e["Properties"].get("Path"), e["Properties"].get("Method", "").upper())
                  for e in (props.get("Events") or {}).values() if e.get("Type") == "HttpApi"}
        want = {("/api/v1/{proxy+}", "ANY"), ("/healthz", "GET"), ("/readyz", "GET"),
                ("/", "GET"), ("/{proxy+}", "GET")}
        if routes != want:
            findings.append(f"{name}: HttpApi routes {sorted(routes)}, expected {sorted(want)}")
        variables = ((props.get("Environment") or {}).get("Variables") or {})
        for var, value in variables.items():
            if why := check_env_name(var, keys):
                findings.append(f"{name}: {why}")
            secretish = any(s in var for s in ("URL", "SECRET", "ACCESS_KEY", "PASSWORD")) \
                and var != "CODERUN__STORAGE__ENDPOINT"
            if secretish:
                ref = value.get("Ref") if isinstance(value, dict) else None
                if not ref or not params.get(ref, {}).get("NoEcho"):
                    findings.append(f"{name}: {var} must come from a NoEcho parameter")
        props["CodeUri"] = "s3://validate-placeholder/coderun-functions.zip"
    for res in template.get("Resources", {}).values():
        if res.get("Type") == "AWS::Serverless::LayerVersion":
            res["Properties"]["ContentUri"] = "s3://validate-placeholder/layer.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    class NoManagedPolicies:
        def load(self) -> dict:
            return {}

    try:
        transformed = transform(template, {}, NoManagedPolicies())
    except Exception as e:  # the translator reports template errors as exceptions
        findings.append(f"SAM transform: {e}")
        transformed = None
    if transformed is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as tmp:
            json.dump(transformed, tmp)
        out = run([cfn_lint, tmp.name])
        os.unlink(tmp.name)
        if out.returncode != 0:
            findings.extend(f"transformed: {line}" for line in
                            (out.stdout + out.stderr).splitlines() if line.strip())
    report.check("sam-transform", findings,
                 f"aws-sam-translator {sam_version} transformed the template; cfn-lint clean on "
                 f"the output; routes, runtime and NoEcho secrets checked")


def check_readme(report: Report, keys: set[str]) -> None:
    text = README.read_text()
    m = re.search(r"^## Configuration reference\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not m:
        report.check("readme-config-reference", ["README.md has no `## Configuration "
                                                 "reference` section"], "")
        return
    section = m.group(1)
    mentioned = {re.sub(r"[<{][a-z_]+[>}]", "*", t) for t in re.findall(r"`([^`\s]+)`", section)}
    findings = [f"README.md Configuration reference: `{k.replace('*', '<name>')}` "
                f"(shared/src/defaults.toml) is not described" for k in sorted(keys - mentioned)]
    for k in sorted(keys):
        env = "CODERUN__" + "__".join(p.upper() for p in k.split(".")).replace("*", "<NAME>")
        if k in mentioned and env not in section:
            findings.append(f"README.md Configuration reference: `{k}` lacks its variable {env}")
    report.check("readme-config-reference", findings,
                 f"all {len(keys)} settings of shared/src/defaults.toml described with their "
                 f"variables")


def check_shell(report: Report) -> None:
    shellcheck = str(VENV_BIN / "shellcheck")
    scripts = [INFRA / "validate.sh", INFRA / "venv.sh", REPO / "tests" / "contract" /
               "schemathesis.sh"] + sorted(K8S.glob("*.sh"))
    out = run([shellcheck, "-x"] + [str(s) for s in scripts])
    findings = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()] \
        if out.returncode != 0 else []
    version = re.search(r"version: (\S+)", run([shellcheck, "--version"]).stdout)
    report.check("shellcheck", findings, f"{', '.join(rel(s) for s in scripts)} (ShellCheck "
                 f"{version.group(1) if version else '?'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubernetes-version", default="1.30",
                        help="Kubernetes version whose schemas to validate against (1.30)")
    parser.add_argument("--skip-render", action="store_true",
                        help="do not render the overlays even if kustomize/kubectl is present")
    parser.add_argument("--checkov", default=str(VENV_BIN / "checkov"),
                        help="the checkov executable (validate.sh installs one in its own venv)")
    args = parser.parse_args()

    defaults = load_defaults()
    keys = setting_keys(defaults)
    report = Report()
    check_yaml(report)
    check_manifests(report, args.kubernetes_version)
    installation = check_render(report, args.kubernetes_version, defaults, keys,
                                args.skip_render)
    jobs = check_run_job(report, args.kubernetes_version, keys, installation)
    check_runtime_recipes(report)
    check_policies(report, args.checkov, RENDERED, jobs)
    check_dockerfiles(report)
    check_sam(report, keys)
    check_readme(report, keys)
    check_shell(report)
    # A closing line CI can read as a test summary.
    print(f"validate: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
