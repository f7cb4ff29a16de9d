"""config/kubernetes/: the manifests pass kubernetes-validate (the test extras' schema validator, its schemas bundled),
and what each pod of the StatefulSet would run — its arguments and environment as the kubelet expands them, the
ConfigMap's config, the Secret's files — loads as three instances that split the market, each writing only where
the pod lets it write."""
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from marketfeed.cli.main import parser
from marketfeed.cli.service import RunFlags
from marketfeed.config.instance import Instance, instance_of, sharded
from marketfeed.config.loader import ConfigError, load
from marketfeed.config.schema import Config
from marketfeed.feeds.polygon import PolygonOptions
from marketfeed.telemetry.http import parse_listen
from tests.support.questdb import REPO

KUBERNETES = REPO / "config/kubernetes"
VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"  # the test extras' kubernetes-validate
# The oldest and the newest Kubernetes whose schemas kubernetes-validate 1.37 bundles.
VERSIONS = ("1.25.0", "1.37.0")
SECRETS = {"questdb-conf": "http::addr=questdb:9000;username=admin;password=not-quest-1;",
           "questdb-pg-dsn": "host=questdb port=8812 user=admin password=not-quest-1 dbname=qdb",
           "polygon-api-key": "polygon-key-for-the-test"}

Doc = dict[str, Any]


def kustomization() -> Doc:
    return yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())


def manifests() -> list[Path]:
    return [KUBERNETES / name for name in kustomization()["resources"]]


def resource(kind: str) -> Doc:
    found = [doc for path in manifests() for doc in yaml.safe_load_all(path.read_text()) if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def validate(*paths: Path, version: str) -> subprocess.CompletedProcess[str]:
    assert VALIDATOR.is_file(), "kubernetes-validate missing: the test extras (bin/bootstrap test) install it"
    return subprocess.run([str(VALIDATOR), "--strict", "--kubernetes-version", version, *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_passes_strict_schema_validation(version):
    paths = manifests()
    result = validate(*paths, version=version)
    documents = sum(len(list(yaml.safe_load_all(path.read_text()))) for path in paths)
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    # Every document passed: a kind without a schema is only a WARN with exit 0, so the lines are counted.
    assert result.returncode == 0 and len(passed) == documents == 3, result.stdout + result.stderr
    assert sorted(p.name for p in KUBERNETES.glob("*.yaml")) == sorted([*kustomization()["resources"],
                                                                         "kustomization.yaml"])


@pytest.mark.parametrize("good, bad, error", [
    ("  replicas: 3\n", '  replicas: "3"\n', "spec.replicas: '3' is not of type 'integer'"),
    ("          livenessProbe:\n", "          livenesProbe:\n", "'livenesProbe' was unexpected"),  # --strict
])
def test_a_broken_manifest_fails_validation(tmp_path, good, bad, error):
    text = (KUBERNETES / "statefulset.yaml").read_text()
    assert text.count(good) == 1
    broken = tmp_path / "statefulset.yaml"
    broken.write_text(text.replace(good, bad))
    result = validate(broken, version=VERSIONS[-1])
    assert result.returncode == 1 and "ERROR" in result.stdout and error in result.stdout, result.stdout


# --- what the pods run

def container(statefulset: Doc) -> Doc:
    (only,) = statefulset["spec"]["template"]["spec"]["containers"]
    return only


def mounts(statefulset: Doc) -> dict[str, Doc]:
    """mount path → {"volume": its pod volume (or a volumeClaimTemplate), "mount": the volumeMount}."""
    spec = statefulset["spec"]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    volumes.update({c["metadata"]["name"]: {"name": c["metadata"]["name"], "persistentVolumeClaim": c["spec"]}
                    for c in spec["volumeClaimTemplates"]})
    return {m["mountPath"]: {"volume": volumes[m["name"]], "mount": m} for m in container(statefulset)["volumeMounts"]}


def under(path: str, directory: str) -> bool:
    return Path(path).is_relative_to(directory)


def secret_files(tmp_path: Path) -> Path:
    """The Secret marketfeed-secrets as the kubelet lays it out (defaultMode 0440)."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    for key, value in SECRETS.items():
        (directory / key).write_text(value + "\n")  # as `kubectl create secret --from-file` of an edited file
        (directory / key).chmod(0o440)
    return directory


def pod(statefulset: Doc, ordinal: int, secrets: Path, config_file: Path | None = None,
        extra_env: dict[str, str] | None = None) -> tuple[Config, Instance]:
    """The config and instance of pod marketfeed-<ordinal>: its environment and arguments as the kubelet expands them,
    the ConfigMap's file at its mount path, the Secret's files at theirs."""
    name = f"{statefulset['metadata']['name']}-{ordinal}"
    (secret_mount,) = [path for path, m in mounts(statefulset).items() if "secret" in m["volume"]]
    env = {}
    for var in container(statefulset)["env"]:
        if "value" in var:
            env[var["name"]] = re.sub(f"^{re.escape(secret_mount)}/", f"{secrets}/", var["value"])
        else:  # the downward API
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, var
            env[var["name"]] = name
    env.update(extra_env or {})
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg) for arg in container(statefulset)["args"]]
    args = parser().parse_args(argv)
    assert args.func.__name__ == "cmd_run", argv
    (generated,) = kustomization()["configMapGenerator"]
    (config_mount,) = [path for path, m in mounts(statefulset).items() if "configMap" in m["volume"]]
    assert mounts(statefulset)[config_mount]["volume"]["configMap"]["name"] == generated["name"]
    assert args.config in {f"{config_mount}/{file}" for file in generated["files"]}
    config = RunFlags(args.log_level, args.log_format, args.shard, args.instance_id).over(
        load(str(config_file or KUBERNETES / Path(args.config).name), env=env))
    return config, instance_of(config, name)  # a pod's host name is its name


def test_each_pod_carries_the_share_its_ordinal_names_and_together_they_cover_every_symbol_once(tmp_path):
    statefulset = resource("StatefulSet")
    replicas = statefulset["spec"]["replicas"]
    assert replicas == 3 and f"auto/{replicas}" in container(statefulset)["args"]
    secrets = secret_files(tmp_path)
    listed = {f.name: f.symbols for f in load(str(KUBERNETES / "marketfeed.toml"), env={}).feeds}
    shares: dict[str, list[str]] = {name: [] for name in listed}
    for ordinal in range(replicas):
        config, instance = pod(statefulset, ordinal, secrets)
        assert instance.describe() == {"id": f"marketfeed-{ordinal}", "group": "marketfeed",
                                       "shard": f"{ordinal}/{replicas}"}
        assert config.questdb.conf == SECRETS["questdb-conf"] and config.questdb.pg_dsn == SECRETS["questdb-pg-dsn"]
        for feed in sharded(config, instance.shard).feeds:  # an empty share would be an InstanceError here
            shares[feed.name] += feed.symbols
    assert shares["binance-spot"] == list(listed["binance-spot"]) * replicas  # a pattern: cut once listed
    assert sorted(shares["coinbase"]) == sorted(listed["coinbase"])  # a list: each symbol in one pod exactly


def test_a_pod_writes_only_to_its_volumes_and_serves_its_probes_on_the_container_port(tmp_path):
    statefulset = resource("StatefulSet")
    config, _ = pod(statefulset, 0, secret_files(tmp_path))
    spec, app = statefulset["spec"]["template"]["spec"], container(statefulset)
    assert app["securityContext"]["readOnlyRootFilesystem"] is True
    assert app["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    user = re.search(r"^USER (\d+):(\d+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert user and spec["securityContext"]["runAsUser"] == int(user[1]) == spec["securityContext"]["fsGroup"]
    writable = [path for path, m in mounts(statefulset).items() if not m["mount"].get("readOnly")
                and ("emptyDir" in m["volume"] or "persistentVolumeClaim" in m["volume"])]
    assert sorted(writable) == ["/run/marketfeed", "/var/lib/marketfeed"]
    state = [config.spool.dir, config.ledger.dir, config.sink.dead_letter_dir]
    assert all(under(path, "/var/lib/marketfeed") for path in state), state  # kept across restarts
    assert all(under(path, "/run/marketfeed") for path in (config.service.pid_file, config.service.status_file))
    assert config.service.log_file == ""  # stdout
    (port,) = app["ports"]
    assert parse_listen(config.service.http_listen) == ("0.0.0.0", port["containerPort"])
    probes = {probe: (app[probe]["httpGet"]["path"], app[probe]["httpGet"]["port"])
              for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"startupProbe": ("/health", port["name"]), "livenessProbe": ("/health", port["name"]),
                      "readinessProbe": ("/ready", port["name"])}
    # memory_high (alerts.rss_mb) is reported before the OOM killer ends the pod.
    assert app["resources"]["limits"]["memory"].endswith("Mi")
    assert int(app["resources"]["limits"]["memory"][:-2]) * 2**20 > config.alerts.rss_mb * 10**6
    unit = (REPO / "config/marketfeed.service").read_text()
    assert f"TimeoutStopSec={spec['terminationGracePeriodSeconds']}\n" in unit  # the same shutdown budget


def test_service_links_are_off_because_the_config_refuses_the_variables_they_add(tmp_path):
    statefulset = resource("StatefulSet")
    assert statefulset["spec"]["template"]["spec"]["enableServiceLinks"] is False
    # What the kubelet adds for a Service "marketfeed-metrics" in the namespace ({NAME}_SERVICE_HOST, …).
    with pytest.raises(ConfigError, match="MARKETFEED_METRICS_SERVICE_HOST"):
        pod(statefulset, 0, secret_files(tmp_path), extra_env={"MARKETFEED_METRICS_SERVICE_HOST": "10.0.0.7"})


def test_the_commented_polygon_feed_takes_its_key_from_the_secret(tmp_path):
    text = (KUBERNETES / "marketfeed.toml").read_text()
    head, commented = text.split("# [[feeds]]\n")
    feeds = "[[feeds]]\n" + "".join(line.removeprefix("# ") + "\n" for line in commented.splitlines())
    config_file = tmp_path / "marketfeed.toml"
    config_file.write_text(head + feeds)
    config, instance = pod(resource("StatefulSet"), 2, secret_files(tmp_path), config_file)
    (polygon,) = [f for f in sharded(config, instance.shard).feeds if f.exchange == "polygon"]
    assert polygon.options_of(PolygonOptions).api_key == SECRETS["polygon-api-key"] and polygon.symbols


def test_the_service_pdb_and_image_belong_to_the_statefulset():
    statefulset, service, budget = resource("StatefulSet"), resource("Service"), resource("PodDisruptionBudget")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"] == labels == budget["spec"]["selector"]["matchLabels"]
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == labels  # headless
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [p["name"] for p in container(statefulset)["ports"]]
    assert budget["spec"]["maxUnavailable"] == 1
    (image,) = kustomization()["images"]
    assert image["name"] == container(statefulset)["image"] and image["newTag"] == metadata.version("marketfeed")
    secret = next(v for v in statefulset["spec"]["template"]["spec"]["volumes"] if "secret" in v)
    assert secret["secret"]["defaultMode"] == 0o440  # readable by fsGroup, as the loader needs: not writable
