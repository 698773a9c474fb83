"""A tiny fake Kubernetes API server, bound to 127.0.0.1, for rendering the chart offline.

Helm has no dry run in the library we can install here, but an install against an API server
returns the rendered manifest. This server answers what Helm asks during an install: version,
discovery, the release Secrets, creates, gets, lists and watches. It marks Jobs complete and
Pods succeeded on creation, so hooks and `helm test` finish. It keeps everything in memory.
"""

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

# group/version -> [(resource, kind, namespaced)]
RESOURCES = {
    "v1": [
        ("secrets", "Secret", True), ("configmaps", "ConfigMap", True),
        ("services", "Service", True), ("serviceaccounts", "ServiceAccount", True),
        ("pods", "Pod", True), ("namespaces", "Namespace", False),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True), ("events", "Event", True),
    ],
    "apps/v1": [("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True),
                ("replicasets", "ReplicaSet", True), ("daemonsets", "DaemonSet", True)],
    "batch/v1": [("jobs", "Job", True), ("cronjobs", "CronJob", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True), ("ingresses", "Ingress", True)],
    "rbac.authorization.k8s.io/v1": [("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True),
                                 ("prometheusrules", "PrometheusRule", True)],
}


def _resource_list(group_version):
    return {
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
        "resources": [
            {"name": r, "singularName": k.lower(), "namespaced": ns, "kind": k,
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
            for r, k, ns in RESOURCES[group_version]
        ],
    }


def _group_list():
    groups = []
    for gv in RESOURCES:
        if "/" not in gv:
            continue
        group, version = gv.split("/")
        entry = {"groupVersion": gv, "version": version}
        groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _kind_of(collection):
    """'api/v1/namespaces/ns/serviceaccounts' -> {'kind': 'ServiceAccount', 'apiVersion': 'v1'}"""
    parts = collection.split("/")
    resource = parts[-1]
    gv = parts[1] if parts[0] == "api" else f"{parts[1]}/{parts[2]}"
    for name, kind, _ in RESOURCES.get(gv, []):
        if name == resource:
            return {"kind": kind, "apiVersion": gv}
    return {"kind": "Unknown", "apiVersion": gv}


def _status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _mark_done(obj):
    """Report hooks and workloads as finished, so Helm's waits return at once."""
    kind = obj.get("kind")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if kind == "Job":
        obj["status"] = {"succeeded": 1, "startTime": now, "completionTime": now,
                         "conditions": [{"type": "Complete", "status": "True"}]}
    elif kind == "Pod":
        obj["status"] = {"phase": "Succeeded"}
    elif kind == "Deployment":
        replicas = obj.get("spec", {}).get("replicas", 1)
        obj["status"] = {"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas,
                         "availableReplicas": replicas, "updatedReplicas": replicas}


class _Store:
    def __init__(self):
        self.objects = {}  # collection path -> {name: obj}
        self.lock = threading.Lock()
        self.version = 1


class _Handler(BaseHTTPRequestHandler):
    store = None
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        return json.loads(raw or b"{}")

    def _refuse_protobuf(self):
        """Helm stores its release records as Secrets through a typed client that speaks
        protobuf; decode just those. Chart objects arrive as JSON."""
        if "protobuf" not in (self.headers.get("Content-Type") or ""):
            return False
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            secret = _decode_secret(raw)
        except Exception as e:  # noqa: BLE001 - answer, never crash the fake server
            self._send(415, _status(415, "UnsupportedMediaType", f"cannot decode: {e}"))
            return True
        coll, _ = self._split(urlparse(self.path).path.rstrip("/"))
        self._save(coll, secret, 201 if self.command == "POST" else 200)
        return True

    def _split(self, path):
        """-> (collection path, name or None)"""
        parts = [p for p in path.split("/") if p]
        # /api/v1/namespaces/ns/secrets[/name] or /apis/g/v/namespaces/ns/res[/name]
        base = 2 if parts[0] == "api" else 3
        rest = parts[base:]
        if rest and rest[0] == "namespaces" and len(rest) >= 3:
            coll = "/".join(parts[:base] + rest[:3])
            name = rest[3] if len(rest) > 3 else None
        else:
            coll = "/".join(parts[:base] + rest[:1])
            name = rest[1] if len(rest) > 1 else None
        return coll, name

    def do_GET(self):
        url = urlparse(self.path)
        path = url.path.rstrip("/")
        query = parse_qs(url.query)
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0",
                                    "platform": "linux/amd64"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            return self._send(200, _group_list())
        if path == "/api/v1":
            return self._send(200, _resource_list("v1"))
        if path.startswith("/apis/") and path.count("/") == 3:
            gv = path[len("/apis/"):]
            if gv in RESOURCES:
                return self._send(200, _resource_list(gv))
        if path == "/openapi/v2":
            # An empty OpenAPI document (the client asks for protobuf; zero bytes is a valid,
            # empty message). Objects are validated by kubernetes-validate afterwards.
            self.send_response(200)
            self.send_header("Content-Type", "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path.startswith("/openapi"):
            return self._send(404, _status(404, "NotFound", "no openapi here"))
        coll, name = self._split(path)
        with self.store.lock:
            items = dict(self.store.objects.get(coll, {}))
        if name:
            if name in items:
                return self._send(200, items[name])
            return self._send(404, _status(404, "NotFound", f"{name} not found"))
        selector = query.get("labelSelector", [""])[0]
        field = query.get("fieldSelector", [""])[0]
        wanted = dict(p.split("=", 1) for p in selector.split(",") if "=" in p)
        wanted_name = field.split("=", 1)[1] if field.startswith("metadata.name=") else None
        matching = [o for o in items.values()
                    if all(o.get("metadata", {}).get("labels", {}).get(k) == v for k, v in wanted.items())
                    and (wanted_name is None or o["metadata"]["name"] == wanted_name)]
        if query.get("watch", ["false"])[0] in ("true", "1"):
            events = b"".join(json.dumps({"type": "ADDED", "object": o}).encode() + b"\n" for o in matching)
            if query.get("sendInitialEvents", ["false"])[0] == "true":
                # A streaming list ends its initial events with this bookmark.
                bookmark = {"type": "BOOKMARK", "object": {
                    **_kind_of(coll),
                    "metadata": {"resourceVersion": str(self.store.version),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}}
                events += json.dumps(bookmark).encode() + b"\n"
            time.sleep(0.2)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(events)))
            self.end_headers()
            self.wfile.write(events)
            return
        return self._send(200, {"kind": "List", "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(self.store.version)},
                                "items": matching})

    def _save(self, coll, obj, code):
        meta = obj.setdefault("metadata", {})
        with self.store.lock:
            self.store.version += 1
            meta.setdefault("uid", str(uuid.uuid4()))
            meta["resourceVersion"] = str(self.store.version)
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            meta.setdefault("generation", 1)
            _mark_done(obj)
            self.store.objects.setdefault(coll, {})[meta["name"]] = obj
        self._send(code, obj)

    def do_POST(self):
        if self._refuse_protobuf():
            return
        coll, _ = self._split(urlparse(self.path).path.rstrip("/"))
        obj = self._body()
        name = obj.get("metadata", {}).get("name")
        with self.store.lock:
            exists = name in self.store.objects.get(coll, {})
        if exists:
            return self._send(409, _status(409, "AlreadyExists", f"{name} already exists"))
        self._save(coll, obj, 201)

    def do_PUT(self):
        if self._refuse_protobuf():
            return
        coll, _ = self._split(urlparse(self.path).path.rstrip("/"))
        self._save(coll, self._body(), 200)

    def do_PATCH(self):
        if self._refuse_protobuf():
            return
        coll, name = self._split(urlparse(self.path).path.rstrip("/"))
        with self.store.lock:
            current = self.store.objects.get(coll, {}).get(name)
        if current is None:
            return self._send(404, _status(404, "NotFound", f"{name} not found"))
        patch = self._body()
        merged = _merge(current, patch)
        self._save(coll, merged, 200)

    def do_DELETE(self):
        self._body()  # delete options; read so the connection stays in sync
        coll, name = self._split(urlparse(self.path).path.rstrip("/"))
        with self.store.lock:
            existed = self.store.objects.get(coll, {}).pop(name, None)
        if existed is None:
            return self._send(404, _status(404, "NotFound", f"{name} not found"))
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def _fields(buf):
    """Yields (field number, wire type, value) from a protobuf message."""
    i = 0

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 2:
            n = varint()
            yield number, wire, buf[i:i + n]
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")


def _map_entry(buf):
    key = value = b""
    for number, _, v in _fields(buf):
        if number == 1:
            key = v
        elif number == 2:
            value = v
    return key.decode(), value


def _decode_secret(raw):
    """k8s protobuf envelope -> a JSON-shaped Secret (name, namespace, labels, data, type)."""
    import base64
    if not raw.startswith(b"k8s\x00"):
        raise ValueError("not a kubernetes protobuf envelope")
    inner = next(v for n, _, v in _fields(raw[4:]) if n == 2)
    meta, data, kind_type = {"labels": {}}, {}, "Opaque"
    for number, _, value in _fields(inner):
        if number == 1:
            for n, _, v in _fields(value):
                if n == 1:
                    meta["name"] = v.decode()
                elif n == 3:
                    meta["namespace"] = v.decode()
                elif n == 11:
                    k, val = _map_entry(v)
                    meta["labels"][k] = val.decode()
        elif number == 2:
            k, val = _map_entry(value)
            data[k] = base64.b64encode(val).decode()
        elif number == 4:
            kind_type = value.decode()
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": data, "type": kind_type}


def _merge(base, patch):
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return patch
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(base.get(k), v)
    return out


def start():
    """Starts the server on 127.0.0.1 and a free port; returns (server, kubeconfig yaml)."""
    handler = type("Handler", (_Handler,), {"store": _Store()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    kubeconfig = f"""apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
users:
- name: fake
  user:
    token: fake
"""
    return server, kubeconfig
