"""No Docker engine or kubectl here: check the deploy files' structure instead of running them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_compose_has_postgres_three_gateways_and_nginx() -> None:
    compose = load("compose.yaml")
    services = compose["services"]
    assert {"postgres", "gateway-1", "gateway-2", "gateway-3", "nginx"} <= services.keys()
    for i in (1, 2, 3):
        gw = services[f"gateway-{i}"]
        assert gw["environment"]["DATABASE_URL"].startswith("postgresql://")
        assert gw["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["nginx"]["ports"] == ["8080:8080"]
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert sorted(re.findall(r"server (gateway-\d):8787", nginx)) == ["gateway-1", "gateway-2", "gateway-3"]
    assert "proxy_buffering off" in nginx


def test_dockerfile_runs_as_non_root_and_serves() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER spendgate$", text, re.M)
    assert 'CMD ["spendgate", "serve"]' in text


def test_kubernetes_manifests() -> None:
    deployment = load("k8s/deployment.yaml")
    assert deployment["apiVersion"] == "apps/v1" and deployment["kind"] == "Deployment"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    pdb = load("k8s/pdb.yaml")
    assert pdb["kind"] == "PodDisruptionBudget" and pdb["spec"]["selector"]["matchLabels"] == labels
    service = load("k8s/service.yaml")
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    job = load("k8s/migrate-job.yaml")
    assert job["kind"] == "Job" and job["spec"]["template"]["spec"]["containers"][0]["args"] == ["spendgate", "migrate"]
