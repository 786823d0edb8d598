#!/usr/bin/env bash
# Checks k8s/ and the Dockerfile without a cluster (run by scripts/test.sh before the Rust
# tests; k8s/README.md says what this proves and what it cannot):
#   1. hadolint: the Dockerfiles (the Rust services' and services/community's), failing on
#      any finding (style included);
#   2. kubectl kustomize: every overlay renders (to var/k8s-rendered/<overlay>.yaml);
#   3. kubernetes-validate --strict: every built-in object against Kubernetes 1.37's schemas,
#      unknown fields refused;
#   4. the CRD kinds it has no schema for: only those listed below may appear, each checked
#      against a strict schema of the fields used here (unknown fields refused), plus
#      cross-references between objects (names, selectors, ports, listen addresses);
#      DestinationRule / VirtualService are also loaded by the mesh crate
#      (mesh/tests/k8s_resources.rs, run by cargo nextest);
#   5. checkov over all rendered overlays at once, failing on any finding not suppressed
#      inline (checkov.io/skipN annotations, each with its reason).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '%s\n' "$*" >&2; }
started=$SECONDS
BIN=$(bash scripts/tools.sh)
OUT=var/k8s-rendered
OVERLAYS=(dev prod canary)

say "check-manifests: hadolint Dockerfile services/community/Dockerfile"
"$BIN/hadolint" --failure-threshold style Dockerfile services/community/Dockerfile

say "check-manifests: kubectl kustomize ${OVERLAYS[*]}"
rm -rf "$OUT"
mkdir -p "$OUT"
for overlay in "${OVERLAYS[@]}"; do
  "$BIN/kubectl" kustomize "k8s/overlays/$overlay" > "$OUT/$overlay.yaml"
done

say "check-manifests: kubernetes-validate --strict"
validate_log="$OUT/kubernetes-validate.log"
if ! "$BIN/kubernetes-validate" --strict --quiet "$OUT"/*.yaml > "$validate_log" 2>&1; then
  cat "$validate_log" >&2
  say "check-manifests: kubernetes-validate failed"
  exit 1
fi

say "check-manifests: custom resources and cross-references"
"$BIN/python" - "$validate_log" "${OVERLAYS[@]/#/$OUT/}" <<'PY'
import re
import sys

import jsonschema
import yaml

validate_log, files = sys.argv[1], [f + ".yaml" for f in sys.argv[2:]]
errors = []


def obj(props, required=(), **extra):
    """A JSON schema object refusing properties it does not list."""
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False, **extra}


STR = {"type": "string"}
INT = {"type": "integer"}
STRS = {"type": "array", "items": STR}
LABELS = {"type": "object", "additionalProperties": STR}
SELECTOR = obj({"matchLabels": LABELS})
LABEL_SELECTOR = obj({
    "matchLabels": LABELS,
    "matchExpressions": {"type": "array", "items": obj(
        {"key": STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
         "values": STRS}, ["key", "operator"])},
})
MTLS = obj({"mode": {"enum": ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]}}, ["mode"])
DURATION = {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"}
# Subsets of the upstream CRD schemas (Istio 1.2x, KEDA 2.x, prometheus-operator 0.7x)
# holding the fields these manifests use: a misspelt or misplaced field fails here.
SPECS = {
    ("security.istio.io/v1", "PeerAuthentication"): obj({
        "selector": SELECTOR, "mtls": MTLS,
        "portLevelMtls": {"type": "object", "additionalProperties": MTLS,
                          "propertyNames": {"pattern": "^[0-9]+$"}},
    }),
    ("security.istio.io/v1", "AuthorizationPolicy"): obj({
        "selector": SELECTOR,
        "action": {"enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"]},
        "rules": {"type": "array", "items": obj({
            "from": {"type": "array", "items": obj({"source": obj({
                "principals": STRS, "notPrincipals": STRS, "namespaces": STRS,
                "requestPrincipals": STRS, "ipBlocks": STRS})}, ["source"])},
            "to": {"type": "array", "items": obj({"operation": obj({
                "ports": {"type": "array", "items": {"type": "string", "pattern": "^[0-9]+$"}},
                "methods": STRS, "paths": STRS, "hosts": STRS})}, ["operation"])},
            "when": {"type": "array", "items": obj({"key": STR, "values": STRS}, ["key"])},
        })},
    }),
    ("security.istio.io/v1", "RequestAuthentication"): obj({
        "selector": SELECTOR,
        "jwtRules": {"type": "array", "minItems": 1, "items": obj({
            "issuer": STR, "audiences": STRS,
            "jwksUri": {"type": "string", "pattern": "^https?://"},
            "forwardOriginalToken": {"type": "boolean"},
            "outputPayloadToHeader": STR,
        }, ["issuer"])},
    }),
    ("networking.istio.io/v1", "Gateway"): obj({
        "selector": LABELS,
        "servers": {"type": "array", "minItems": 1, "items": obj({
            "port": obj({"number": INT, "name": STR,
                         "protocol": {"enum": ["HTTP", "HTTPS", "GRPC", "HTTP2", "MONGO", "TCP", "TLS"]}},
                        ["number", "protocol"]),
            "hosts": STRS,
            "tls": obj({"mode": {"enum": ["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"]},
                        "credentialName": STR, "httpsRedirect": {"type": "boolean"},
                        "minProtocolVersion": {"enum": ["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"]}}),
        }, ["port", "hosts"])},
    }, ["servers"]),
    # Loaded by the mesh crate with unknown fields refused (mesh/tests/k8s_resources.rs).
    ("networking.istio.io/v1", "DestinationRule"): {"type": "object", "required": ["host"]},
    ("networking.istio.io/v1", "VirtualService"): {"type": "object", "required": ["hosts"]},
    ("keda.sh/v1alpha1", "ScaledObject"): obj({
        "scaleTargetRef": obj({"name": STR, "kind": STR, "apiVersion": STR}, ["name"]),
        "minReplicaCount": INT, "maxReplicaCount": INT, "pollingInterval": INT,
        "cooldownPeriod": INT, "idleReplicaCount": INT,
        "triggers": {"type": "array", "minItems": 1, "items": {
            "if": {"properties": {"type": {"const": "cpu"}}},
            "then": obj({"type": {"const": "cpu"}, "metricType": {"enum": ["Utilization", "AverageValue"]},
                 "metadata": obj({"value": {"type": "string", "pattern": "^[0-9]+$"}}, ["value"])},
                ["type", "metricType", "metadata"]),
            "else": obj({"type": {"const": "nats-jetstream"}, "metadata": obj({
                "natsServerMonitoringEndpoint": {"type": "string", "pattern": r"^[a-z0-9.-]+:[0-9]+$"},
                "account": STR, "stream": {"type": "string", "pattern": "^[A-Z0-9_]+$"},
                "consumer": STR, "lagThreshold": {"type": "string", "pattern": "^[0-9]+$"},
                "activationLagThreshold": {"type": "string", "pattern": "^[0-9]+$"},
                "useHttps": {"enum": ["true", "false"]}},
                ["natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"])},
                ["type", "metadata"]),
        }},
    }, ["scaleTargetRef", "triggers"]),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): obj({
        "selector": LABEL_SELECTOR, "jobLabel": STR,
        "namespaceSelector": obj({"matchNames": STRS, "any": {"type": "boolean"}}),
        "endpoints": {"type": "array", "minItems": 1, "items": obj({
            "port": STR, "path": STR, "interval": DURATION, "scrapeTimeout": DURATION,
            "scheme": {"enum": ["http", "https"]}}, ["port"])},
    }, ["selector", "endpoints"]),
    ("monitoring.coreos.com/v1", "PrometheusRule"): obj({
        "groups": {"type": "array", "minItems": 1, "items": obj({
            "name": STR, "interval": DURATION,
            "rules": {"type": "array", "minItems": 1, "items": {
                "if": {"required": ["record"]},
                "then": obj({"record": STR, "expr": STR, "labels": LABELS}, ["record", "expr"]),
                "else": obj({"alert": STR, "expr": STR, "for": DURATION, "labels": LABELS,
                             "annotations": LABELS}, ["alert", "expr"]),
            }},
        }, ["name", "rules"])},
    }, ["groups"]),
}
METADATA = obj({"name": STR, "namespace": STR, "labels": LABELS, "annotations": LABELS}, ["name"])
# Secrets a secret manager provides in prod and canary (k8s/README.md, "Secrets").
EXTERNAL_SECRETS = {"reservation-database", "parking-lot-database", "delivery-database",
                    "status-database", "gateway-token-key", "gateway-accounts",
                    "parking-lot-client", "postgres"}

# kubernetes-validate skips what it has no schema for: each such kind must be one of SPECS.
for line in open(validate_log):
    m = re.search(r"Couldn't find schema for kind (\S+) with api version (\S+)", line)
    if m and (m.group(2), m.group(1)) not in SPECS:
        errors.append(f"no schema anywhere for {m.group(2)} {m.group(1)}: {line.strip()}")
    elif not m and line.strip():
        errors.append(f"kubernetes-validate: {line.strip()}")


def pod_specs(objs):
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet"):
            yield o, o["spec"]["template"]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


for path in files:
    objs = [d for d in yaml.safe_load_all(open(path)) if d]
    where = path.split("/")[-1]
    named = {(o["kind"], o["metadata"]["name"]) for o in objs}
    names = lambda kind: {n for k, n in named if k == kind}
    external = EXTERNAL_SECRETS if not where.startswith("dev") else set()

    for o in objs:
        key, ident = (o["apiVersion"], o["kind"]), f"{where}: {o['kind']} {o['metadata'].get('name')}"
        if "." in o["apiVersion"].split("/")[0] and not o["apiVersion"].split("/")[0].endswith("k8s.io"):
            if key not in SPECS:
                errors.append(f"{ident}: {key} is not a known custom resource kind")
                continue
            if set(o) - {"apiVersion", "kind", "metadata", "spec"}:
                errors.append(f"{ident}: unknown top-level fields {sorted(set(o) - {'apiVersion', 'kind', 'metadata', 'spec'})}")
            for part, schema in (("metadata", METADATA), ("spec", SPECS[key])):
                for e in jsonschema.Draft202012Validator(schema).iter_errors(o.get(part)):
                    errors.append(f"{ident}: {part}.{'.'.join(map(str, e.absolute_path))}: {e.message}")
        if o["metadata"].get("namespace") != "parking" and o["kind"] != "Namespace":
            errors.append(f"{ident}: not in namespace parking")

    # Cross-references the schemas cannot see.
    for o, template in pod_specs(objs):
        ident, spec = f"{where}: {o['kind']} {o['metadata']['name']}", template["spec"]
        if not selects(o["spec"]["selector"]["matchLabels"], template["metadata"]["labels"]):
            errors.append(f"{ident}: selector does not match its pod template")
        if spec.get("serviceAccountName") not in names("ServiceAccount"):
            errors.append(f"{ident}: service account {spec.get('serviceAccountName')} missing")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        refs = []
        for v in volumes.values():
            if "configMap" in v:
                refs.append(("ConfigMap", v["configMap"]["name"]))
            if "secret" in v:
                refs.append(("Secret", v["secret"]["secretName"]))
            if "persistentVolumeClaim" in v:
                refs.append(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
        for c in spec["containers"]:
            for ef in c.get("envFrom", []):
                refs.append(("ConfigMap", ef["configMapRef"]["name"]))
            env = {e["name"]: e for e in c.get("env", [])}
            for e in env.values():
                if "secretKeyRef" in e.get("valueFrom", {}):
                    refs.append(("Secret", e["valueFrom"]["secretKeyRef"]["name"]))
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes and m["name"] not in {
                        t["metadata"]["name"] for t in o["spec"].get("volumeClaimTemplates", [])}:
                    errors.append(f"{ident}: volume {m['name']} mounted but not declared")
            if o["metadata"]["labels"].get("app.kubernetes.io/part-of") == "parking-mesh":
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                for var, port in (("LISTEN_ADDR", "grpc"), ("METRICS_LISTEN", "http-metrics")):
                    want = f"0.0.0.0:{ports.get(port)}"
                    if env.get(var, {}).get("value") != want:
                        errors.append(f"{ident}: {var} must be {want} (the binaries default to 127.0.0.1)")
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if c.get(probe, {}).get("grpc", {}).get("port") != ports.get("grpc"):
                        errors.append(f"{ident}: {probe} is not a gRPC probe on the gRPC port")
        for kind, name in refs:
            if name not in names(kind) and not (kind == "Secret" and name in external):
                errors.append(f"{ident}: {kind} {name} is neither rendered nor provided externally")

    templates = [t for _, t in pod_specs(objs)]
    for o in objs:
        ident = f"{where}: {o['kind']} {o['metadata']['name']}"
        if o["kind"] == "Service":
            chosen = [t for t in templates if selects(o["spec"].get("selector"), t["metadata"]["labels"])]
            if not chosen:
                errors.append(f"{ident}: selects no pods")
            for p in o["spec"]["ports"]:
                tp = p.get("targetPort")
                if isinstance(tp, str) and not all(
                        any(cp.get("name") == tp for c in t["spec"]["containers"] for cp in c.get("ports", []))
                        for t in chosen):
                    errors.append(f"{ident}: targetPort {tp} is not a port of every selected pod")
        if o["kind"] == "PodDisruptionBudget":
            if not any(selects(o["spec"]["selector"]["matchLabels"], t["metadata"]["labels"]) for t in templates):
                errors.append(f"{ident}: selects no pods")
    targets = [(o["kind"], o["spec"]["scaleTargetRef"]["name"]) for o in objs
               if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    for kind, name in targets:
        if name not in names("Deployment"):
            errors.append(f"{where}: {kind} targets missing Deployment {name}")
    if len({n for _, n in targets}) != len(targets):
        errors.append(f"{where}: two autoscalers target one Deployment: {sorted(targets)}")
    for o in objs:
        if o["kind"] == "AuthorizationPolicy":
            for rule in o["spec"].get("rules", []):
                for f in rule.get("from", []):
                    for p in f["source"].get("principals", []):
                        m = re.fullmatch(r"cluster\.local/ns/parking/sa/(.+)", p)
                        if m and m.group(1) not in names("ServiceAccount"):
                            errors.append(f"{where}: AuthorizationPolicy {o['metadata']['name']}: no ServiceAccount {m.group(1)}")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
PY

say "check-manifests: checkov (kubernetes)"
"$BIN/checkov" -d "$OUT" --framework kubernetes --quiet --compact --skip-download

say "check-manifests: all passed in $((SECONDS - started)) s"
