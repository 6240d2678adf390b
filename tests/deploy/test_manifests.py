"""No Docker engine or kubectl here. The deploy files are checked as far as that allows: the Kubernetes manifests
against the API schemas and the compose file against the compose-spec schema (both offline, bundled in dev
packages), their structure and rollout behaviour, and the Dockerfile's image layout run for real without Docker
(its build RUN line, COPY lines, ENV and CMD against a temp prefix and an empty database)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness.cluster import free_port
from harness.pg import database_beside

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


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


# --- schema validation, offline: kubernetes-validate bundles the Kubernetes API schemas, check-jsonschema vendors
# the compose-spec schema -------------------------------------------------------------------------------------

K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
K8S_OLDEST = "1.29"  # the oldest Kubernetes we claim (deploy/README.md); and the newest schemas the package has


def k8s_versions() -> list[str]:
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions

    oldest = next(v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 29))
    return sorted({oldest.rsplit(".", 1)[0], kubernetes_validate.latest_version().rsplit(".", 1)[0]})


def test_k8s_files_are_all_checked() -> None:
    assert {f.name for f in K8S_FILES} == {"deployment.yaml", "service.yaml", "pdb.yaml", "migrate-job.yaml",
                                           "secret.example.yaml"}
    assert k8s_versions()[0] == K8S_OLDEST


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_kubernetes_manifest_matches_the_api_schema(path: Path) -> None:
    """Strict: unknown fields (a misspelt probe, a field at the wrong level) are errors, as `kubectl apply
    --validate=strict` would make them."""
    import kubernetes_validate

    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, path
    for doc in docs:
        for version in k8s_versions():
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("mistake", ["misspelt field", "wrong type", "missing required"])
def test_kubernetes_schema_validation_catches_mistakes(mistake: str) -> None:
    import kubernetes_validate

    deployment = load("k8s/deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if mistake == "misspelt field":
        container["readinessProbes"] = container.pop("readinessProbe")
    elif mistake == "wrong type":
        deployment["spec"]["replicas"] = "three"
    else:
        del container["name"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, k8s_versions()[-1], strict=True)


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=60)


def test_compose_file_matches_the_compose_spec() -> None:
    result = check_compose(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_validation_catches_mistakes(tmp_path: Path) -> None:
    compose = load("compose.yaml")
    compose["services"]["nginx"]["depends_on"]["gateway-1"]["condition"] = "when_ready"  # not in the enum
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(compose))
    result = check_compose(bad)
    assert result.returncode == 1 and "when_ready" in result.stdout, result.stdout + result.stderr


# --- rollout behaviour the files must keep -----------------------------------------------------------------------


def test_deployment_drains_before_sigterm_and_probes_the_right_endpoints() -> None:
    deployment = load("k8s/deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and 5 <= int(command[1])
    # the grace period covers the preStop sleep plus time for in-flight calls to finish after SIGTERM
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + 30
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = load("k8s/pdb.yaml")
    # a node drain can always proceed (one pod at a time) and never takes the service down
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    job = load("k8s/migrate-job.yaml")
    job_container = job["spec"]["template"]["spec"]["containers"][0]
    assert job_container["image"] == container["image"]
    assert job_container["envFrom"] == container["envFrom"]


# --- the Dockerfile -----------------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def test_dockerfile_slim_non_root_with_healthcheck() -> None:
    stages = dockerfile_stages()
    froms = [args for stage in stages for instr, args in stage if instr == "FROM"]
    assert froms and all(re.match(r"python:[\d.]+-slim\b", f) for f in froms), froms
    final = dict(stages[-1])  # the last value of each instruction in the final stage
    assert final["USER"] not in ("root", "0") and not final["USER"].startswith("0:")
    uid = re.search(r"useradd [^&]*--uid (\d+)", final["RUN"])
    pod = load("k8s/deployment.yaml")["spec"]["template"]["spec"]
    assert uid and int(uid.group(1)) == pod["securityContext"]["runAsUser"]
    assert "/healthz" in final["HEALTHCHECK"] and final["HEALTHCHECK"].startswith("--")
    assert final["CMD"] == '["spendgate", "serve"]'


def test_migrations_take_the_advisory_lock() -> None:
    """What makes replicas starting together safe (exercised for real by the image-layout test below)."""
    env_py = (ROOT / "gateway" / "migrations" / "env.py").read_text()
    assert re.search(r"pg_advisory_xact_lock\(:k\)\"\), \{\"k\": MIGRATION_LOCK_KEY\}", env_py)


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    with database_beside(database_url, "spendgate_image") as empty:
        yield empty


@pytest.mark.timeout(240)
def test_image_layout_serves_and_migrates(tmp_path: Path, empty_database: str) -> None:
    """The image without Docker: the build stage's own RUN line (pip pointed at a temp prefix), the final stage's
    COPY lines into a temp /app, its ENV, its CMD; the package and its migrations come from the installed copy.
    Three replicas start together on an empty database (so they race for the migrations), all become ready; the
    HEALTHCHECK command passes; the migration Job's command succeeds on the migrated database."""
    build, final = dockerfile_stages()[0], dockerfile_stages()[-1]
    src, prefix, app = tmp_path / "src", tmp_path / "install", tmp_path / "app"
    for stage, root in ((build, src), (final, app)):
        workdir = root
        for instr, args in stage:
            if instr == "WORKDIR":
                workdir = root
            elif instr == "COPY" and "--from=" not in args:
                *sources, dest = [a for a in args.split() if not a.startswith("--")]
                target = workdir / dest
                for source in sources:
                    path = ROOT / source
                    to = target / path.name if dest.endswith("/") or len(sources) > 1 else target
                    to.parent.mkdir(parents=True, exist_ok=True)
                    (shutil.copytree if path.is_dir() else shutil.copy)(path, to)
    [run] = [args for instr, args in build if instr == "RUN"]
    assert "pip install " in run and "/install" in run, run
    # never touch this venv's own install: --ignore-installed; the dependencies are already here: --no-deps;
    # offline: the build backend is this venv's setuptools (a dev dependency)
    run = run.replace("pip install ", f"{sys.executable} -m pip install --no-deps --ignore-installed --quiet "
                                      "--no-build-isolation ")
    run = run.replace("/install", str(prefix))
    app.mkdir(exist_ok=True)
    built = subprocess.run(["bash", "-ec", run], cwd=src, capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stdout + built.stderr
    site = next(prefix.glob("lib/python*/site-packages"))
    assert (prefix / "bin" / "spendgate").exists()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPENDGATE_", "PYTHON"))}
    for instr, args in final:
        if instr == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    # /usr/local is the image interpreter's own prefix; here it is a temp prefix, so add it to the path
    paths = [re.sub(r"^/app\b", str(app), p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(site)])
    # the image's /usr/local/bin has python (the HEALTHCHECK calls it) and spendgate
    env["PATH"] = os.pathsep.join([str(prefix / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(DATABASE_URL=empty_database, SPENDGATE_ADMIN_TOKEN="image-test", SPENDGATE_HOST="127.0.0.1",
               SPENDGATE_DB_POOL_MAX="3")
    where = subprocess.run([sys.executable, "-c", "import gateway.db as d; print(d.__file__, d.MIGRATIONS_DIR)"],
                           env=env, cwd=app, capture_output=True, text=True, timeout=30)
    module, migrations = where.stdout.split()
    assert Path(module).is_relative_to(site) and Path(migrations).is_relative_to(site), where.stdout + where.stderr
    assert sorted(p.name for p in Path(migrations).glob("versions/*.py")) == sorted(
        p.name for p in (ROOT / "gateway" / "migrations").glob("versions/*.py")), where.stdout

    cmd = json.loads(dict(final)["CMD"])
    ports = [free_port() for _ in range(3)]
    logs = [(tmp_path / f"replica-{port}.log").open("wb") for port in ports]
    replicas = [subprocess.Popen([str(prefix / "bin" / cmd[0]), *cmd[1:]], env={**env, "SPENDGATE_PORT": str(p)},
                                 cwd=app, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                for p, log in zip(ports, logs, strict=True)]
    try:
        deadline = time.monotonic() + 90
        for port, replica in zip(ports, replicas, strict=True):
            while True:
                assert replica.poll() is None, (tmp_path / f"replica-{port}.log").read_text()[-3000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / f"replica-{port}.log").read_text()[-3000:]
                time.sleep(0.1)
        healthcheck = dict(final)["HEALTHCHECK"].split(" CMD ", 1)[1].replace("8787", str(ports[0]))
        probe = subprocess.run(["sh", "-c", healthcheck], env=env, capture_output=True, text=True, timeout=10)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        job = load("k8s/migrate-job.yaml")["spec"]["template"]["spec"]["containers"][0]["args"]
        migrated = subprocess.run([str(prefix / "bin" / job[0]), *job[1:]], env=env, cwd=app, capture_output=True,
                                  text=True, timeout=60)
        assert migrated.returncode == 0 and "migrations: up to date" in migrated.stdout, migrated.stderr[-3000:]
    finally:
        for replica in replicas:
            replica.terminate()
        for replica in replicas:
            try:
                replica.wait(20)
            except subprocess.TimeoutExpired:
                replica.kill()
                replica.wait(5)
        for log in logs:
            log.close()
