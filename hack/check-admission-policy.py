#!/usr/bin/env python3
"""Evaluates wgmesh's ValidatingAdmissionPolicy offline against sample admission requests.

    hack/check-admission-policy.py [manifests/wgmesh.yaml]

Reads the policy and its binding from the manifest (never a copy), then, for each case
below, does what kube-apiserver does for a ValidatingAdmissionPolicy: match the request
against matchConstraints, evaluate matchConditions (all true, or the policy does not
apply), the variables, and every validation (false or an error is a denial, as with
failurePolicy Fail), with CEL evaluated by cel-python (celpy). Exits non-zero if any
case gets a different answer than expected. Run by hack/validate-manifests.sh, which
installs celpy and PyYAML.

Kubernetes' CEL environment has libraries celpy lacks; the only one the policy uses is
the strings extension's list.join(separator), provided below with the same meaning.
Objects are given as the API server gives them to CEL: unstructured JSON, with spec
and status always present (empty structs are not omitted) and empty maps and lists
omitted.
"""

import copy
import sys

import celpy
import celpy.celtypes as ct
import yaml

AGENT = "system:serviceaccount:wgmesh-system:wgmesh"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


def cel_join(items, sep=ct.StringType("")):
    return ct.StringType(str(sep).join(str(i) for i in items))


FUNCTIONS = {"join": cel_join}


class Policy:
    def __init__(self, policy, binding):
        self.policy = policy
        self.binding = binding
        spec = policy["spec"]
        self.env = celpy.Environment()
        compile_ = self._compile
        self.match_conditions = [
            (m["name"], compile_(m["expression"])) for m in spec.get("matchConditions", [])
        ]
        self.variables = [(v["name"], compile_(v["expression"])) for v in spec.get("variables", [])]
        self.validations = [
            (
                compile_(v["expression"]),
                v.get("message", v["expression"]),
                compile_(v["messageExpression"]) if "messageExpression" in v else None,
            )
            for v in spec["validations"]
        ]

    def _compile(self, expression):
        try:
            return self.env.program(self.env.compile(expression), functions=FUNCTIONS)
        except Exception as e:  # a syntax error is a broken manifest
            raise SystemExit(f"CEL does not compile: {expression!r}: {e}")

    def matches(self, request):
        for rule in self.policy["spec"]["matchConstraints"]["resourceRules"]:
            resource = request["resource"]["resource"]
            if request["subResource"]:
                resource += "/" + request["subResource"]
            if (
                request["resource"]["group"] in rule["apiGroups"]
                and request["resource"]["version"] in rule["apiVersions"]
                and request["operation"] in rule["operations"]
                and resource in rule["resources"]
            ):
                return True
        return False

    def admit(self, request, old, new):
        """(allowed, [denial messages]) as kube-apiserver would answer."""
        if not self.matches(request):
            return True, []
        activation = {
            "request": celpy.json_to_cel(request),
            "object": celpy.json_to_cel(new),
            "oldObject": celpy.json_to_cel(old),
            "params": None,
            "namespaceObject": None,
        }
        for name, prg in self.match_conditions:
            result = evaluate(prg, activation)
            if isinstance(result, Exception):
                return False, [f"matchCondition {name} failed: {result}"]
            if not result:
                return True, []
        variables = {}
        for name, prg in self.variables:
            activation["variables"] = ct.MapType(variables)
            variables[ct.StringType(name)] = evaluate(prg, activation)
        activation["variables"] = ct.MapType(variables)
        denials = []
        for prg, message, message_prg in self.validations:
            result = evaluate(prg, activation)
            if isinstance(result, Exception):
                denials.append(f"expression failed: {result}")
            elif not isinstance(result, ct.BoolType):
                denials.append(f"expression is not a bool: {result!r}")
            elif not result:
                if message_prg is not None:
                    text = evaluate(message_prg, activation)
                    if not isinstance(text, str):
                        raise SystemExit(f"messageExpression did not give a string: {text!r}")
                    message = str(text)
                denials.append(message)
        return not denials, denials


def evaluate(prg, activation):
    try:
        result = prg.evaluate(activation)
    except celpy.CELEvalError as e:
        return e
    return result


# ---- sample objects and requests --------------------------------------------------


def node(name, annotations=None, labels=None):
    n = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": "100",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        # What a kubelet posts (abridged).
        "status": {
            "capacity": {"cpu": "2", "memory": "4012Mi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "3910Mi", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
            ],
            "addresses": [
                {"type": "InternalIP", "address": "192.0.2.1"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "containerRuntimeVersion": "containerd://1.7.27",
                "kubeletVersion": "v1.33.1",
                "operatingSystem": "linux",
            },
            "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320368}],
        },
    }
    if annotations is not None:
        n["metadata"]["annotations"] = annotations
    if labels is not None:
        n["metadata"]["labels"] = labels
    return n


AD = {
    "wgmesh.io/public-key": "EDM7l6k2KP26uw/BSjH52tw1cxaffmJ68TA5nIKAi2g=",
    "wgmesh.io/endpoint": "192.0.2.1:51820",
    "wgmesh.io/pod-cidrs": "10.244.1.0/24",
}


def request(name, user=AGENT, node_name="node-a", sub="", extra=None):
    user_info = {"username": user, "uid": "u-1", "groups": ["system:serviceaccounts"]}
    if extra is None and node_name is not None:
        extra = {
            NODE_NAME_EXTRA: [node_name],
            "authentication.kubernetes.io/node-uid": ["nu-1"],
            "authentication.kubernetes.io/pod-name": ["wgmesh-abcde"],
        }
    if extra:
        user_info["extra"] = extra
    return {
        "uid": "r-1",
        "kind": {"group": "", "version": "v1", "kind": "Node"},
        "resource": {"group": "", "version": "v1", "resource": "nodes"},
        "subResource": sub,
        "name": name,
        "operation": "UPDATE",
        "userInfo": user_info,
        "dryRun": False,
    }


def changed(obj, fn):
    new = copy.deepcopy(obj)
    fn(new)
    return new


def set_annotation(key, value):
    return lambda n: n["metadata"].setdefault("annotations", {}).__setitem__(key, value)


def network_condition(status, reason, message, at="2026-01-02T03:04:05Z"):
    """Sets the NetworkUnavailable condition as the agent's strategic merge patch does:
    merged in place by type, appended when absent (or when the list is)."""

    def fn(n):
        cond = {
            "type": "NetworkUnavailable",
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": at,
            "lastHeartbeatTime": at,
        }
        conditions = n["status"].setdefault("conditions", [])
        for i, c in enumerate(conditions):
            if c["type"] == "NetworkUnavailable":
                conditions[i] = cond
                return
        conditions.append(cond)

    return fn


network_ready = network_condition("False", "WgmeshReady", "wgmesh is running on this node")
network_broken = network_condition(
    "True",
    "WgmeshMisconfigured",
    "cluster-cidr does not contain this node's pod CIDR",
    at="2026-01-02T03:09:05Z",
)


def both(*fns):
    def fn(n):
        for f in fns:
            f(n)

    return fn


def set_status(field, value):
    return lambda n: n["status"].__setitem__(field, value)


def condition(type_, **changes):
    """Changes the fields of the condition of `type_`."""
    return lambda n: next(c for c in n["status"]["conditions"] if c["type"] == type_).update(changes)


def cases():
    a = node("node-a", annotations=dict(AD))
    bare = node("node-a")  # no annotations at all yet
    b = node("node-b", annotations=dict(AD, **{"wgmesh.io/endpoint": "192.0.2.2:51820"}))
    yield "agent publishes its first advertisement on its own node", request("node-a"), bare, changed(
        bare, lambda n: n["metadata"].__setitem__("annotations", dict(AD))
    ), True, None
    yield "agent changes its own endpoint", request("node-a"), a, changed(
        a, set_annotation("wgmesh.io/endpoint", "198.51.100.1:51820")
    ), True, None
    yield "agent removes its own pod-cidrs annotation", request("node-a"), a, changed(
        a, lambda n: n["metadata"]["annotations"].pop("wgmesh.io/pod-cidrs")
    ), True, None
    yield "agent re-publishes unchanged values", request("node-a"), a, copy.deepcopy(a), True, None
    yield "agent publishes its public endpoint and what it discovered", request("node-a"), a, changed(
        a, both(set_annotation("wgmesh.io/public-endpoint", "203.0.113.101:51820"),
                set_annotation("wgmesh.io/discovered-endpoints", '{"k": "203.0.113.121:51820"}'),
                set_annotation("wgmesh.io/no-direct-path", '["h2"]'))
    ), True, None
    yield "agent rewrites another node's discovered endpoints", request("node-b"), b, changed(
        b, set_annotation("wgmesh.io/discovered-endpoints", '{"k": "203.0.113.66:666"}')
    ), False, "may not change Node node-b"
    yield "agent asks for its own key rotation (administrator-owned)", request("node-a"), a, changed(
        a, set_annotation("wgmesh.io/rotate-key", "2026-12-02T00:00:00Z")
    ), False, "not wgmesh.io/rotate-key"
    yield "agent rewrites another node's endpoint", request("node-b"), b, changed(
        b, set_annotation("wgmesh.io/endpoint", "203.0.113.66:51820")
    ), False, "the wgmesh agent on node node-a may not change Node node-b"
    yield "agent rewrites another node's key", request("node-b"), b, changed(
        b, set_annotation("wgmesh.io/public-key", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    ), False, "may not change Node node-b"
    yield "agent sends a no-op update to another node", request("node-b"), b, copy.deepcopy(b), False, (
        "may not change Node node-b"
    )
    yield "token without the node-name extra", request("node-a", node_name=None, extra={
        "authentication.kubernetes.io/pod-name": ["wgmesh-abcde"]}), a, changed(
        a, set_annotation("wgmesh.io/endpoint", "198.51.100.1:51820")
    ), False, "no single node-name in its token"
    yield "token without any extra", request("node-a", node_name=None), a, changed(
        a, set_annotation("wgmesh.io/endpoint", "198.51.100.1:51820")
    ), False, "no single node-name in its token"
    yield "token with two node names", request("node-a", extra={NODE_NAME_EXTRA: ["node-a", "node-b"]}), a, changed(
        a, set_annotation("wgmesh.io/endpoint", "198.51.100.1:51820")
    ), False, "may not change Node node-a"
    yield "agent sets its own force-endpoint (user-owned)", request("node-a"), a, changed(
        a, set_annotation("wgmesh.io/force-endpoint", "vpn.example.com:51820")
    ), False, "not wgmesh.io/force-endpoint"
    yield "agent sets its own persistent-keepalive (user-owned)", request("node-a"), a, changed(
        a, set_annotation("wgmesh.io/persistent-keepalive", "25")
    ), False, "not wgmesh.io/persistent-keepalive"
    yield "agent changes a non-wgmesh annotation of its own node", request("node-a"), a, changed(
        a, set_annotation("example.com/owner", "mallory")
    ), False, "not example.com/owner"
    yield "agent labels its own node", request("node-a"), a, changed(
        a, lambda n: n["metadata"]["labels"].__setitem__("node-role.kubernetes.io/secrets", "")
    ), False, "labels, finalizers or owner references"
    yield "agent adds a finalizer to its own node", request("node-a"), a, changed(
        a, lambda n: n["metadata"].__setitem__("finalizers", ["example.com/block"])
    ), False, "labels, finalizers or owner references"
    yield "agent adds an owner reference to its own node", request("node-a"), a, changed(
        a, lambda n: n["metadata"].__setitem__("ownerReferences", [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"}])
    ), False, "labels, finalizers or owner references"
    yield "agent taints its own node", request("node-a"), a, changed(
        a, lambda n: n["spec"].__setitem__("taints", [{"key": "x", "effect": "NoSchedule"}])
    ), False, "spec"
    yield "agent cordons its own node", request("node-a"), a, changed(
        a, lambda n: n["spec"].__setitem__("unschedulable", True)
    ), False, "spec"
    yield "agent sets NetworkUnavailable=False on its own node", request("node-a", sub="status"), a, changed(
        a, network_ready
    ), True, None
    yield "agent sets NetworkUnavailable on another node", request("node-b", sub="status"), b, changed(
        b, network_ready
    ), False, "may not change Node node-b"
    yield "agent marks its own node not Ready", request("node-a", sub="status"), a, changed(
        a, lambda n: n["status"]["conditions"][1].__setitem__("status", "False")
    ), False, "only the NetworkUnavailable condition"
    # The whole status but the NetworkUnavailable condition stays as it was (issue #13).
    def st(node):
        return request(node, sub="status")

    ready, broken = changed(a, network_ready), changed(a, network_broken)
    no_conditions = changed(a, lambda n: n["status"].pop("conditions"))
    only_nu = "may change only the NetworkUnavailable condition of a Node's status, not "
    yield "agent sets NetworkUnavailable=True with its reason on its own node", st("node-a"), a, changed(
        a, network_broken
    ), True, None
    yield "agent turns its own NetworkUnavailable from False to True", st("node-a"), ready, changed(
        ready, network_broken
    ), True, None
    yield "agent turns its own NetworkUnavailable from True to False", st("node-a"), broken, changed(
        broken, network_ready
    ), True, None
    yield "agent adds NetworkUnavailable to a status without conditions", st("node-a"), no_conditions, changed(
        no_conditions, network_ready
    ), True, None
    yield "agent's patch returns the other conditions in another order", st("node-a"), ready, changed(
        ready, both(network_broken, lambda n: n["status"]["conditions"].reverse())
    ), True, None
    yield "agent rewrites its own node's addresses", st("node-a"), a, changed(
        a, set_status("addresses", [{"type": "InternalIP", "address": "203.0.113.66"}])
    ), False, only_nu + "status.addresses"
    yield "agent raises its own node's capacity", st("node-a"), a, changed(
        a, lambda n: n["status"]["capacity"].__setitem__("pods", "1000")
    ), False, only_nu + "status.capacity"
    yield "agent raises its own node's allocatable", st("node-a"), a, changed(
        a, lambda n: n["status"]["allocatable"].__setitem__("cpu", "64")
    ), False, only_nu + "status.allocatable"
    yield "agent rewrites its own node's kubelet version", st("node-a"), a, changed(
        a, lambda n: n["status"]["nodeInfo"].__setitem__("kubeletVersion", "v1.99.0")
    ), False, only_nu + "status.nodeInfo"
    yield "agent moves its own node's kubelet endpoint", st("node-a"), a, changed(
        a, set_status("daemonEndpoints", {"kubeletEndpoint": {"Port": 10251}})
    ), False, only_nu + "status.daemonEndpoints"
    yield "agent adds a status field that was absent", st("node-a"), a, changed(
        a, set_status("volumesInUse", ["kubernetes.io/csi/x^y"])
    ), False, only_nu + "status.volumesInUse"
    yield "agent removes a status field", st("node-a"), a, changed(
        a, lambda n: n["status"].pop("images")
    ), False, only_nu + "status.images"
    yield "agent adds another condition to its own node", st("node-a"), a, changed(
        a, lambda n: n["status"]["conditions"].append({"type": "DiskPressure", "status": "True"})
    ), False, only_nu + "condition DiskPressure"
    yield "agent removes another condition of its own node", st("node-a"), a, changed(
        a, lambda n: n["status"]["conditions"].pop(0)
    ), False, only_nu + "condition MemoryPressure"
    yield "agent replaces a condition by a copy of another", st("node-a"), a, changed(
        a, lambda n: n["status"]["conditions"].__setitem__(0, dict(n["status"]["conditions"][1]))
    ), False, only_nu + "condition MemoryPressure"
    yield "agent changes Ready along with its NetworkUnavailable", st("node-a"), ready, changed(
        ready, both(network_broken, condition("Ready", status="False", reason="Mallory"))
    ), False, only_nu + "condition Ready"
    yield "agent changes its addresses along with its NetworkUnavailable", st("node-a"), ready, changed(
        ready, both(network_broken, set_status("addresses", []))
    ), False, only_nu + "status.addresses"
    yield "agent sets NetworkUnavailable=True on another node", st("node-b"), b, changed(
        b, network_broken
    ), False, "may not change Node node-b"
    b_broken = changed(b, network_broken)
    yield "agent turns another node's NetworkUnavailable from True to False", st("node-b"), b_broken, changed(
        b_broken, network_ready
    ), False, "may not change Node node-b"
    # Through the main resource the API server restores status from the stored object
    # before admission; were it not so, the policy would still refuse.
    yield "agent changes its addresses through nodes (status not restored)", request("node-a"), a, changed(
        a, set_status("addresses", [{"type": "InternalIP", "address": "203.0.113.66"}])
    ), False, only_nu + "status.addresses"
    yield "agent labels its own node through nodes/status", request("node-a", sub="status"), a, changed(
        a, lambda n: n["metadata"]["labels"].__setitem__("example.com/x", "y")
    ), False, "labels, finalizers or owner references"
    yield "agent sets its own force-endpoint through nodes/status", request("node-a", sub="status"), a, changed(
        a, set_annotation("wgmesh.io/force-endpoint", "vpn.example.com:51820")
    ), False, "not wgmesh.io/force-endpoint"
    yield "agent rewrites another node's key through nodes/status", request("node-b", sub="status"), b, changed(
        b, set_annotation("wgmesh.io/public-key", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    ), False, "may not change Node node-b"
    yield "admin sets force-endpoint on any node", request("node-b", user="kubernetes-admin", node_name=None), b, changed(
        b, set_annotation("wgmesh.io/force-endpoint", "vpn.example.com:51820")
    ), True, None
    yield "admin changes another node's wgmesh key", request("node-b", user="kubernetes-admin", node_name=None), b, changed(
        b, set_annotation("wgmesh.io/public-key", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    ), True, None
    yield "kubelet of node-b updates its status", request("node-b", user="system:node:node-b", node_name=None, sub="status"), b, changed(
        b, lambda n: n["status"]["conditions"][1].__setitem__("status", "False")
    ), True, None
    yield "same-named service account in another namespace", request(
        "node-b", user="system:serviceaccount:other:wgmesh"), b, changed(
        b, set_annotation("wgmesh.io/endpoint", "203.0.113.66:51820")
    ), True, None


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "manifests/wgmesh.yaml"
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    policies = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    bindings = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    if len(policies) != 1 or len(bindings) != 1:
        raise SystemExit(f"{path}: expected one policy and one binding")
    policy, binding = policies[0], bindings[0]
    if binding["spec"]["policyName"] != policy["metadata"]["name"]:
        raise SystemExit("the binding does not name the policy")
    if binding["spec"].get("validationActions") != ["Deny"] or policy["spec"].get("failurePolicy") != "Fail":
        raise SystemExit("the policy must deny (validationActions [Deny], failurePolicy Fail)")
    p = Policy(policy, binding)
    failed = 0
    total = 0
    for name, req, old, new, want_allowed, want_message in cases():
        total += 1
        allowed, messages = p.admit(req, old, new)
        ok = allowed == want_allowed and (
            want_message is None or any(want_message in m for m in messages)
        )
        verdict = "allowed" if allowed else "denied: " + " | ".join(messages)
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {verdict}")
        if not ok:
            failed += 1
            expected = "allowed" if want_allowed else f"denied with {want_message!r}"
            print(f"     expected {expected}")
    print(f"admission policy: {total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
