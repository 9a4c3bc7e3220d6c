#!/usr/bin/env bash
# Validates wgmesh's Kubernetes manifests offline:
#  1. every object of manifests/wgmesh.yaml, as written and as rendered by
#     `hack/kind.sh render-manifests`, against the OpenAPI schemas of every Kubernetes
#     version from 1.30 (wgmesh's minimum) to the newest one kubernetes-validate
#     bundles, strictly (unknown fields are errors, as kubectl's default
#     server-side field validation makes them);
#  2. the Peer CRD's schema is structural, and the example Peers of
#     manifests/examples/ pass it while a list of bad Peers fails it (JSON Schema
#     with the CRD's openAPIV3Schema; format "cidr" as Go's net.ParseCIDR; unknown
#     fields rejected);
#  3. the ValidatingAdmissionPolicy's CEL, evaluated against sample requests
#     (hack/check-admission-policy.py);
#  4. the init containers' shell scripts and hack/kind.sh with shellcheck, when it is
#     installed.
# Exits non-zero on the first failing step.
#
# The Python tools (pinned below) live in a virtualenv, by default
# target/manifest-tools/venv (WGMESH_TOOLS_VENV overrides it). It is created and
# filled from PyPI on the first run (about 15 s), then reused while the pins are
# unchanged: later runs need no network. Needs python3 with venv; as root on Debian,
# python3-venv is installed when missing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

venv=${WGMESH_TOOLS_VENV:-$repo/target/manifest-tools/venv}
# kubernetes-validate bundles the schemas of Kubernetes 1.25 to 1.37; cel-python is
# a CEL evaluator; jsonschema and PyYAML come with them. The rest: their dependencies.
requirements="attrs==26.1.0
cel-python==0.5.0
google-re2==1.1.20251105
importlib_resources==7.1.0
jmespath==1.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
kubernetes-validate==1.37.0
lark==1.3.1
packaging==26.4
pendulum==3.3.0
python-dateutil==4.0.0
PyYAML==6.0.4
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0
tzdata==2026.6"

ensure_tools() {
  local stamp=$venv/.wgmesh-requirements
  # One installer at a time (tests may run this script concurrently).
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  if [[ -x $venv/bin/python && -f $stamp && $(<"$stamp") == "$requirements" ]] &&
    "$venv/bin/python" -c 'import celpy, jsonschema, kubernetes_validate, yaml' 2>/dev/null; then
    return
  fi
  command -v python3 >/dev/null || {
    echo "validate-manifests: python3 not found (apt-get install python3 python3-venv)" >&2
    exit 1
  }
  echo "validate-manifests: installing the Python tools into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 has venv without ensurepip until python3-venv is installed.
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      rm -rf "$venv"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
      python3 -m venv "$venv"
    else
      echo "validate-manifests: python3 -m venv failed: install python3-venv" >&2
      exit 1
    fi
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r /dev/stdin <<<"$requirements"
  printf '%s' "$requirements" >"$stamp"
}

ensure_tools
py=$venv/bin/python

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./hack/kind.sh render-manifests wgmesh:validate >"$tmp/wgmesh.rendered.yaml"

echo "== Kubernetes schemas, Peer CRD and examples"
"$py" - manifests/wgmesh.yaml "$tmp/wgmesh.rendered.yaml" manifests/examples/*.yaml <<'PY'
import copy
import ipaddress
import re
import sys

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv

MIN_VERSION = (1, 30)
versions = sorted(
    (v for v in kv.all_versions() if tuple(map(int, v.split(".")[:2])) >= MIN_VERSION),
    key=lambda v: tuple(map(int, v.split("."))),
)
if not versions:
    sys.exit("kubernetes-validate bundles no Kubernetes >= 1.30")
manifests, rendered, examples = sys.argv[1], sys.argv[2], sys.argv[3:]


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def name(d):
    return f"{d['kind']}/{d['metadata']['name']}"


# 1. Built-in objects against the Kubernetes OpenAPI schemas.
crds = []
for path in (manifests, rendered):
    docs = load(path)
    for d in docs:
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                sys.exit(f"{path}: {name(d)}: no schema in Kubernetes {v}")
            except kubernetes_validate.ValidationError as e:
                sys.exit(f"{path}: {name(d)}: invalid for Kubernetes {v}: "
                         f"{'.'.join(map(str, e.path))}: {e.message}")
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    print(f"ok  {path}: {len(docs)} objects valid for Kubernetes "
          f"{versions[0].rsplit('.', 1)[0]} to {versions[-1].rsplit('.', 1)[0]} (strict)")

# 2. The Peer CRD: structural schema; examples valid, bad Peers invalid.
(crd,) = [c for c in crds if c["metadata"]["name"] == "peers.wgmesh.io"]
(version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
schema = version["schema"]["openAPIV3Schema"]


def structural(s, where):
    """The checks of a structural schema that matter here: a type everywhere (unless
    preserving unknown fields), items for arrays, no $ref/additionalProperties mix."""
    if "type" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
        sys.exit(f"CRD schema {where}: no type (not structural)")
    if s.get("type") == "array" and "items" not in s:
        sys.exit(f"CRD schema {where}: array without items")
    for k, sub in s.get("properties", {}).items():
        structural(sub, f"{where}.{k}")
    if "items" in s:
        structural(s["items"], f"{where}[]")


structural(schema, "")


def strict(s):
    """Unknown fields rejected, as kubectl's default strict field validation does;
    list-type set as unique items."""
    s = copy.deepcopy(s)
    if s.get("type") == "object" and "properties" in s and not s.get(
            "x-kubernetes-preserve-unknown-fields"):
        s["additionalProperties"] = False
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
    if "items" in s:
        s["items"] = strict(s["items"])
    if s.get("x-kubernetes-list-type") == "set":
        s["uniqueItems"] = True  # the API server rejects duplicates in a set
    return s


formats = jsonschema.FormatChecker()


@formats.checks("cidr")
def is_cidr(value):
    # Go's net.ParseCIDR: address "/" prefix length; host bits may be set.
    if not isinstance(value, str):
        return True
    if "/" not in value:
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


spec_schema = strict(schema)
spec_schema["properties"]["metadata"] = {"type": "object"}
spec_schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version['name']}"}
spec_schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
spec_schema["required"] = sorted(set(spec_schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
validator = jsonschema.Draft7Validator(spec_schema, format_checker=formats)


def errors(peer):
    found = [f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in validator.iter_errors(peer)]
    if "namespace" in peer.get("metadata", {}):
        found.append("metadata.namespace: Peer is cluster-scoped")
    if not peer.get("metadata", {}).get("name"):
        found.append("metadata.name: required")
    return found


good = None
for path in examples:
    for d in load(path):
        if d.get("kind") != "Peer":
            continue
        errs = errors(d)
        if errs:
            sys.exit(f"{path}: {name(d)}: " + "; ".join(errs))
        good = d
        print(f"ok  {path}: {name(d)} valid for the Peer CRD")
if good is None:
    sys.exit("manifests/examples/ has no Peer")


def with_spec(**changes):
    p = copy.deepcopy(good)
    for k, v in changes.items():
        if v is None:
            p["spec"].pop(k, None)
        else:
            p["spec"][k] = v
    return p


accepted = {
    "IPv6 endpoint": with_spec(endpoint="[2001:db8::1]:51820"),
    "IPv4 endpoint": with_spec(endpoint="198.51.100.7:1"),
    "no endpoint, no keepalive": with_spec(endpoint=None, persistentKeepalive=None),
    "keepalive 0": with_spec(persistentKeepalive=0),
    "host bits in a CIDR (as Go's ParseCIDR)": with_spec(allowedIPs=["10.99.0.5/24"]),
}
rejected = {
    "no publicKey": with_spec(publicKey=None),
    "no allowedIPs": with_spec(allowedIPs=None),
    "empty allowedIPs": with_spec(allowedIPs=[]),
    "duplicate allowedIPs": with_spec(allowedIPs=["10.99.0.5/32", "10.99.0.5/32"]),
    "key of 31 bytes": with_spec(publicKey="EDM7l6k2KP26uw/BSjH52tw1cxaffmJ68TA5nIKAiw=="),
    "key with non-zero padding bits": with_spec(publicKey="EDM7l6k2KP26uw/BSjH52tw1cxaffmJ68TA5nIKAi2h="),
    "key not base64": with_spec(publicKey="EDM7l6k2KP26uw/BSjH52tw1cxaffmJ68TA5nIKA!2g="),
    "key without padding": with_spec(publicKey="EDM7l6k2KP26uw/BSjH52tw1cxaffmJ68TA5nIKAi2g"),
    "CIDR without prefix": with_spec(allowedIPs=["10.99.0.5"]),
    "CIDR prefix too long": with_spec(allowedIPs=["10.99.0.5/33"]),
    "CIDR not an address": with_spec(allowedIPs=["laptop/32"]),
    "endpoint without port": with_spec(endpoint="alice.example.com"),
    "endpoint port 0": with_spec(endpoint="alice.example.com:0"),
    "endpoint port 65536": with_spec(endpoint="alice.example.com:65536"),
    "endpoint IPv6 without brackets": with_spec(endpoint="2001:db8::1:51820"),
    "keepalive 65536": with_spec(persistentKeepalive=65536),
    "keepalive negative": with_spec(persistentKeepalive=-1),
    "keepalive as a string": with_spec(persistentKeepalive="25"),
    "unknown field": with_spec(presharedKey="x"),
}
for what, peer in accepted.items():
    errs = errors(peer)
    if errs:
        sys.exit(f"Peer CRD rejects a valid Peer ({what}): {errs}")
for what, peer in rejected.items():
    if not errors(peer):
        sys.exit(f"Peer CRD accepts an invalid Peer ({what}): {peer['spec']}")
print(f"ok  Peer CRD: {len(accepted)} valid variants accepted, {len(rejected)} invalid rejected")
PY

echo "== admission policy (CEL)"
"$py" hack/check-admission-policy.py "$tmp/wgmesh.rendered.yaml"

echo "== shell scripts"
if command -v shellcheck >/dev/null; then
  "$py" - "$tmp" manifests/wgmesh.yaml <<'PY'
import sys
import yaml
out, path = sys.argv[1], sys.argv[2]
for d in yaml.safe_load_all(open(path)):
    if d and d["kind"] == "DaemonSet":
        spec = d["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            if c.get("command", [])[:1] == ["/bin/sh"]:
                with open(f"{out}/{c['name']}.sh", "w") as f:
                    f.write("#!/bin/sh\n" + c["args"][0])
PY
  shellcheck -s sh "$tmp"/*.sh
  shellcheck hack/kind.sh hack/validate-manifests.sh
  echo "ok  shellcheck: the init containers' scripts, hack/kind.sh, hack/validate-manifests.sh"
else
  echo "skipped: shellcheck is not installed"
fi
echo "manifests valid"
