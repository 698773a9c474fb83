"""Lints, renders and validates the Helm chart offline, then asserts its policies.

Run through `make helm-check`. Steps:
  1. helm lint (Helm's own Go library, via helm-sdkpy);
  2. render with the default values and every ci/*-values.yaml, by installing into a fake
     API server (fake_kube.py) and reading the release manifest and hooks back;
  3. validate every rendered object against the Kubernetes schemas (kubernetes-validate);
  4. assert the chart's policies: resources, probes and a secure context on every container,
     no "latest" tags, selectors stable across upgrades, secrets only from existing Secrets;
  5. check that the values schema rejects bad values.
"""

import asyncio
import os
import pathlib
import re
import sys

# Release records stay in memory: the typed Secrets client speaks protobuf, which the fake
# server does not; every chart object goes through the JSON (unstructured) client. Set before
# Helm's Go library loads, because Go reads the environment once at start.
os.environ["HELM_DRIVER"] = "memory"

import helm_sdkpy as helm  # noqa: E402
import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402

import fake_kube  # noqa: E402

CHART = pathlib.Path(__file__).resolve().parents[2] / "helm" / "palisade"
K8S_VERSION = "1.30.0"
# CRDs have no bundled schema; they are checked by the policy assertions instead.
SKIP_SCHEMA_KINDS = {"ServiceMonitor", "PrometheusRule"}
SECRET_ENV = re.compile(r"SECRET|PASSWORD|CREDENTIAL|KEYS|DATABASE_URL|REDIS_URL")
PUBLIC_ENV = {"PALISADE_TOKEN_BROKER__ENCRYPTION__KEY_VAULT__VAULT_URL",
              "PALISADE_NOTIFIER__ENCRYPTION__KEY_VAULT__VAULT_URL"}
STABLE_SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}

failures = []


def fail(message):
    failures.append(message)
    print(f"  FAIL {message}")


async def render(values, release):
    server, kubeconfig = fake_kube.start()
    try:
        config = helm.Configuration(namespace="default", kubeconfig=kubeconfig)
        result = await helm.Install(config).run(release, str(CHART), values=values, wait=False, timeout=60)
    finally:
        server.shutdown()
    docs = [d for d in yaml.safe_load_all(result.get("manifest", "")) if d]
    for hook in result.get("hooks") or []:
        docs.extend(d for d in yaml.safe_load_all(hook.get("manifest", "")) if d)
    return docs


def containers_of(obj):
    kind = obj["kind"]
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        spec = obj["spec"]["template"]["spec"]
    elif kind == "Pod":
        spec = obj["spec"]
    else:
        return None, []
    return spec, spec.get("initContainers", []) + spec.get("containers", [])


def check_policies(name, docs):
    kinds = {}
    for obj in docs:
        kinds.setdefault(obj["kind"], 0)
        kinds[obj["kind"]] += 1
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Secret":
            fail(f"{where}: the chart must not create Secrets (use existingSecret references)")
        pod_spec, containers = containers_of(obj)
        if pod_spec is not None:
            psc = pod_spec.get("securityContext", {})
            if not psc.get("runAsNonRoot"):
                fail(f"{where}: pod securityContext.runAsNonRoot is not true")
            if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                fail(f"{where}: seccompProfile is not RuntimeDefault")
        for c in containers:
            cw = f"{where} container {c['name']}"
            image = c.get("image", "")
            if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
                fail(f"{cw}: image {image!r} is unpinned or latest")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits", {}).get("memory"):
                fail(f"{cw}: missing resource requests or a memory limit")
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(f"{cw}: root filesystem is not read-only")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{cw}: privilege escalation is allowed")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                fail(f"{cw}: capabilities are not all dropped")
            for env in c.get("env", []):
                if "value" in env and SECRET_ENV.search(env["name"]) and env["name"] not in PUBLIC_ENV:
                    fail(f"{cw}: {env['name']} carries a literal value; secrets come from existing Secrets")
            if obj["kind"] == "Deployment":
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    if "grpc" not in c.get(probe, {}):
                        fail(f"{cw}: {probe} is not a native gRPC probe")
        if obj["kind"] == "Deployment":
            selector = obj["spec"]["selector"]["matchLabels"]
            if set(selector) != STABLE_SELECTOR_KEYS:
                fail(f"{where}: selector {selector} is not exactly the stable labels")
            template_labels = obj["spec"]["template"]["metadata"]["labels"]
            if any(template_labels.get(k) != v for k, v in selector.items()):
                fail(f"{where}: pod labels do not match the selector")
            if "checksum/config" not in obj["spec"]["template"]["metadata"].get("annotations", {}):
                fail(f"{where}: no checksum/config annotation")
            grace = obj["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            if grace <= 20:
                fail(f"{where}: terminationGracePeriodSeconds {grace} is not above the shutdown deadline")
    return kinds


REPO = pathlib.Path(__file__).resolve().parents[2]
BINARIES = REPO / "target" / "debug"
# Stand-ins for values that come from Secrets: well-formed, so the services' own validation runs.
SECRET_STANDINS = {
    "DATABASE_URL": "postgres://palisade:placeholder@postgres:5432/palisade",
    "REDIS_URL": "redis://redis:6379",
    "PALISADE_NOTIFIER__KEK__KEYS": "v1:" + "A" * 43 + "=",
    "PALISADE_TOKEN_BROKER__KEK__KEYS": "v1:" + "A" * 43 + "=",
}
# Services whose binary takes `check-config` (the shared service command line).
CHECKABLE = {"token-broker", "alert-ingest", "compliance"}


def check_service_configs(name, docs):
    """Runs each service binary's `check-config` with the config and environment the chart gives
    its pod, so a key the service does not know fails here, not at 3 a.m. in a rollout."""
    import subprocess
    import tempfile
    configs = {d["metadata"]["name"]: d["data"]["config.toml"] for d in docs if d["kind"] == "ConfigMap"}
    for obj in docs:
        if obj["kind"] != "Deployment":
            continue
        container = obj["spec"]["template"]["spec"]["containers"][0]
        component = container["name"]
        if component not in CHECKABLE:
            continue
        binary = BINARIES / f"palisade-{component}"
        if not binary.exists():
            fail(f"{name}: {binary} is missing; build the binaries first (make helm-check does)")
            continue
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
        for var in container.get("env", []):
            env[var["name"]] = var["value"] if "value" in var else SECRET_STANDINS.get(var["name"], "placeholder")
        volume = next(v for v in obj["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(configs[volume["configMap"]["name"]])
        env["PALISADE_CONFIG"] = f.name
        result = subprocess.run([str(binary), "check-config"], env=env, capture_output=True, text=True, timeout=60)
        os.unlink(f.name)
        if result.returncode != 0:
            fail(f"{name}: {component} refuses the chart's configuration: {result.stderr.strip()[-300:]}")


def check_compose():
    """The compose file parses, and each Palisade service in it accepts its environment."""
    import re
    import subprocess
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    for required in ("postgres", "redis", "otel-collector", "jaeger", "ms-sim", "token-broker", "alert-ingest", "notifier", "compliance"):
        if required not in services:
            fail(f"compose: no {required} service")
    if "--appendonly" not in services["redis"]["command"] or "noeviction" not in services["redis"]["command"]:
        fail("compose: Redis must run with AOF and noeviction")
    for component in CHECKABLE:
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
        for key, value in services[component]["environment"].items():
            # ${VAR:?message} must be supplied by the user; stand in a well-formed value.
            def stand_in(match):
                if "KEK" in match.group(0):
                    return "v1:" + "A" * 43 + "="
                return "pal_0123456789abcdef_" + "A" * 43
            env[key] = re.sub(r"\$\{[^}]+\}", stand_in, str(value))
        result = subprocess.run([str(BINARIES / f"palisade-{component}"), "check-config"], env=env,
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            fail(f"compose: {component} refuses its environment: {result.stderr.strip()[-300:]}")
        grpc = services[component]["environment"].get(f"PALISADE_{component.upper().replace('-', '_')}__SERVER__GRPC_LISTEN", "")
        published = [p.split(":")[-1] for p in services[component].get("ports", [])]
        if grpc.split(":")[-1] not in published:
            fail(f"compose: {component} listens on {grpc} but publishes {published}")


def validate_schemas(name, docs):
    for obj in docs:
        if obj["kind"] in SKIP_SCHEMA_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} is invalid: {e.message} at {list(e.path)}")


async def main():
    print("helm lint")
    lint = await helm.Lint(helm.Configuration(namespace="default")).run(str(CHART))
    messages = lint.get("messages") or []
    for m in messages:
        severity = str(m.get("severity", m.get("Severity", "")))
        text = m.get("message", m.get("Err", m))
        print(f"  {severity} {text}")
        if "ERROR" in severity.upper() or severity in ("3", "4"):
            fail(f"lint: {text}")

    variants = {"default": {}}
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        variants[path.stem] = yaml.safe_load(path.read_text()) or {}
    for name, values in variants.items():
        print(f"render + validate: {name}")
        docs = await render(values, f"palisade-{name.replace('-values', '')}"[:30])
        validate_schemas(name, docs)
        kinds = check_policies(name, docs)
        check_service_configs(name, docs)
        print(f"  {sum(kinds.values())} objects: " + ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())))
        expected = {"Deployment", "Service", "ConfigMap", "Job", "Pod"}
        missing = expected - set(kinds)
        if missing:
            fail(f"{name}: missing kinds {sorted(missing)}")
        if name == "ha-values":
            for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Ingress",
                         "ServiceMonitor", "PrometheusRule"):
                if kind not in kinds:
                    fail(f"{name}: expected a {kind}")

    print("compose file matches the services' configuration")
    check_compose()

    print("values schema rejects bad values")
    bad_values = {
        "latest tag": {"image": {"tag": "latest"}},
        "negative replicas": {"services": {"tokenBroker": {"replicaCount": -1}}},
        "unknown provider": {"encryption": {"provider": "vault"}},
        "root user": {"podSecurityContext": {"runAsNonRoot": False}},
        "unknown key": {"replicas": 3},
        "keyvault without url": {"encryption": {"provider": "azureKeyVault"}},
        "vault transit without address": {"encryption": {"provider": "vaultTransit",
                                                          "vaultTransit": {"existingSecret": {"name": "t"}}}},
        "vault transit without token secret": {"encryption": {"provider": "vaultTransit",
                                                               "vaultTransit": {"address": "https://vault:8200"}}},
    }
    for label, values in bad_values.items():
        try:
            await render(values, "palisade-bad")
        except helm.HelmError as e:
            print(f"  refused {label}: {str(e).splitlines()[0][:120]}")
        else:
            fail(f"schema accepted bad values: {label}")

    if failures:
        print(f"\n{len(failures)} chart check(s) failed")
        sys.exit(1)
    print("\nchart checks passed")


if __name__ == "__main__":
    asyncio.run(main())
