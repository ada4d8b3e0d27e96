"""The deployment files: Kubernetes manifests against the Kubernetes schemas, their wiring to each other
and to the router's config, the compose file, and the IAM policy's shape."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from router.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # the oldest minor release still commonly run; the manifests use nothing newer
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}


def manifests() -> dict[str, dict[str, Any]]:
    """Every resource under deploy/kubernetes, by kind (one of each)."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in docs, f"{path.name}: a second {doc['kind']}"
            docs[doc["kind"]] = doc
    return docs


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    expected = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == expected


@pytest.mark.parametrize("kind", ["Deployment", "Service", "ServiceAccount", "ConfigMap", "PodDisruptionBudget"])
def test_builtin_resources_are_valid_against_the_kubernetes_schema(kind: str) -> None:
    kubernetes_validate.validate(manifests()[kind], KUBERNETES_VERSION, strict=True)


def test_custom_resources_have_the_shape_their_operators_need() -> None:
    """kubernetes-validate has no schemas for CRDs: check the fields KEDA and the Prometheus Operator read."""
    docs = manifests()
    assert {(d["apiVersion"], d["kind"]) for d in docs.values()} >= CRDS
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(docs["ServiceMonitor"], KUBERNETES_VERSION, strict=True)

    monitor = docs["ServiceMonitor"]["spec"]
    service = docs["Service"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"

    scaled = docs["ScaledObject"]["spec"]
    target = scaled["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", docs["Deployment"]["metadata"]["name"])
    assert 2 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    for trigger in scaled["triggers"]:
        assert trigger["type"] == "prometheus"
        assert set(trigger["metadata"]) == {"serverAddress", "query", "threshold"}
        assert float(trigger["metadata"]["threshold"]) > 0  # KEDA wants it as a string holding a number


def test_deployment_is_hardened_probed_and_drains_within_its_grace_period() -> None:
    docs = manifests()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    config = yaml.safe_load(docs["ConfigMap"]["data"]["router.yaml"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    containers = {c["name"]: c for c in pod["containers"]}
    for container in containers.values():
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert "memory" in container["resources"]["limits"]

    router = containers["router"]
    assert router["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert router["readinessProbe"]["httpGet"]["path"] == "/readyz"
    drain = sum(float(value.removesuffix("s")) for value in (
        config["server"]["drain_delay"], config["server"]["drain_timeout"], config["jobs"]["drain_timeout"]))
    assert pod["terminationGracePeriodSeconds"] > drain  # readiness fails, serving, requests, then jobs

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in router["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/var/lib/inference-router"]["name"]]  # writable state
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    config_mount = mounts["/etc/inference-router"]
    assert volumes[config_mount["name"]]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert "subPath" not in config_mount  # a subPath mount never sees ConfigMap updates: no reload path
    assert "/admin/reload" in " ".join(containers["config-reloader"]["args"])
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]

    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = docs[kind]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind
    env = {e["name"]: e.get("value") for e in router["env"]}
    assert env["ROUTER_CONFIG"] == f"{config_mount['mountPath']}/router.yaml"


def test_the_configmaps_router_config_is_valid() -> None:
    text = manifests()["ConfigMap"]["data"]["router.yaml"]
    cfg = parse_config(text, "configmap.yaml", {"ROUTER_ADMIN_TOKEN": "a-long-enough-admin-token"})
    assert cfg.state.kind == "aws"  # several replicas share S3 + SQS


def test_iam_policy_is_least_privilege_for_what_the_router_calls() -> None:
    policy = json.loads((DEPLOY / "iam-policy.json").read_text())
    assert policy["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in policy["Statement"]]
    assert len(sids) == len(set(sids))
    granted: set[str] = set()
    for statement in policy["Statement"]:
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}
        assert statement["Effect"] == "Allow"
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        resources = [statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]
        for action in actions:
            assert re.fullmatch(r"(s3|sqs|sagemaker|sns|iam):[A-Z][A-Za-z]+", action), action  # no wildcards
        for resource in resources:
            assert resource.startswith("arn:aws:"), resource  # never "*"
        granted.update(actions)
        if "iam:PassRole" in actions:
            assert statement["Condition"]["StringEquals"]["iam:PassedToService"] == "sagemaker.amazonaws.com"
    assert granted == {
        "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListBucket",
        "sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointAsync", "sagemaker:DescribeEndpoint",
        "sagemaker:CreateTransformJob", "sagemaker:DescribeTransformJob", "sagemaker:StopTransformJob",
        "iam:PassRole", "sns:Publish",
    }


def test_compose_runs_the_demo_with_prometheus_and_a_provisioned_grafana() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"router", "fraud-rt", "fraud-sls", "fraud-async", "prometheus", "grafana"}
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
    env = services["router"]["environment"]
    demo = (ROOT / "router" / "demo" / "demo.yaml").read_text()
    cfg = parse_config(demo, "demo.yaml", {k: str(v) for k, v in env.items()})
    assert cfg.backends["fraud-rt"].url.startswith("http://fraud-rt:9101/")
    assert cfg.backends["fraud-sls"].url.startswith("http://fraud-sls:9102/")
    assert cfg.backends["fraud-async"].url.startswith("http://fraud-async:9103/")
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["router:8080"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/inference-router.yaml").read_text())
    dashboards_mount = next(v for v in services["grafana"]["volumes"] if v.startswith("./grafana/dashboards:"))
    assert provider["providers"][0]["options"]["path"] == dashboards_mount.split(":")[1]


def _version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


def test_every_deploy_file_and_the_readme_name_one_image_tag() -> None:
    tag = f"inference-router:{_version()}"
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    images = {c["image"] for c in pod["containers"]}
    images |= {s["image"] for name, s in compose.items() if name not in ("prometheus", "grafana")}
    assert images == {tag}
    for text in ((ROOT / "Dockerfile").read_text(), (ROOT / "README.md").read_text()):
        named = set(re.findall(r"(?:-t |ro )(inference-router(?::[\w.-]+)?)\b", text))
        assert named == {tag}, named


def _listen_port(text: str, env: dict[str, str]) -> int:
    return parse_config(text, "router.yaml", env).server.port


def test_the_deploy_files_serve_on_their_configs_listen_address() -> None:
    """No --host/--port overrides anywhere: each container listens where its config says, and its ports, probes and
    health checks agree."""
    docs = manifests()
    router = next(c for c in docs["Deployment"]["spec"]["template"]["spec"]["containers"] if c["name"] == "router")
    configmap_port = _listen_port(docs["ConfigMap"]["data"]["router.yaml"], {"ROUTER_ADMIN_TOKEN": "t" * 20})
    assert router["args"] == ["serve"]
    assert [p["containerPort"] for p in router["ports"]] == [configmap_port]
    reloader = next(c for c in docs["Deployment"]["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "config-reloader")
    assert f"http://127.0.0.1:{configmap_port}/admin/reload" in reloader["args"][0]

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["router"]
    env = {k: str(v) for k, v in compose["environment"].items()}
    assert "--port" not in compose["command"]
    assert "--host" not in compose["command"]
    demo = (ROOT / "router" / "demo" / "demo.yaml").read_text()
    assert parse_config(demo, "demo.yaml", env).server.host == "0.0.0.0"  # reachable from the other containers
    assert compose["ports"] == [f"8080:{_listen_port(demo, env)}"]
    assert _listen_port(demo, {}) == 8080
    assert parse_config(demo, "demo.yaml", {}).server.host == "127.0.0.1"

    dockerfile = (ROOT / "Dockerfile").read_text()
    baked = (ROOT / "policies" / "default.yaml").read_text()
    assert "COPY policies/default.yaml /etc/inference-router/router.yaml" in dockerfile
    assert f"EXPOSE {_listen_port(baked, {})}" in dockerfile
    assert 'CMD ["serve"]' in dockerfile
    assert "ROUTER_CONFIG=/etc/inference-router/router.yaml" in dockerfile
    assert "load_config(os.environ['ROUTER_CONFIG']).server" in dockerfile  # the health check follows the config
