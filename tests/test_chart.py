"""The Helm chart charts/node-ping, rendered by Helm's own engine (helm-python-sdk, Helm's Go SDK
without a binary) for the default values and every ci/*-values.yaml scenario.

Checked: what `helm install` and `helm lint` say, every object against the Kubernetes API schemas
of each version the chart's kubeVersion claims, that every manifest gives each key once, the values
schema (and that it refuses what `node-ping run` refuses), that the DaemonSet hands `node-ping run`
the env, files and paths it reads, the static node list, labels, least-privilege RBAC, the security
context, the liveness probe, the monitors, NOTES.txt, and that values.yaml and README.md document
every value.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from node_ping import __version__
from node_ping.diagnose import config as diagnose_config
from node_ping.diagnose.events import NAMESPACE as DIAGNOSE_EVENTS_NAMESPACE
from node_ping.discover import config as discover_config
from node_ping.probe import config as probe_config
from node_ping.probe.config import Settings, parse_listen_address
from node_ping.probe.textfile import output_path, remove_stale
from node_ping.settings import SettingsError
from node_ping.targets import parse_nodes
from tests.support import promdata
from tests.support.chart import CHART, CI_VALUES, NAMESPACE, RELEASE, REPO, SCENARIOS, Rendered, load_manifests, render
from tests.support.discovery import CM, NS, stored_text, wait_for, write_kubeconfig
from tests.support.fake_kube_api import FakeKubeAPI, make_node
from tests.support.ports import free_port, get
from tests.support.processes import NODE_PING, stop
from tests.support.promdata import Mesh, receive_loss

#: Kinds that come from CRDs (Prometheus Operator): no schema in kubernetes-validate, checked by
#: structure in TestMonitors instead.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

#: The env of `node-ping run` the DaemonSet sets: every env var its settings declare, but the fping
#: binary (the image's is on the PATH) and the listen address, which it sets only when metrics are
#: served over HTTP.
RUN_ENV = {setting.env for setting in probe_config.RUN_SETTINGS if setting.env} - {
    probe_config.FPING.env, probe_config.LISTEN_ADDRESS.env}
#: The env of `node-ping discover` that the chart sets: every env var its settings declare
#: (NODE_PING_NODE_SELECTOR while the exporter has a nodeSelector, as it has by default), but the pod
#: selector, set only with podNetwork.enabled.
DISCOVER_ENV = {setting.env for setting in discover_config.DISCOVER_SETTINGS if setting.env} - {
    discover_config.POD_SELECTOR.env}

PROJECT_HOME = "https://github.com/node-ping/node-ping"

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest, chart: helm.Chart) -> Rendered:
    return render(chart, SCENARIOS[request.param])


@pytest.fixture(scope="module")
def defaults(chart: helm.Chart) -> Rendered:
    return render(chart)


def claimed_kube_versions() -> list[str]:
    """The Kubernetes versions kubernetes-validate ships schemas for that Chart.yaml's kubeVersion
    admits. Only the simple forms `>=1.X.0-0` and `>=1.X.0-0 <1.Y.0-0` are understood: a richer
    constraint fails here loudly rather than being misread."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*v?1\.(\d+)\.0(?:-0)?(?:\s*,?\s*<\s*v?1\.(\d+)\.0(?:-0)?)?", constraint.strip())
    assert match, f"kubeVersion {constraint!r} is not a form this test understands"
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) else math.inf
    shipped = {version for version in kv_utils.all_versions() if version.startswith("1.")}
    return sorted((v for v in shipped if low <= int(v.split(".")[1]) < high), key=lambda v: int(v.split(".")[1]))


KUBE_VERSIONS = claimed_kube_versions()


class TestInstall:
    """`helm install node-ping charts/node-ping` and `helm lint`, through Helm's Go SDK."""

    def test_install_with_defaults(self) -> None:
        with helm.Config(namespace=NAMESPACE, storage_driver="memory") as config:
            release = config.install(CHART, RELEASE, dry_run="client")
        assert release["name"] == RELEASE and release["chart_name"] == "node-ping"
        manifest = [obj for obj in yaml.safe_load_all(release["manifest"]) if obj]
        kinds = sorted(obj["kind"] for obj in manifest)
        assert kinds == sorted(["ConfigMap", "DaemonSet", "Deployment", "ServiceAccount", "ServiceAccount",
                                "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"])
        assert f"kubectl -n {NAMESPACE} get daemonset node-ping" in release["notes"]

    def test_install_rejects_values_the_schema_forbids(self) -> None:
        with helm.Config(namespace=NAMESPACE, storage_driver="memory") as config, \
                pytest.raises(helm.HelmError, match="hostNetwrok"):
            config.install(CHART, RELEASE, {"hostNetwrok": False}, dry_run="client")

    @pytest.mark.parametrize("name", sorted(SCENARIOS))
    def test_lint_is_clean(self, name: str) -> None:
        report = helm.lint(CHART, SCENARIOS[name], strict=True, namespace=NAMESPACE,
                           kube_version=f"v{KUBE_VERSIONS[0]}")
        assert report["errors"] == []
        # Severity 1 is info; warnings (2) and errors (3) must not occur.
        assert [m for m in report["messages"] if m["severity"] >= 2] == []
        assert not [m for m in report["messages"] if "icon" in str(m)]

    def test_every_scenario_file_is_used(self) -> None:
        """Each ci file names one scenario and changes something compared to the defaults."""
        assert len(CI_VALUES) >= 7
        for path in CI_VALUES:
            assert SCENARIOS[path.name], f"{path.name} sets no value"

    def test_chart_metadata(self, chart: helm.Chart) -> None:
        metadata = chart.metadata
        assert metadata["apiVersion"] == "v2"
        assert metadata["type"] == "application"
        # The default image tag is appVersion, which must be the version the wheel is built as.
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        assert metadata["appVersion"] == project["version"]

    def test_chart_links(self, chart: helm.Chart) -> None:
        """home, sources and maintainers name the project; the icon URL is the raw URL of an SVG that
        is in the repository at the path the URL names."""
        metadata = chart.metadata
        assert metadata["home"] == PROJECT_HOME
        assert metadata["sources"] == [PROJECT_HOME]
        assert [m["name"] for m in metadata["maintainers"]] and all(m.get("url") for m in metadata["maintainers"])
        raw = "https://raw.githubusercontent.com/node-ping/node-ping/main/"
        assert metadata["icon"].startswith(raw)
        icon = REPO / metadata["icon"].removeprefix(raw)
        root = ElementTree.parse(icon).getroot()  # noqa: S314 - the repository's own file, not untrusted input
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert icon.stat().st_size < 4096


class TestKubernetesSchemas:
    """Every rendered object is valid for every Kubernetes version the chart claims to support."""

    def test_claimed_versions_are_covered(self) -> None:
        assert KUBE_VERSIONS, "kubernetes-validate ships no schema for the claimed kubeVersion"
        assert KUBE_VERSIONS[0] == "1.27.0"

    @pytest.mark.parametrize("version", KUBE_VERSIONS)
    def test_objects_validate(self, scenario: Rendered, version: str) -> None:
        for obj in scenario.objects:
            if obj["kind"] in CRD_KINDS:
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(part) for part in err.path)
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: {path}: {err.message}")

    def test_names_fit_kubernetes_limits(self, chart: helm.Chart) -> None:
        """A 53-character release name (Helm's maximum) and a long nameOverride still give valid
        names and labels: the full name is cut to 63 characters."""
        release = "r" * 44 + "-prod-eu1"
        assert len(release) == 53
        rendered = render(chart, {"serviceMonitor": {"enabled": True}, "nameOverride": "network-latency-probe"},
                          release=release)
        for obj in rendered.objects:
            name = obj["metadata"]["name"]
            assert DNS_SUBDOMAIN.match(name) and len(name) <= 253, name
            for value in obj["metadata"].get("labels", {}).values():
                assert len(str(value)) <= 63, value
        service = rendered.one("Service")["metadata"]["name"]
        assert DNS_LABEL.match(service) and len(service) <= 63
        assert len(rendered.daemonset["metadata"]["name"]) == 63

    def test_fullname(self, chart: helm.Chart) -> None:
        assert render(chart).daemonset["metadata"]["name"] == "node-ping"
        assert render(chart, release="edge").daemonset["metadata"]["name"] == "edge-node-ping"
        overridden = render(chart, {"fullnameOverride": "np"})
        assert overridden.daemonset["metadata"]["name"] == "np"
        assert overridden.one("ConfigMap")["metadata"]["name"] == "np-config"


class TestValuesSchema:
    """values.schema.json rejects what would otherwise render a broken or surprising release."""

    @pytest.mark.parametrize(("values", "where"), [
        ({"nodeSlector": {"a": "b"}}, "nodeSlector"),  # unknown top-level key (a typo)
        ({"ping": {"count": "30"}}, "/ping/count"),  # wrong type
        ({"ping": {"count": 0}}, "/ping/count"),
        ({"ping": {"cont": 3}}, "cont"),  # unknown key inside a chart section
        ({"hostNetwork": "yes"}, "/hostNetwork"),
        ({"image": {"tag": 1.0}}, "/image/tag"),  # an unquoted version number
        ({"topology": {"mode": "ring"}}, "/topology/mode"),
        ({"nodes": [{"name": "a"}]}, "ipAddress"),
        ({"externalTargets": [{"name": "dns", "ip": "192.0.2.1"}]}, "/externalTargets/0"),
        ({"textfile": {"hostPath": "relative/dir"}}, "/textfile/hostPath"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"discovery": {"addressTypes": ["Hostname"]}}, "/discovery/addressTypes/0"),
        ({"discovery": {"targetNodeSelector": {"kubernetes.io/os": "linux"}}}, "/discovery/targetNodeSelector"),
        ({"tolerations": {"operator": "Exists"}}, "/tolerations"),
        ({"serviceMonitor": {"interval": "30"}}, "/serviceMonitor/interval"),
        ({"dnsPolicy": "None"}, "/dnsPolicy"),  # would need a dnsConfig the chart cannot give
        ({"nameOverride": "Node_Ping"}, "/nameOverride"),  # object names and a label value
        ({"fullnameOverride": "np.prod"}, "/fullnameOverride"),  # not a DNS label: no Service name
    ])
    def test_rejects(self, chart: helm.Chart, values: dict[str, Any], where: str) -> None:
        with pytest.raises(helm.HelmValuesError) as info:
            chart.validate_schema(chart.merge_values(values))
        assert where in str(info.value)

    def test_render_enforces_the_schema(self, chart: helm.Chart) -> None:
        with pytest.raises(helm.HelmValuesError, match="additional properties 'bogus' not allowed"):
            render(chart, {"bogus": True})

    def test_top_level_is_closed(self, chart: helm.Chart) -> None:
        schema = chart.schema
        assert schema is not None
        assert schema["additionalProperties"] is False
        # Every top-level value has a schema entry, and the schema describes nothing that is not a value
        # (except `global`, which a parent chart may pass).
        assert set(schema["properties"]) - {"global"} == set(chart.values)

    def test_rules_and_dashboard_sections(self, chart: helm.Chart) -> None:
        """prometheusRule and grafanaDashboard are off by default and accept the kube-prometheus-stack
        settings; tests/test_chart_monitoring.py checks what they render."""
        assert chart.values["prometheusRule"]["enabled"] is False
        assert chart.values["prometheusRule"]["labels"] == {}
        assert chart.values["grafanaDashboard"]["enabled"] is False
        assert chart.values["grafanaDashboard"]["labels"] == {"grafana_dashboard": "1"}
        chart.validate_schema(chart.merge_values(
            {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
             "grafanaDashboard": {"enabled": True, "namespace": "grafana"}}))


def schema_accepts(chart: helm.Chart, values: dict[str, Any]) -> bool:
    try:
        chart.validate_schema(chart.merge_values(values))
    except helm.HelmValuesError:
        return False
    return True


def program_accepts(node_name: str = "node-a", **settings: Any) -> bool:
    """Whether `node-ping run` starts with these settings instead of exiting (and the pod crash-looping)."""
    try:
        Settings(node_name=node_name, textfile_dir=Path("/textfile"), **settings)
    except SettingsError:
        return False
    return True


def listen_port_accepted(port: int) -> bool:
    try:
        parse_listen_address(f":{port}")
    except SettingsError:
        return False
    return True


class TestSchemaMatchesTheProgram:
    """values.schema.json refuses what `node-ping run` would refuse at start, so a bad value fails
    the install instead of crash-looping every exporter pod; and accepts everything else."""

    @pytest.mark.parametrize("prefix", ["node-ping_", "node-ping-a_", "np.v2-", "a", "node ping_", "np/",
                                        "np*", "np+", "nö_", "../np"])
    def test_textfile_prefix(self, chart: helm.Chart, prefix: str) -> None:
        assert schema_accepts(chart, {"textfile": {"prefix": prefix}}) is program_accepts(prefix=prefix)

    @pytest.mark.parametrize("length", [200, 201])
    def test_textfile_prefix_length(self, chart: helm.Chart, length: int) -> None:
        """At most 200 characters: temp files' names must hold the whole prefix and a random token."""
        prefix = "p" * length
        assert schema_accepts(chart, {"textfile": {"prefix": prefix}}) is program_accepts("a", prefix=prefix)

    @pytest.mark.parametrize("count", [0, 1, 30, 10_000, 10_001])
    def test_ping_count(self, chart: helm.Chart, count: int) -> None:
        assert schema_accepts(chart, {"ping": {"count": count}}) is program_accepts(count=count)

    @pytest.mark.parametrize("period_ms", [0, 1, 1000, 3_600_000, 3_600_001])
    def test_ping_period(self, chart: helm.Chart, period_ms: int) -> None:
        assert schema_accepts(chart, {"ping": {"periodMs": period_ms}}) is program_accepts(period_ms=period_ms)

    @pytest.mark.parametrize("peers", [0, 1, 3])
    def test_peers_per_zone(self, chart: helm.Chart, peers: int) -> None:
        assert schema_accepts(chart, {"topology": {"peersPerZone": peers}}) is program_accepts(peers_per_zone=peers)

    @pytest.mark.parametrize("mode", ["full", "zone", "ring"])
    def test_topology_mode(self, chart: helm.Chart, mode: str) -> None:
        assert schema_accepts(chart, {"topology": {"mode": mode}}) is program_accepts(topology=mode)

    @pytest.mark.parametrize("port", [0, 1, 9797, 65535, 65536])
    def test_metrics_port(self, chart: helm.Chart, port: int) -> None:
        assert schema_accepts(chart, {"metrics": {"port": port}}) is listen_port_accepted(port)


class TestContainerContract:
    """The DaemonSet gives `node-ping run` exactly the env, files and paths it reads."""

    def test_env_names(self, scenario: Rendered) -> None:
        """Besides node-ping's own, only the address /metrics is bound to, when it is served on one."""
        env = set(scenario.exporter_env)
        serving = scenario.values["metrics"]["enabled"] or scenario.values["serviceMonitor"]["enabled"] \
            or scenario.values["podMonitor"]["enabled"]
        bound = serving and not scenario.values["metrics"]["listenOnAllInterfaces"]
        bind_env = "HOST_IP" if scenario.values["hostNetwork"] else "POD_IP"
        assert env == RUN_ENV | ({"NODE_PING_LISTEN_ADDRESS"} if serving else set()) | ({bind_env} if bound else set())
        assert scenario.exporter["args"] == ["run"]

    def test_default_values_are_the_programs_defaults(self, defaults: Rendered) -> None:
        """With the chart's defaults, the DaemonSet hands `node-ping run` the program's own defaults:
        one default per setting, whether node-ping runs from the chart or by hand."""
        env = defaults.exporter_env
        for setting in (probe_config.PREFIX, probe_config.CONFIG, probe_config.EXTERNAL_CONFIG, probe_config.COUNT,
                        probe_config.PERIOD_MS, probe_config.TOPOLOGY, probe_config.PEERS_PER_ZONE, probe_config.MTU,
                        probe_config.PATH):
            assert env[str(setting.env)]["value"] == str(setting.default), setting.flag

    def test_env_values(self, scenario: Rendered) -> None:
        env = scenario.exporter_env
        values = scenario.values
        assert env["MY_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        assert env["PROMETHEUS_TEXTFILE_PREFIX"]["value"] == values["textfile"]["prefix"]
        assert env["NODE_PING_COUNT"]["value"] == str(values["ping"]["count"])
        assert env["NODE_PING_PERIOD_MS"]["value"] == str(values["ping"]["periodMs"])
        assert env["NODE_PING_TOPOLOGY"]["value"] == values["topology"]["mode"]
        assert env["NODE_PING_PEERS_PER_ZONE"]["value"] == str(values["topology"]["peersPerZone"])
        assert env["NODE_PING_HEALTH_FILE"]["value"] == "/tmp/node-ping.health"
        if "NODE_PING_LISTEN_ADDRESS" in env:
            port = values["metrics"]["port"]
            bind_env = "HOST_IP" if values["hostNetwork"] else "POD_IP"
            expected = f":{port}" if values["metrics"]["listenOnAllInterfaces"] else f"[$({bind_env})]:{port}"
            assert env["NODE_PING_LISTEN_ADDRESS"]["value"] == expected

    def test_config_files_come_from_the_configmaps(self, scenario: Rendered) -> None:
        """NODE_PING_CONFIG and NODE_PING_EXTERNAL_CONFIG point into /config, where the projected
        volume puts ConfigMap keys of the same file names."""
        env = scenario.exporter_env
        mounts = {m["name"]: m for m in scenario.exporter["volumeMounts"]}
        volumes = {v["name"]: v for v in scenario.daemonset["spec"]["template"]["spec"]["volumes"]}
        fullname = scenario.daemonset["metadata"]["name"]
        sources = {item["path"]: source["configMap"] for source in volumes["config"]["projected"]["sources"]
                   for item in source["configMap"]["items"]}
        for var, key in (("NODE_PING_CONFIG", "nodes.json"), ("NODE_PING_EXTERNAL_CONFIG", "external.json")):
            path = Path(env[var]["value"])
            assert path == Path(mounts["config"]["mountPath"]) / key
            (item,) = [i for s in volumes["config"]["projected"]["sources"] for i in s["configMap"]["items"]
                       if i["path"] == key]
            assert item["key"] == key
        assert mounts["config"]["readOnly"] is True

        assert sources["external.json"]["name"] == f"{fullname}-config"
        if scenario.values["discovery"]["enabled"]:
            # Discovery creates this ConfigMap itself, so the pod must start before it exists.
            assert sources["nodes.json"]["name"] == f"{fullname}-nodes"
            assert sources["nodes.json"]["optional"] is True
            discovery = discovery_container(scenario)
            discovery_env = {var["name"]: var for var in discovery["env"]}
            assert discovery_env["NODE_PING_CONFIGMAP"]["value"] == f"{fullname}-nodes"
        else:
            assert sources["nodes.json"]["name"] == f"{fullname}-config"
            assert not scenario.has("Deployment")

    def test_configmap_data(self, scenario: Rendered) -> None:
        fullname = scenario.daemonset["metadata"]["name"]
        data = scenario.one("ConfigMap", f"{fullname}-config")["data"]
        assert json.loads(data["external.json"]) == scenario.values["externalTargets"]
        if scenario.values["discovery"]["enabled"]:
            assert "nodes.json" not in data
        else:
            assert json.loads(data["nodes.json"]) == scenario.values["nodes"]

    def test_textfile_dir_is_the_hostpath(self, scenario: Rendered) -> None:
        env = scenario.exporter_env
        mounts = {m["name"]: m for m in scenario.exporter["volumeMounts"]}
        volumes = {v["name"]: v for v in scenario.daemonset["spec"]["template"]["spec"]["volumes"]}
        host_path = scenario.values["textfile"]["hostPath"]
        assert volumes["textfile"]["hostPath"]["path"] == host_path
        assert env["PROMETHEUS_TEXTFILE_DIR"]["value"] == mounts["textfile"]["mountPath"]
        assert not mounts["textfile"].get("readOnly", False)

    def test_health_file_is_on_a_writable_emptydir(self, scenario: Rendered) -> None:
        env = scenario.exporter_env
        mounts = {m["mountPath"]: m["name"] for m in scenario.exporter["volumeMounts"]}
        volumes = {v["name"]: v for v in scenario.daemonset["spec"]["template"]["spec"]["volumes"]}
        health = Path(env["NODE_PING_HEALTH_FILE"]["value"])
        assert "emptyDir" in volumes[mounts[str(health.parent)]]

    def test_discovery_env(self, defaults: Rendered) -> None:
        (container,) = defaults.discovery["spec"]["template"]["spec"]["containers"]
        env = {var["name"]: var for var in container["env"]}
        assert set(env) == DISCOVER_ENV
        assert container["args"] == ["discover"]
        assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        assert env["NODE_PING_ADDRESS_TYPES"]["value"] == "InternalIP,ExternalIP"
        assert env["NODE_PING_NODE_SELECTOR"]["value"] == "kubernetes.io/os=linux"
        assert env["NODE_PING_RACK_LABEL"]["value"] == ""  # no racks

    def test_running_the_container_as_rendered(self, chart: helm.Chart, tmp_path: Path) -> None:
        """Play kubelet: materialise the DaemonSet pod's volumes from the rendered ConfigMaps under
        tmp_path, resolve the env, run one cycle of the container's command against loopback
        addresses, then run the liveness probe's command as rendered."""
        values = {
            "discovery": {"enabled": False},
            "nodes": [{"name": "node-a", "ipAddress": "127.0.0.1"}, {"name": "node-b", "ipAddress": "127.0.0.2"}],
            "externalTargets": [{"name": "loopback", "host": "127.0.0.1"}],
            "ping": {"count": 2, "periodMs": 20},
        }
        rendered = render(chart, values)
        pod = rendered.daemonset["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        configmaps = {cm["metadata"]["name"]: cm["data"] for cm in rendered.all("ConfigMap")}

        def host_dir(mount_path: str) -> Path:
            return tmp_path / mount_path.strip("/").replace("/", "_")

        def on_host(path: str) -> str:
            """The tmp_path location of an in-container path, through the container's mounts."""
            for mount in rendered.exporter["volumeMounts"]:
                relative = os.path.relpath(path, mount["mountPath"])
                if not relative.startswith(".."):
                    return str(host_dir(mount["mountPath"]) / relative)
            raise AssertionError(f"{path} is on no volume: the root filesystem is read-only")

        for mount in rendered.exporter["volumeMounts"]:
            directory = host_dir(mount["mountPath"])
            directory.mkdir(parents=True)
            for source in volumes[mount["name"]].get("projected", {}).get("sources", []):
                for item in source["configMap"]["items"]:
                    (directory / item["path"]).write_text(configmaps[source["configMap"]["name"]][item["key"]])

        env = {"PATH": os.environ["PATH"], "LC_ALL": "C"}
        for var in rendered.exporter["env"]:
            if "valueFrom" in var:
                assert var["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
                env[var["name"]] = "node-a"
            elif var["value"].startswith("/"):
                env[var["name"]] = on_host(var["value"])
            else:
                env[var["name"]] = var["value"]
        node_ping = list(NODE_PING)
        # `--cycles 1` is the only addition: the container itself runs forever.
        run = subprocess.run([*node_ping, *rendered.exporter["args"], "--cycles", "1"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr

        prom = host_dir(rendered.values["textfile"]["hostPath"]) / "node-ping_node-a.prom"
        text = prom.read_text()
        # node-a pings the other node (not itself) and the external target, twice each.
        assert ('kube_node_ping_packets_sent_total{destination_node="node-b",'
                'destination_node_ip_address="127.0.0.2",source_node="node-a"} 2.0') in text
        assert 'destination_node="node-a"' not in text
        assert ('external_ping_packets_sent_total{destination_host="127.0.0.1",destination_name="loopback",'
                'source_node="node-a"} 2.0') in text

        probe = rendered.exporter["livenessProbe"]["exec"]["command"]
        assert probe[0] == "node-ping"
        command = [*node_ping] + [on_host(arg) if arg.startswith("/") else arg for arg in probe[1:]]
        fresh = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert fresh.returncode == 0, fresh.stderr
        max_age = float(probe[probe.index("--max-age") + 1])
        health = Path(env["NODE_PING_HEALTH_FILE"])
        stale = health.stat().st_mtime - max_age - 5
        os.utime(health, (stale, stale))
        old = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert old.returncode == 1, old.stdout


class TestRBAC:
    """Least privilege: the exporter has no API access, discovery only what it uses."""

    def test_exporter_has_no_api_access(self, scenario: Rendered) -> None:
        fullname = scenario.daemonset["metadata"]["name"]
        pod = scenario.daemonset["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == fullname
        assert pod["automountServiceAccountToken"] is False
        assert scenario.one("ServiceAccount", fullname)["automountServiceAccountToken"] is False
        for binding in scenario.all("RoleBinding") + scenario.all("ClusterRoleBinding"):
            assert all(subject["name"] != fullname for subject in binding["subjects"])

    def test_discovery_cluster_role(self, defaults: Rendered) -> None:
        role = defaults.one("ClusterRole", f"{NAMESPACE}-node-ping-discovery")
        assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}]

    def test_discovery_role_is_limited_to_its_configmap(self, defaults: Rendered) -> None:
        role = defaults.one("Role", "node-ping-discovery")
        assert role["metadata"]["namespace"] == NAMESPACE
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["node-ping-nodes"],
             "verbs": ["get", "update", "watch"]},
            # create cannot be limited by resourceNames; discovery creates node-ping-nodes.
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        ]

    def test_bindings_grant_the_roles_to_discovery_only(self, defaults: Rendered) -> None:
        subject = [{"kind": "ServiceAccount", "name": "node-ping-discovery", "namespace": NAMESPACE}]
        cluster_binding = defaults.one("ClusterRoleBinding")
        assert cluster_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                              "name": f"{NAMESPACE}-node-ping-discovery"}
        assert cluster_binding["subjects"] == subject
        binding = defaults.one("RoleBinding")
        assert binding["metadata"]["namespace"] == NAMESPACE
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": "node-ping-discovery"}
        assert binding["subjects"] == subject
        pod = defaults.discovery["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "node-ping-discovery"
        assert pod["automountServiceAccountToken"] is True

    @pytest.mark.parametrize("release", [RELEASE, "r" * 44 + "-prod-eu1"])
    def test_same_release_in_two_namespaces(self, chart: helm.Chart, release: str) -> None:
        """Cluster-scoped names carry the namespace, so a second installation of the same release
        name elsewhere neither collides with nor takes over the first one's ClusterRole(Binding);
        namespaces that differ only at their end (and long ones) stay apart."""
        cluster_names = []
        for namespace in ("monitoring", "staging", "n" * 62 + "a", "n" * 62 + "b"):
            rendered = render(chart, release=release, namespace=namespace)
            role = rendered.one("ClusterRole")["metadata"]["name"]
            binding = rendered.one("ClusterRoleBinding")
            account = rendered.discovery["spec"]["template"]["spec"]["serviceAccountName"]
            assert binding["metadata"]["name"] == role
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
            assert DNS_SUBDOMAIN.match(role) and len(role) <= 253, role
            cluster_names.append(role)
        assert len(set(cluster_names)) == len(cluster_names), cluster_names

    def test_no_rbac_without_discovery(self, chart: helm.Chart) -> None:
        rendered = render(chart, SCENARIOS["static-nodes-values.yaml"])
        for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment"):
            assert not rendered.has(kind), kind
        assert [sa["metadata"]["name"] for sa in rendered.all("ServiceAccount")] == ["node-ping"]

    def test_one_discovery_replica(self, defaults: Rendered) -> None:
        spec = defaults.discovery["spec"]
        assert spec["replicas"] == 1
        # Never two writers of the ConfigMap, not even during a rollout.
        assert spec["strategy"] == {"type": "Recreate"}


class TestSecurityContext:
    """Exporter: root with NET_RAW only; discovery: the image's non-root user, no capabilities."""

    def test_exporter(self, scenario: Rendered) -> None:
        pod = scenario.daemonset["spec"]["template"]["spec"]
        container = scenario.exporter["securityContext"]
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["securityContext"]["runAsUser"] == 0
        assert container["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
        assert container["readOnlyRootFilesystem"] is True
        assert container["allowPrivilegeEscalation"] is False
        assert container.get("privileged", False) is False

    def test_discovery(self, defaults: Rendered) -> None:
        pod = defaults.discovery["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False

    def test_host_network(self, scenario: Rendered) -> None:
        pod = scenario.daemonset["spec"]["template"]["spec"]
        host_network = scenario.values["hostNetwork"]
        assert pod["hostNetwork"] is host_network
        assert pod["dnsPolicy"] == ("ClusterFirstWithHostNet" if host_network else "ClusterFirst")

    def test_host_network_is_the_default(self, defaults: Rendered) -> None:
        assert defaults.daemonset["spec"]["template"]["spec"]["hostNetwork"] is True


class TestScheduling:
    """The DaemonSet reaches every node, tainted ones included."""

    def test_tolerates_every_taint(self, defaults: Rendered) -> None:
        pod = defaults.daemonset["spec"]["template"]["spec"]
        assert pod["tolerations"] == [{"operator": "Exists"}]
        assert "affinity" not in pod

    def test_options_reach_the_pod(self, chart: helm.Chart) -> None:
        rendered = render(chart, SCENARIOS["zone-topology-values.yaml"])
        template = rendered.daemonset["spec"]["template"]
        assert template["spec"]["priorityClassName"] == "system-node-critical"
        assert template["metadata"]["annotations"]["example.com/owner"] == "network"
        for obj in rendered.objects:
            assert obj["metadata"]["labels"]["team"] == "network", obj["kind"]

    def test_selectors_do_not_overlap(self, defaults: Rendered) -> None:
        exporter = defaults.daemonset["spec"]["selector"]["matchLabels"]
        discovery = defaults.discovery["spec"]["selector"]["matchLabels"]
        assert exporter["app.kubernetes.io/component"] == "exporter"
        assert discovery["app.kubernetes.io/component"] == "discovery"
        for workload in (defaults.daemonset, defaults.discovery):
            labels = workload["spec"]["template"]["metadata"]["labels"]
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items()

    def test_config_change_rolls_the_pods(self, chart: helm.Chart) -> None:
        def checksum(values: dict[str, Any]) -> str:
            annotations = render(chart, values).daemonset["spec"]["template"]["metadata"]["annotations"]
            return str(annotations["checksum/config"])

        assert checksum({}) != checksum(SCENARIOS["external-targets-values.yaml"])


#: Value sets that give one label in more than one place: a chart label in commonLabels, and
#: commonLabels next to every object's and pod's own labels.
OVERLAPPING_LABELS: dict[str, dict[str, Any]] = {
    "commonLabels over chart labels": {
        "commonLabels": {"app.kubernetes.io/part-of": "network", "app.kubernetes.io/name": "other",
                         "app.kubernetes.io/instance": "other", "app.kubernetes.io/component": "other",
                         "app.kubernetes.io/managed-by": "kubectl", "helm.sh/chart": "other"},
    },
    "pod labels": {
        "commonLabels": {"team": "network"},
        "podLabels": {"team": "probes", "app.kubernetes.io/component": "other", "app.kubernetes.io/name": "x"},
        "discovery": {"podLabels": {"team": "discovery", "app.kubernetes.io/component": "exporter"}},
    },
    "service monitor": {
        "commonLabels": {"release": "other"},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps", "app.kubernetes.io/component": "x"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kps", "app.kubernetes.io/instance": "x"}},
        "grafanaDashboard": {"enabled": True, "labels": {"release": "kps", "app.kubernetes.io/part-of": "x"}},
    },
    "pod monitor": {
        "commonLabels": {"release": "kps", "grafana_dashboard": "0"},
        "podMonitor": {"enabled": True, "labels": {"release": "kps"}},
        "grafanaDashboard": {"enabled": True},
    },
}


class TestLabels:
    """Each object's labels are one map, given once: Flux, kustomize and Argo CD refuse a manifest
    with a key twice. A value set in several places takes the most specific one, and nothing
    changes the labels the selectors are built from."""

    @pytest.mark.parametrize("values", OVERLAPPING_LABELS.values(), ids=OVERLAPPING_LABELS.keys())
    def test_every_key_once(self, chart: helm.Chart, values: dict[str, Any]) -> None:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
        for path, text in manifests.items():
            if path.endswith(".yaml"):
                try:
                    load_manifests(text)
                except yaml.YAMLError as err:
                    pytest.fail(f"{path}: {err}")

    @pytest.mark.parametrize("values", OVERLAPPING_LABELS.values(), ids=OVERLAPPING_LABELS.keys())
    def test_selectors_still_select(self, chart: helm.Chart, values: dict[str, Any]) -> None:
        rendered = render(chart, values)
        for obj in rendered.objects:
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "node-ping", obj["kind"]
            assert labels["app.kubernetes.io/instance"] == RELEASE, obj["kind"]
            assert labels["app.kubernetes.io/managed-by"] == "Helm", obj["kind"]
            assert labels.get("app.kubernetes.io/component", "exporter") in {"exporter", "discovery"}, obj["kind"]
        exporter = rendered.daemonset["spec"]["template"]["metadata"]["labels"]
        assert exporter["app.kubernetes.io/component"] == "exporter"
        assert rendered.daemonset["spec"]["selector"]["matchLabels"].items() <= exporter.items()
        if rendered.has("Deployment"):
            discovery = rendered.discovery["spec"]["template"]["metadata"]["labels"]
            assert discovery["app.kubernetes.io/component"] == "discovery"
            assert rendered.discovery["spec"]["selector"]["matchLabels"].items() <= discovery.items()
        for monitor in rendered.all("PodMonitor"):
            assert monitor["spec"]["selector"]["matchLabels"].items() <= exporter.items()
        for monitor in rendered.all("ServiceMonitor"):
            service = rendered.one("Service")
            assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
            assert service["spec"]["selector"].items() <= exporter.items()

    @pytest.mark.parametrize("values", OVERLAPPING_LABELS.values(), ids=OVERLAPPING_LABELS.keys())
    @pytest.mark.parametrize("version", [KUBE_VERSIONS[0], KUBE_VERSIONS[-1]])
    def test_objects_validate(self, chart: helm.Chart, values: dict[str, Any], version: str) -> None:
        for obj in render(chart, values).objects:
            if obj["kind"] not in CRD_KINDS:
                kubernetes_validate.validate(obj, version, strict=True)

    def test_values_stay_strings(self, chart: helm.Chart) -> None:
        """A release name YAML would read as a boolean or a number is still a string label value."""
        for release in ("true", "1e3"):
            rendered = render(chart, {"serviceMonitor": {"enabled": True}, "fullnameOverride": "np"},
                              release=release)
            for obj in rendered.objects:
                assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == release, obj["kind"]
            assert rendered.daemonset["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == release
            assert rendered.one("Service")["spec"]["selector"]["app.kubernetes.io/instance"] == release

    def test_the_most_specific_value_wins(self, chart: helm.Chart) -> None:
        rendered = render(chart, OVERLAPPING_LABELS["service monitor"])
        assert rendered.one("ServiceMonitor")["metadata"]["labels"]["release"] == "kps"
        assert rendered.one("PrometheusRule")["metadata"]["labels"]["release"] == "kps"
        assert rendered.daemonset["metadata"]["labels"]["release"] == "other"
        dashboard = rendered.one("ConfigMap", "node-ping-dashboard")["metadata"]["labels"]
        assert dashboard["app.kubernetes.io/part-of"] == "x"
        # The sidecar's label keeps its value although commonLabels gives it another.
        sidecar = render(chart, OVERLAPPING_LABELS["pod monitor"]).one("ConfigMap", "node-ping-dashboard")
        assert sidecar["metadata"]["labels"]["grafana_dashboard"] == "1"
        pods = render(chart, OVERLAPPING_LABELS["pod labels"])
        assert pods.daemonset["spec"]["template"]["metadata"]["labels"]["team"] == "probes"
        assert pods.discovery["spec"]["template"]["metadata"]["labels"]["team"] == "discovery"
        assert pods.daemonset["metadata"]["labels"]["team"] == "network"

    def test_common_labels_override_the_other_chart_labels(self, chart: helm.Chart) -> None:
        rendered = render(chart, OVERLAPPING_LABELS["commonLabels over chart labels"])
        for obj in rendered.objects:
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/part-of"] == "network", obj["kind"]
            assert labels["helm.sh/chart"] == "other", obj["kind"]


class TestDiscoveryNodeSelector:
    """Discovery lists only the nodes the exporter runs on: a node without it is pinged but never reports."""

    @staticmethod
    def selector(rendered: Rendered) -> str | None:
        env = {var["name"]: var.get("value") for var in discovery_container(rendered)["env"]}
        return env.get("NODE_PING_NODE_SELECTOR")

    def test_follows_the_exporters_node_selector(self, chart: helm.Chart, defaults: Rendered) -> None:
        assert defaults.daemonset["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
        assert self.selector(defaults) == "kubernetes.io/os=linux"
        pools = render(chart, {"nodeSelector": {"node.example.com/pool": "workers", "kubernetes.io/os": "linux"}})
        assert self.selector(pools) == "kubernetes.io/os=linux,node.example.com/pool=workers"

    def test_exporter_on_every_node_means_every_node(self, chart: helm.Chart) -> None:
        rendered = render(chart, {"nodeSelector": None})
        assert "nodeSelector" not in rendered.daemonset["spec"]["template"]["spec"]
        assert self.selector(rendered) is None

    def test_override(self, chart: helm.Chart) -> None:
        wanted = "kubernetes.io/os=linux,node.example.com/pool notin (gpu)"
        rendered = render(chart, {"discovery": {"targetNodeSelector": wanted}})
        assert self.selector(rendered) == wanted

    def test_the_discovery_pods_own_placement_does_not_count(self, chart: helm.Chart) -> None:
        rendered = render(chart, {"discovery": {"nodeSelector": {"node.example.com/pool": "system"}}})
        assert self.selector(rendered) == "kubernetes.io/os=linux"

    def test_node_ping_accepts_what_the_chart_renders(self, chart: helm.Chart) -> None:
        with_discovery = [render(chart, values) for values in SCENARIOS.values()
                          if values.get("discovery", {}).get("enabled", True)]
        assert with_discovery
        for rendered in with_discovery:
            selector = self.selector(rendered)
            assert selector is not None
            # The chart joins label=value pairs with commas: the form kubectl -l and the API server take.
            name = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
            requirement = rf"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?{name}=({name})?"
            assert re.fullmatch(rf"{requirement}(,{requirement})*", selector), selector


def cycle_seconds(values: dict[str, Any]) -> int:
    ping: dict[str, int] = values["ping"]
    slack: int = values["livenessProbe"]["cycleSlackSeconds"]
    return math.ceil(ping["count"] * ping["periodMs"] / 1000) + slack


class TestLivenessProbe:
    """`node-ping health` restarts a stuck exporter, never a healthy one."""

    @pytest.mark.parametrize(("ping", "max_age"), [
        ({}, 120),  # 30 pings 1 s apart + 10 s slack, 3 cycles
        ({"count": 20, "periodMs": 500}, 60),
        ({"count": 7, "periodMs": 333}, 39),  # 2.331 s rounds up to 3 s
        ({"count": 100, "periodMs": 2000}, 630),
    ])
    def test_command(self, chart: helm.Chart, ping: dict[str, int], max_age: int) -> None:
        rendered = render(chart, {"ping": ping})
        probe = rendered.exporter["livenessProbe"]
        health_file = rendered.exporter_env["NODE_PING_HEALTH_FILE"]["value"]
        assert probe["exec"]["command"] == ["node-ping", "health", "--health-file", health_file,
                                            "--max-age", str(max_age)]
        assert max_age == 3 * cycle_seconds(rendered.values)
        # The health file appears after the first cycle: no check before one cycle has had time.
        assert probe["initialDelaySeconds"] > cycle_seconds(rendered.values)

    def test_can_be_turned_off(self, chart: helm.Chart) -> None:
        assert "livenessProbe" not in render(chart, {"livenessProbe": {"enabled": False}}).exporter


class TestMonitors:
    """ServiceMonitor and PodMonitor (CRDs, checked by structure) find the exporter's metrics port."""

    def test_off_by_default(self, defaults: Rendered) -> None:
        for kind in ("ServiceMonitor", "PodMonitor", "Service"):
            assert not defaults.has(kind)
        assert "ports" not in defaults.exporter

    def test_service_monitor(self, chart: helm.Chart) -> None:
        rendered = render(chart, SCENARIOS["servicemonitor-values.yaml"])
        monitor = rendered.one("ServiceMonitor")
        service = rendered.one("Service")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kps"  # what kube-prometheus-stack selects
        assert monitor["metadata"]["namespace"] == NAMESPACE
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["interval"] == "30s" and endpoint["path"] == "/metrics"
        assert endpoint["metricRelabelings"][0]["action"] == "drop"
        (port,) = service["spec"]["ports"]
        assert endpoint["port"] == port["name"]
        assert service["spec"]["clusterIP"] == "None"
        pod_labels = rendered.daemonset["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert port["targetPort"] in [p["name"] for p in rendered.exporter["ports"]]
        assert rendered.exporter_env["NODE_PING_LISTEN_ADDRESS"]["value"] == "[$(HOST_IP)]:9797"

    def test_pod_monitor(self, chart: helm.Chart) -> None:
        rendered = render(chart, SCENARIOS["podmonitor-values.yaml"])
        monitor = rendered.one("PodMonitor")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kps"
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= rendered.daemonset["spec"]["template"]["metadata"]["labels"].items()
        assert not selector.items() <= rendered.discovery["spec"]["template"]["metadata"]["labels"].items()
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("1m", "10s")
        assert rendered.exporter["ports"] == [{"name": endpoint["port"], "containerPort": 9798, "protocol": "TCP"}]
        assert rendered.exporter_env["NODE_PING_LISTEN_ADDRESS"]["value"] == "[$(HOST_IP)]:9798"
        assert not rendered.has("Service")

    @pytest.mark.parametrize("release", ["2nd", "np.prod"])
    def test_service_name_must_be_a_dns_label(self, chart: helm.Chart, release: str) -> None:
        """Helm takes these release names, the API server no Service named after them: the render
        fails and names the fix, instead of the install failing halfway."""
        helm.validate_release_name(release)  # raises for a name Helm refuses
        monitored = {"serviceMonitor": {"enabled": True}}
        with pytest.raises(helm.HelmError, match="fullnameOverride") as info:
            render(chart, monitored, release=release)
        assert f"{release}-node-ping" in str(info.value)
        service = render(chart, {**monitored, "fullnameOverride": "np-prod"}, release=release).one("Service")
        assert service["metadata"]["name"] == "np-prod"
        # No Service, no constraint: every other object takes a DNS subdomain.
        assert render(chart, {"podMonitor": {"enabled": True}}, release=release).has("PodMonitor")

    def test_one_monitor_only(self, chart: helm.Chart) -> None:
        """Both monitors would scrape every exporter twice, doubling every series."""
        with pytest.raises(helm.HelmError, match=re.escape("serviceMonitor.enabled and podMonitor.enabled")):
            render(chart, {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}})

    def test_monitor_in_another_namespace(self, chart: helm.Chart) -> None:
        rendered = render(chart, {"podMonitor": {"enabled": True, "namespace": "prometheus"}})
        monitor = rendered.one("PodMonitor")
        assert monitor["metadata"]["namespace"] == "prometheus"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def static(nodes: list[dict[str, str]], **values: Any) -> dict[str, Any]:
    """Values for discovery off with these `nodes`."""
    return {"discovery": {"enabled": False}, "nodes": nodes, **values}


def exporter_skips(nodes: list[dict[str, str]]) -> bool:
    """Whether `node-ping run` would skip an entry of this nodes.json (and log why)."""
    return bool(parse_nodes(json.dumps(nodes)).problems)


#: Static node lists: each must render if and only if the exporter uses every entry.
STATIC_NODES = {
    "ipv4": [{"name": "a", "ipAddress": "192.0.2.11"}],
    "ipv6": [{"name": "a", "ipAddress": "2001:db8::13"}],
    "ipv6 upper case": [{"name": "a", "ipAddress": "2001:DB8::13"}],
    "ipv6 in full": [{"name": "a", "ipAddress": "2001:db8:0:0:0:0:0:13"}],
    "ipv6 with ipv4 tail": [{"name": "a", "ipAddress": "::ffff:192.0.2.11"}],
    "ipv6 loopback": [{"name": "a", "ipAddress": "::1"}],
    "ipv6 scope": [{"name": "a", "ipAddress": "fe80::1%eth0"}],
    "spaces around": [{"name": " a ", "ipAddress": " 192.0.2.11 "}],
    "host name": [{"name": "a", "ipAddress": "worker-1.example.com"}],
    "short host name": [{"name": "a", "ipAddress": "worker-1"}],
    "cidr": [{"name": "a", "ipAddress": "192.0.2.0/24"}],
    "ipv6 cidr": [{"name": "a", "ipAddress": "2001:db8::/64"}],
    "octet too big": [{"name": "a", "ipAddress": "192.0.2.256"}],
    "leading zero": [{"name": "a", "ipAddress": "192.0.2.011"}],
    "three octets": [{"name": "a", "ipAddress": "192.0.2"}],
    "two double colons": [{"name": "a", "ipAddress": "2001::db8::1"}],
    "nine groups": [{"name": "a", "ipAddress": "1:2:3:4:5:6:7:8:9"}],
    "long group": [{"name": "a", "ipAddress": "2001:db8::12345"}],
    "unspecified": [{"name": "a", "ipAddress": "0.0.0.0"}],  # noqa: S104 - an address to refuse
    "ipv6 unspecified": [{"name": "a", "ipAddress": "::"}],
    "multicast": [{"name": "a", "ipAddress": "224.0.0.1"}],
    "ipv6 multicast": [{"name": "a", "ipAddress": "ff02::1"}],
    "name with a dash first": [{"name": "-a", "ipAddress": "192.0.2.11"}],
    "blank name": [{"name": " ", "ipAddress": "192.0.2.11"}],
    "duplicate name": [{"name": "a", "ipAddress": "192.0.2.11"}, {"name": "a", "ipAddress": "192.0.2.12"}],
    "duplicate name with spaces": [{"name": "a", "ipAddress": "192.0.2.11"}, {"name": "a ", "ipAddress": "192.0.2.12"}],
    "duplicate address": [{"name": "a", "ipAddress": "192.0.2.11"}, {"name": "b", "ipAddress": "192.0.2.11"}],
    "two nodes": [{"name": "a", "ipAddress": "192.0.2.11"}, {"name": "b", "ipAddress": "2001:db8::12"}],
}


class TestStaticNodes:
    """With discovery off, the chart refuses a `nodes` entry that the exporter would skip, and says
    which one and why, instead of pods that quietly ping fewer nodes than listed."""

    @pytest.mark.parametrize("nodes", STATIC_NODES.values(), ids=STATIC_NODES.keys())
    def test_refuses_what_the_exporter_skips(self, chart: helm.Chart, nodes: list[dict[str, str]]) -> None:
        try:
            render(chart, static(nodes))
        except helm.HelmError as err:
            assert exporter_skips(nodes), f"the exporter takes {nodes}, the chart refuses it: {err}"
        else:
            assert not exporter_skips(nodes), f"the chart renders {nodes}, the exporter skips some of it"

    @pytest.mark.parametrize(("nodes", "message"), [
        (STATIC_NODES["duplicate name"], "nodes: name 'a' is listed twice"),
        (STATIC_NODES["host name"], "nodes: ipAddress 'worker-1.example.com' of node 'a' is not an IPv4 or IPv6 "
                                    "address"),
        (STATIC_NODES["cidr"], "nodes: ipAddress '192.0.2.0/24' of node 'a' is not an IPv4 or IPv6 address"),
        (STATIC_NODES["duplicate address"], "nodes: ipAddress '192.0.2.11' of node 'b' is listed twice"),
    ])
    def test_message(self, chart: helm.Chart, nodes: list[dict[str, str]], message: str) -> None:
        with pytest.raises(helm.HelmError, match=re.escape(message)):
            render(chart, static(nodes))

    def test_ignored_while_discovery_is_on(self, chart: helm.Chart) -> None:
        rendered = render(chart, {"nodes": STATIC_NODES["duplicate name"]})
        assert "nodes.json" not in rendered.one("ConfigMap")["data"]


class TestNotes:
    """NOTES.txt tells the user how to see that it works."""

    def test_defaults(self, defaults: Rendered) -> None:
        notes = defaults.notes
        assert f"kubectl -n {NAMESPACE} get daemonset node-ping" in notes
        assert "node-ping_<node name>.prom" in notes
        assert "/var/run/node-exporter-textfile" in notes
        assert "kube_node_ping_packets_sent_total" in notes
        assert "node-ping-nodes" in notes

    def test_static_nodes_without_nodes_warns(self, chart: helm.Chart) -> None:
        assert "WARNING" in render(chart, {"discovery": {"enabled": False}}).notes
        assert "WARNING" not in render(chart, SCENARIOS["static-nodes-values.yaml"]).notes

    def test_metrics_port(self, chart: helm.Chart) -> None:
        """Bound to the node's address, /metrics is read at that address, not through port-forward."""
        notes = render(chart, SCENARIOS["podmonitor-values.yaml"]).notes_text
        assert "curl -s http://<IP>:9798/metrics | grep kube_node_ping_packets_sent_total" in notes
        assert "on port 9798 of its node's address (status.hostIP) only" in notes
        assert "kubectl port-forward does not reach it" in notes
        assert "port-forward daemonset" not in notes
        everywhere = render(chart, {"metrics": {"enabled": True, "listenOnAllInterfaces": True}}).notes_text
        assert "kubectl -n monitoring port-forward daemonset/node-ping 9797 &" in everywhere
        assert "curl -s http://localhost:9797/metrics" in everywhere
        pod = render(chart, {"metrics": {"enabled": True}, "hostNetwork": False}).notes_text
        assert "on port 9797 of its pod's address only" in pod

    def test_prometheus_query_lists_the_reporting_nodes(self, defaults: Rendered) -> None:
        assert "count by (source_node) (node_ping_cycles_total)" in defaults.notes

    @pytest.mark.parametrize(("ping", "seconds"), [({}, 30), ({"count": 20, "periodMs": 500}, 10),
                                                   ({"count": 7, "periodMs": 333}, 3)])
    def test_first_cycle_time(self, chart: helm.Chart, ping: dict[str, int], seconds: int) -> None:
        """The first file appears after count * periodMs, as the chart README says (30 s by default);
        the liveness slack is not part of it."""
        notes = render(chart, {"ping": ping}).notes
        assert f"After the first cycle (about {seconds} s)" in notes
        assert "The first `.prom` file appears after one cycle, about `ping.count * ping.periodMs` (30 s by default)" \
            in (CHART / "README.md").read_text()

    def test_pod_list_shows_the_exporters_only(self, scenario: Rendered) -> None:
        (selector,) = re.findall(r"get pods -l (\S+) -o wide", scenario.notes)
        labels = dict(pair.split("=") for pair in selector.split(","))
        assert labels == scenario.daemonset["spec"]["selector"]["matchLabels"]
        if scenario.has("Deployment"):
            assert not labels.items() <= scenario.discovery["spec"]["template"]["metadata"]["labels"].items()

    @pytest.mark.parametrize(("nodes", "count"), [(STATIC_NODES["ipv4"], "the 1 node"),
                                                  (STATIC_NODES["two nodes"], "the 2 nodes")])
    def test_static_node_count(self, chart: helm.Chart, nodes: list[dict[str, str]], count: str) -> None:
        notes = render(chart, static(nodes)).notes_text
        assert f"every exporter pings {count} listed in the value `nodes`, except its own node" in notes
        assert "node(s)" not in notes

    def test_a_single_static_node_pings_nothing(self, chart: helm.Chart) -> None:
        notes = render(chart, static(STATIC_NODES["ipv4"])).notes_text
        assert "So node a pings no other node" in notes
        assert "pings no other node" not in render(chart, static(STATIC_NODES["two nodes"])).notes_text

    def test_zone_mode_does_not_claim_a_full_mesh(self, chart: helm.Chart) -> None:
        nodes = [{"name": f"{zone}{i}", "ipAddress": f"192.0.2.{10 * n + i}", "zone": zone}
                 for n, zone in enumerate("abc") for i in range(4)]
        notes = render(chart, static(nodes, topology={"mode": "zone", "peersPerZone": 2})).notes_text
        assert "every exporter pings" not in notes
        assert ("each of the 12 nodes listed in the value `nodes` is pinged by the other listed nodes of its zone "
                "and by at least 2 listed nodes of every other zone") in notes

    def test_node_exporter_reads_the_directory_as_it_sees_it(self, defaults: Rendered) -> None:
        """README: node-exporter points at the directory as *it* sees it, the host path or its own mount."""
        notes = defaults.notes_text
        assert "--collector.textfile.directory=/var/run/node-exporter-textfile for node-exporter on the host" in notes
        assert "for node-exporter in a pod, the mountPath of its hostPath volume /var/run/node-exporter-textfile" \
            in notes

    @pytest.mark.parametrize("name", ["servicemonitor-values.yaml", "podmonitor-values.yaml"])
    def test_scraped_over_http_node_exporter_must_not_read_the_files(self, chart: helm.Chart, name: str) -> None:
        notes = render(chart, SCENARIOS[name]).notes_text
        assert "must read" not in notes
        assert "do not point node-exporter's textfile collector at /var/run/node-exporter-textfile" in notes


def documented_keys() -> tuple[dict[str, str], list[str]]:
    """(documented, undocumented) dotted keys of values.yaml, the documented ones with their
    description. A key is documented by a `# --` comment in the comment block right above it
    (helm-docs), which may go on over more comment lines; a mapping without one is fine when all
    its children are documented."""
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()

    def doc(line: int) -> str | None:
        index = line - 1
        while index >= 0 and lines[index].lstrip().startswith("#"):
            if lines[index].lstrip().startswith("# --"):
                block = [comment.strip().removeprefix("#").strip() for comment in lines[index:line]]
                return " ".join(block).removeprefix("--").strip()
            index -= 1
        return None

    documented: dict[str, str] = {}
    undocumented: list[str] = []

    def walk(node: yaml.MappingNode, prefix: str) -> None:
        for key, value in node.value:
            dotted = f"{prefix}{key.value}"
            description = doc(key.start_mark.line)
            if description is not None:
                documented[dotted] = description
            elif isinstance(value, yaml.MappingNode) and value.value:
                walk(value, dotted + ".")
            else:
                undocumented.append(dotted)

    root = yaml.compose(text)
    assert isinstance(root, yaml.MappingNode)
    walk(root, "")
    return documented, undocumented


class TestDocumentation:
    """values.yaml documents every value, and README.md lists each one."""

    def test_every_value_has_a_comment(self) -> None:
        documented, undocumented = documented_keys()
        assert undocumented == []
        assert {"image.tag", "hostNetwork", "textfile.hostPath", "discovery.enabled",
                "prometheusRule.enabled", "grafanaDashboard.labels"} <= set(documented)

    def test_readme_values_table(self, chart: helm.Chart) -> None:
        """Each documented value has a row `| `key` | type | `default` | description |` whose default
        is the value in values.yaml, written as compact JSON, and whose description is its comment."""
        readme = (CHART / "README.md").read_text()
        rows = {match.group(1): (match.group(2), match.group(3)) for match in
                re.finditer(r"^\| `([^`]+)` \| \w+ \| `([^`]*)` \| (.*) \|$", readme, re.MULTILINE)}
        documented, _ = documented_keys()
        assert sorted(rows) == sorted(documented)
        for key, description in documented.items():
            default: Any = chart.values
            for part in key.split("."):
                default = default[part]
            assert json.loads(rows[key][0]) == default, key
            assert rows[key][1] == description, key

    def test_how_releases_share_a_textfile_directory(self, tmp_path: Path) -> None:
        """textfile.prefix says that releases sharing a directory need prefixes none of which starts
        another, with an example and a counter-example; the exporter's start-up clean-up
        (`<prefix>*.prom`) proves both right."""
        documented, _ = documented_keys()
        doc = documented["textfile.prefix"]
        assert "no prefix may be the start of another's" in doc
        example = re.search(r"\(e\.g\. `([^`]+)` and `([^`]+)`, not `([^`]+)` and `([^`]+)`\)", doc)
        assert example, doc
        good, bad = example.groups()[:2], example.groups()[2:]

        def survives_clean_up(own: str, other: str) -> bool:
            """Whether the release with prefix `other` keeps its file when `own`'s exporter starts."""
            directory = tmp_path / f"{own}{other}"
            directory.mkdir()
            kept = output_path(directory, other, "node-a")
            kept.write_text("")
            remove_stale(directory, own)
            return kept.exists()

        assert survives_clean_up(*good) and survives_clean_up(*reversed(good))
        assert not survives_clean_up(*bad)

    def test_readme_commands(self) -> None:
        readme = (CHART / "README.md").read_text()
        for command in ("helm install node-ping charts/node-ping", "helm upgrade", "helm uninstall node-ping"):
            assert command in readme


DIGEST = "sha256:" + "0123456789abcdef" * 4


def discovery_container(rendered: Rendered, name: str = "discovery") -> dict[str, Any]:
    """The discovery Deployment's container `name`: "discovery", or "events" with events.enabled."""
    (container,) = [c for c in rendered.discovery["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert isinstance(container, dict)
    return container


class TestImages:
    """`image.digest` pins the exporter's image; discovery runs its own image (the Dockerfile's
    `discovery` target), named and tagged after the exporter's unless told otherwise."""

    def test_defaults(self, defaults: Rendered) -> None:
        assert defaults.exporter["image"] == f"node-ping:{__version__}"  # appVersion: the version built
        assert discovery_container(defaults)["image"] == f"node-ping-discovery:{__version__}"
        assert discovery_container(defaults)["imagePullPolicy"] == "IfNotPresent"

    def test_digest_wins_over_the_tag(self, chart: helm.Chart) -> None:
        rendered = render(chart, {"image": {"repository": "registry.example.com/node-ping", "tag": "9.9.9",
                                            "digest": DIGEST}})
        assert rendered.exporter["image"] == f"registry.example.com/node-ping@{DIGEST}"
        # The exporter's digest names the exporter's image only.
        assert discovery_container(rendered)["image"] == "registry.example.com/node-ping-discovery:9.9.9"

    def test_discovery_follows_the_exporter(self, chart: helm.Chart) -> None:
        rendered = render(chart, {"image": {"repository": "registry.example.com/np", "tag": "1.2.3",
                                            "pullPolicy": "Always"}})
        assert discovery_container(rendered)["image"] == "registry.example.com/np-discovery:1.2.3"
        assert discovery_container(rendered)["imagePullPolicy"] == "Always"

    def test_discovery_values(self, chart: helm.Chart) -> None:
        rendered = render(chart, SCENARIOS["pinned-images-values.yaml"])
        assert rendered.exporter["image"] == (
            "registry.example.com/node-ping@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        assert discovery_container(rendered)["image"] == (
            "registry.example.com/tools/node-ping-discovery@"
            "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210")
        assert discovery_container(rendered)["imagePullPolicy"] == "Always"
        assert rendered.exporter["imagePullPolicy"] == "IfNotPresent"
        tagged = render(chart, {"discovery": {"image": {"tag": "0.1.0-debug"}}})
        assert discovery_container(tagged)["image"] == "node-ping-discovery:0.1.0-debug"
        assert tagged.exporter["image"] == f"node-ping:{__version__}"

    def test_one_image_for_both(self, chart: helm.Chart) -> None:
        """An image built before the Dockerfile had targets holds both commands."""
        rendered = render(chart, {"image": {"repository": "registry.example.com/node-ping"},
                                  "discovery": {"image": {"repository": "registry.example.com/node-ping"}}})
        assert discovery_container(rendered)["image"] == rendered.exporter["image"]

    @pytest.mark.parametrize("digest", ["sha256:abc", "sha256:" + "A" * 64, "latest", "sha512:" + "a" * 128,
                                        "sha256:" + "a" * 65, "@sha256:" + "a" * 64])
    @pytest.mark.parametrize("where", ["image", "discovery.image"])
    def test_schema_refuses_a_bad_digest(self, chart: helm.Chart, digest: str, where: str) -> None:
        values: dict[str, Any] = {"digest": digest}
        for part in reversed(where.split(".")):
            values = {part: values}
        with pytest.raises(helm.HelmValuesError, match="digest"):
            chart.validate_schema(chart.merge_values(values))


def kubelet_env(container: dict[str, Any], fields: dict[str, str], paths: Path) -> dict[str, str]:
    """The container's env as the kubelet hands it over: fieldRefs from `fields`, `$(VAR)` expanded
    from the entries before it, and absolute paths moved under `paths`."""
    env = {"PATH": os.environ["PATH"], "LC_ALL": "C"}
    for var in container["env"]:
        if "valueFrom" in var:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        elif var["value"].startswith("/"):
            env[var["name"]] = str(paths / var["value"].strip("/").replace("/", "_"))
        else:
            env[var["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                      lambda ref: env.get(ref.group(1), ref.group(0)), var["value"])
    return env


def answers(url: str) -> bool:
    try:
        get(url, timeout=2)
    except OSError:
        return False
    return True


class TestMetricsAddress:
    """/metrics is served on the node's own address by default, not on every interface of the node."""

    def test_bound_to_the_host_ip(self, chart: helm.Chart) -> None:
        rendered = render(chart, {"metrics": {"enabled": True}})
        env = rendered.exporter["env"]
        names = [var["name"] for var in env]
        assert names.index("HOST_IP") < names.index("NODE_PING_LISTEN_ADDRESS")  # expanded from earlier entries only
        assert env[names.index("HOST_IP")]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
        assert env[names.index("NODE_PING_LISTEN_ADDRESS")]["value"] == "[$(HOST_IP)]:9797"

    def test_own_network_namespace_binds_the_pod_ip(self, chart: helm.Chart) -> None:
        """Without hostNetwork the node's address is not in the pod's network namespace."""
        rendered = render(chart, {"metrics": {"enabled": True}, "hostNetwork": False})
        assert rendered.exporter_env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert "HOST_IP" not in rendered.exporter_env
        assert rendered.exporter_env["NODE_PING_LISTEN_ADDRESS"]["value"] == "[$(POD_IP)]:9797"

    def test_every_interface_on_request(self, chart: helm.Chart) -> None:
        rendered = render(chart, SCENARIOS["pinned-images-values.yaml"])
        assert rendered.exporter_env["NODE_PING_LISTEN_ADDRESS"]["value"] == ":9797"
        assert "HOST_IP" not in rendered.exporter_env

    @pytest.mark.parametrize(("host_ip", "url_host", "other"), [("127.0.0.1", "127.0.0.1", "127.0.0.2"),
                                                                ("::1", "[::1]", "127.0.0.1")])
    def test_node_ping_serves_that_address_only(self, chart: helm.Chart, tmp_path: Path, host_ip: str,
                                                url_host: str, other: str) -> None:
        """Play kubelet: the rendered env, with status.hostIP an IPv4 or an IPv6 address, makes
        `node-ping run` serve /metrics at that address, and nothing at another of the host's."""
        port = free_port(dual_stack=True)
        rendered = render(chart, {"metrics": {"enabled": True, "port": port}, "discovery": {"enabled": False},
                                  "nodes": [{"name": "node-a", "ipAddress": "127.0.0.1"}],
                                  "ping": {"count": 1, "periodMs": 100}})
        env = kubelet_env(rendered.exporter, {"spec.nodeName": "node-a", "status.hostIP": host_ip}, tmp_path)
        assert env["NODE_PING_LISTEN_ADDRESS"] == f"[{host_ip}]:{port}"
        Path(env["PROMETHEUS_TEXTFILE_DIR"]).mkdir()
        Path(env["NODE_PING_CONFIG"]).write_text(rendered.one("ConfigMap")["data"]["nodes.json"])
        Path(env["NODE_PING_EXTERNAL_CONFIG"]).write_text("[]")
        process = subprocess.Popen([*NODE_PING, *rendered.exporter["args"]], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: answers(f"http://{url_host}:{port}/metrics") or process.poll() is not None,
                     "node-ping to serve /metrics", timeout=30)
            assert process.poll() is None
            assert "node_ping_build_info" in get(f"http://{url_host}:{port}/metrics")
            assert not answers(f"http://{other}:{port}/metrics")
        finally:
            stop(process)


def liveness_command(rendered: Rendered, health_file: Path, name: str = "discovery") -> list[str]:
    """The liveness probe's command of the discovery pod's container `name` as this machine runs it:
    node-ping from the project's virtualenv, the container's /tmp health file at `health_file`."""
    container = discovery_container(rendered, name)
    command = container["livenessProbe"]["exec"]["command"]
    in_container = {var["name"]: var.get("value") for var in container["env"]}["NODE_PING_HEALTH_FILE"]
    assert command[0] == "node-ping" and in_container in command
    return [*NODE_PING, *[str(health_file) if part == in_container else part for part in command[1:]]]


class TestDiscoveryLivenessProbe:
    """Discovery is restarted when one of its loops ended or hangs: the health file it touches goes stale."""

    def test_rendered(self, defaults: Rendered, chart: helm.Chart) -> None:
        container = discovery_container(defaults)
        probe = container["livenessProbe"]
        assert (probe["initialDelaySeconds"], probe["periodSeconds"], probe["timeoutSeconds"],
                probe["failureThreshold"]) == (30, 30, 10, 3)
        health_file = {var["name"]: var.get("value") for var in container["env"]}["NODE_PING_HEALTH_FILE"]
        assert probe["exec"]["command"] == ["node-ping", "health", "--health-file", health_file, "--max-age", "120"]
        assert any(health_file.startswith(mount["mountPath"] + "/") for mount in container["volumeMounts"])
        off = render(chart, {"discovery": {"livenessProbe": {"enabled": False}}})
        assert "livenessProbe" not in discovery_container(off)

    def test_healthy_discover_passes_and_a_stale_file_fails(self, defaults: Rendered, tmp_path: Path) -> None:
        """A real `node-ping discover`, given the rendered health file, passes the rendered check; the
        same check fails once the file is older than maxAgeSeconds (a loop that ended or hangs)."""
        health = tmp_path / "discover.health"
        with FakeKubeAPI() as kube:
            kube.put_node(make_node("node-a", "192.0.2.11"))
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url, namespace=NS)
            env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
            env.update(NODE_PING_CONFIGMAP=CM, NODE_PING_HEALTH_FILE=str(health), PYTHONPATH=str(REPO))
            process = subprocess.Popen([*NODE_PING, "discover", "--kubeconfig", str(kubeconfig)], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for(lambda: stored_text(kube), "discover to write its ConfigMap")
                wait_for(health.exists, "discover to touch its health file")
                check = subprocess.run(liveness_command(defaults, health), capture_output=True, text=True,
                                       timeout=30, check=False)
            finally:
                stop(process)
        assert check.returncode == 0, check.stderr
        os.utime(health, (health.stat().st_mtime - 121, health.stat().st_mtime - 121))
        stale = subprocess.run(liveness_command(defaults, health), capture_output=True, text=True, timeout=30,
                               check=False)
        assert stale.returncode == 1 and "unhealthy" in stale.stderr


class TestNotesCommands:
    """The commands NOTES.txt prints work on what the chart deploys."""

    def test_counting_the_series_in_the_file(self, chart: helm.Chart, tmp_path: Path) -> None:
        """The in-pod command of step 3 counts the nodes one exporter pings, from its own file."""
        rendered = render(chart, {"discovery": {"enabled": False}, "nodes": [
            {"name": "node-a", "ipAddress": "127.0.0.1"}, {"name": "node-b", "ipAddress": "127.0.0.2"},
            {"name": "node-c", "ipAddress": "::1"}], "ping": {"count": 1, "periodMs": 50}})
        env = kubelet_env(rendered.exporter, {"spec.nodeName": "node-a"}, tmp_path)
        Path(env["PROMETHEUS_TEXTFILE_DIR"]).mkdir()
        Path(env["NODE_PING_CONFIG"]).write_text(rendered.one("ConfigMap")["data"]["nodes.json"])
        Path(env["NODE_PING_HEALTH_FILE"]).parent.mkdir(exist_ok=True)
        cycle = subprocess.run([*NODE_PING, *rendered.exporter["args"], "--cycles", "1"], env=env,
                               capture_output=True, text=True, timeout=60, check=False)
        assert cycle.returncode == 0, cycle.stderr
        (line,) = [line for line in rendered.notes.splitlines() if "sh -c" in line]
        command = shlex.split(line.split(" -- ", 1)[1])
        counted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert counted.stdout.strip() == "2", counted.stderr


UPSTREAM = REPO / "tests" / "fixtures" / "upstream-charts"
STACK_DOCS = [REPO / "docs" / "operations.md", REPO / "README.md", CHART / "README.md"]


def upstream(name: str) -> dict[str, Any]:
    (path,) = UPSTREAM.glob(f"{name}-*-values.yaml")
    values = yaml.safe_load(path.read_text())
    assert isinstance(values, dict)
    return values


def stack_values() -> dict[str, Any]:
    """kube-prometheus-stack's values with its subcharts' own defaults below its settings for them."""
    def merged(below: Any, above: Any) -> Any:
        if not (isinstance(below, dict) and isinstance(above, dict)):
            return above
        return {key: merged(below.get(key), above[key]) if key in above else below[key]
                for key in {**below, **above}}

    stack = upstream("kube-prometheus-stack")
    for subchart in ("prometheus-node-exporter", "grafana"):
        stack[subchart] = merged(upstream(subchart), stack[subchart])
    return stack


def yaml_snippets(path: Path) -> list[dict[str, Any]]:
    """The ```yaml blocks of a markdown file (indented ones too), parsed."""
    blocks = re.findall(r"^( *)```yaml\n(.*?)^\1```", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    parsed = [yaml.safe_load("\n".join(line.removeprefix(indent) for line in body.splitlines()))
              for indent, body in blocks]
    return [block for block in parsed if isinstance(block, dict)]


def leaves(values: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(key path, value) of every value a snippet sets; a list is one value, as Helm replaces it whole."""
    found: list[tuple[tuple[str, ...], Any]] = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            found += leaves(value, (*prefix, key))
        else:
            found.append(((*prefix, key), value))
    return found


def lookup(values: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for key in path:
        if not isinstance(values, dict) or key not in values:
            return False, None
        values = values[key]
    return True, values


class TestUpstreamSnippets:
    """The docs' kube-prometheus-stack snippets set only keys the stack's values have
    (tests/fixtures/upstream-charts, versions in SOURCES.yaml), and never a list the stack already
    sets: Helm would replace the stack's list with the snippet's and quietly drop its entries."""

    @staticmethod
    def stack_snippets() -> list[dict[str, Any]]:
        stack = upstream("kube-prometheus-stack")
        return [block for path in STACK_DOCS for block in yaml_snippets(path) if set(block) <= set(stack)]

    def test_snippets_found(self) -> None:
        tops = {key for block in self.stack_snippets() for key in block}
        assert {"prometheus-node-exporter", "grafana"} <= tops

    def test_every_key_exists_upstream(self) -> None:
        values = stack_values()
        for block in self.stack_snippets():
            for path, _ in leaves(block):
                assert lookup(values, path)[0], f"{'.'.join(path)} is no value of kube-prometheus-stack"

    def test_no_list_the_stack_sets_is_replaced(self) -> None:
        values = stack_values()
        for block in self.stack_snippets():
            for path, value in leaves(block):
                if isinstance(value, list):
                    assert not lookup(values, path)[1], f"{'.'.join(path)}: the stack sets this list already"

    def test_the_check_catches_the_old_snippet(self) -> None:
        """The extraArgs list the docs used to give replaced the stack's own (which has since grown)."""
        old = {"prometheus-node-exporter": {"extraArgs": ["--collector.textfile.directory=/host/textfile"]}}
        ((path, _),) = leaves(old)
        stack_args = lookup(stack_values(), path)[1]
        assert any("run/containerd" in arg for arg in stack_args) and any("erofs" in arg for arg in stack_args)

    def test_standalone_node_exporter_snippet(self) -> None:
        """The snippet for the prometheus-node-exporter chart on its own sets keys it has, and lists
        it leaves empty."""
        node_exporter = upstream("prometheus-node-exporter")
        blocks = [block for block in yaml_snippets(REPO / "docs" / "operations.md")
                  if "extraHostVolumeMounts" in block]
        assert blocks
        for block in blocks:
            for path, _ in leaves(block):
                present, default = lookup(node_exporter, path)
                assert present and default == [], ".".join(path)

    def test_node_ping_snippets_fit_the_schema(self, chart: helm.Chart) -> None:
        """Every snippet of node-ping values in the docs is accepted by the chart."""
        ours = [block for path in STACK_DOCS for block in yaml_snippets(path) if set(block) <= set(chart.values)]
        assert any("podMonitor" in block for block in ours)
        for block in ours:
            chart.validate_schema(chart.merge_values(block))

    def test_versions_are_recorded(self) -> None:
        sources = yaml.safe_load((UPSTREAM / "SOURCES.yaml").read_text())
        assert set(sources) == {path.name for path in UPSTREAM.glob("*-values.yaml")}
        operations = " ".join((REPO / "docs" / "operations.md").read_text().split())
        for name, source in sources.items():
            assert name == f"{source['chart']}-{source['version']}-values.yaml"
            assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
            assert f"{source['chart']} {source['version']}" in operations


POD_NETWORK = {"podNetwork": {"enabled": True}}
EVENTS = {"events": {"enabled": True, "prometheusUrl": "http://prometheus-operated.monitoring.svc:9090"}}


def rules_of(rendered: Rendered, resource: str) -> list[dict[str, Any]]:
    """Every RBAC rule, of any Role or ClusterRole, that names `resource`."""
    return [rule for obj in rendered.all("Role") + rendered.all("ClusterRole") for rule in obj["rules"]
            if resource in rule["resources"]]


class TestPodNetwork:
    """podNetwork.enabled: a second DaemonSet probes the pod network from pods.json, which discovery
    keeps from the prober pods of the release namespace only."""

    def test_off_by_default(self, defaults: Rendered) -> None:
        assert [ds["metadata"]["name"] for ds in defaults.all("DaemonSet")] == ["node-ping"]
        assert rules_of(defaults, "pods") == []
        assert "NODE_PING_POD_SELECTOR" not in {var["name"] for var in discovery_container(defaults)["env"]}

    def test_the_pod_prober(self, chart: helm.Chart) -> None:
        rendered = render(chart, {**POD_NETWORK, "mtu": 1450})
        pod = rendered.pod_daemonset["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {var["name"]: var for var in container["env"]}
        assert pod["hostNetwork"] is False and pod["dnsPolicy"] == "ClusterFirst"
        assert container["args"] == ["run"]
        assert env["NODE_PING_PATH"]["value"] == probe_config.PATH.type.choices[1] == "pod"
        assert env["MY_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        assert env["PROMETHEUS_TEXTFILE_PREFIX"]["value"] == "node-ping-pod_"
        assert env["NODE_PING_MTU"]["value"] == rendered.exporter_env["NODE_PING_MTU"]["value"] == "1450"
        assert rendered.exporter_env["NODE_PING_PATH"]["value"] == "node"
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
        assert pod["automountServiceAccountToken"] is False
        # Its targets: the key pods.json of the ConfigMap discovery writes, optional until it exists.
        volumes = {v["name"]: v for v in pod["volumes"]}
        (source,) = volumes["config"]["projected"]["sources"]
        assert source["configMap"] == {"name": "node-ping-nodes", "optional": True,
                                       "items": [{"key": "pods.json", "path": "pods.json"}]}
        assert env["NODE_PING_CONFIG"]["value"] == "/config/pods.json"
        # Same nodes, same textfile directory as the host prober.
        host = rendered.daemonset["spec"]["template"]["spec"]
        for key in ("nodeSelector", "tolerations"):
            assert pod[key] == host[key], key
        assert volumes["textfile"] == {v["name"]: v for v in host["volumes"]}["textfile"]

    def test_pod_selector_picks_the_pod_probers_pods_only(self, chart: helm.Chart) -> None:
        rendered = render(chart, {**POD_NETWORK, "podLabels": {"team": "network"}})
        env = {var["name"]: var.get("value") for var in discovery_container(rendered)["env"]}
        requirements = dict(pair.split("=") for pair in env["NODE_PING_POD_SELECTOR"].split(","))
        pod_labels = rendered.pod_daemonset["spec"]["template"]["metadata"]["labels"]
        host_labels = rendered.daemonset["spec"]["template"]["metadata"]["labels"]
        assert requirements.items() <= pod_labels.items()
        assert not requirements.items() <= host_labels.items()
        assert requirements == rendered.pod_daemonset["spec"]["selector"]["matchLabels"]
        assert requirements["app.kubernetes.io/component"] == "pod-prober"

    def test_pod_access_is_namespaced(self, chart: helm.Chart) -> None:
        rendered = render(chart, POD_NETWORK)
        role = rendered.one("Role", "node-ping-discovery-pods")
        assert role["metadata"]["namespace"] == NAMESPACE
        assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
        assert rules_of(rendered, "pods") == role["rules"]  # no ClusterRole grants pods
        binding = rendered.one("RoleBinding", "node-ping-discovery-pods")
        assert binding["metadata"]["namespace"] == NAMESPACE
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": "node-ping-discovery-pods"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "node-ping-discovery",
                                        "namespace": NAMESPACE}]

    @pytest.mark.parametrize(("host", "pod"), [("node-ping_", "node-ping_pod_"), ("node-ping-pod_x", "node-ping-pod_"),
                                               ("np", "np")])
    def test_prefixes_that_clash_fail_the_render(self, chart: helm.Chart, host: str, pod: str) -> None:
        values = {"textfile": {"prefix": host}, "podNetwork": {"enabled": True, "textfilePrefix": pod}}
        with pytest.raises(helm.HelmError, match="one is the start of the other"):
            render(chart, values)

    def test_needs_discovery(self, chart: helm.Chart) -> None:
        with pytest.raises(helm.HelmError, match=r"podNetwork\.enabled needs discovery\.enabled"):
            render(chart, {**POD_NETWORK, "discovery": {"enabled": False}})

    def test_rack_label(self, chart: helm.Chart) -> None:
        rendered = render(chart, SCENARIOS["pod-network-values.yaml"])
        env = {var["name"]: var.get("value") for var in discovery_container(rendered)["env"]}
        assert env["NODE_PING_RACK_LABEL"] == "topology.example.com/rack"
        assert discover_config.RACK_LABEL.check(env["NODE_PING_RACK_LABEL"]) == env["NODE_PING_RACK_LABEL"]

    @pytest.mark.parametrize("mtu", [0, 67, 68, 1280, 1500, 9000, 65535, 65536, -1])
    def test_mtu_schema_matches_the_program(self, chart: helm.Chart, mtu: int) -> None:
        assert schema_accepts(chart, {"mtu": mtu}) is program_accepts(mtu=mtu)

    @pytest.mark.parametrize("key", ["topology.example.com/rack", "rack", "Bad Key", "Example.com/rack", "a/"])
    def test_rack_label_schema_matches_the_program(self, chart: helm.Chart, key: str) -> None:
        try:
            discover_config.RACK_LABEL.check(key)
        except SettingsError:
            accepted = False
        else:
            accepted = True
        assert schema_accepts(chart, {"discovery": {"rackLabel": key}}) is accepted


#: Where the events container writes: the program's own constant, the only namespace the API server
#: takes Events about Nodes in.
EVENTS_NAMESPACE = DIAGNOSE_EVENTS_NAMESPACE


def events_role_name(namespace: str = NAMESPACE, release: str = RELEASE) -> str:
    return f"{namespace}-{release}-discovery-events"


def event_probe_max_age(interval: int) -> int:
    return 2 * interval + 180


class TestEvents:
    """events.enabled: diagnose publishes verdicts as Events from a second container of discovery, in
    the namespace default whatever the release namespace, restarted only when its loop hangs."""

    def test_off_by_default(self, defaults: Rendered) -> None:
        assert [c["name"] for c in defaults.discovery["spec"]["template"]["spec"]["containers"]] == ["discovery"]
        assert rules_of(defaults, "events") == []

    def test_container(self, chart: helm.Chart) -> None:
        rendered = render(chart, SCENARIOS["events-values.yaml"])
        container = discovery_container(rendered, "events")
        env = {var["name"]: var for var in container["env"]}
        # The flag, not POD_NAMESPACE: that would be the release namespace, which the program refuses.
        # The window the recording rules keep, diagnose's default --range unless set.
        assert container["args"] == ["diagnose", diagnose_config.EVENTS_NAMESPACE.flag, EVENTS_NAMESPACE,
                                     diagnose_config.RANGE.flag, diagnose_config.RANGE.default]
        assert diagnose_config.EVENTS_NAMESPACE.env not in env
        assert container["image"] == discovery_container(rendered)["image"]
        assert env["NODE_PING_PUBLISH_EVENTS"]["value"] == "true"
        assert env["NODE_PING_PROMETHEUS_URL"]["value"] == "http://prometheus-operated.monitoring.svc:9090"
        assert env["NODE_PING_DIAGNOSE_INTERVAL"]["value"] == "120"
        assert container["securityContext"] == discovery_container(rendered)["securityContext"]

    def test_env_and_flags_are_diagnoses_settings(self, chart: helm.Chart) -> None:
        declared = {setting.env for setting in diagnose_config.SETTINGS if setting.env}
        flags = {setting.flag for setting in diagnose_config.SETTINGS}
        container = discovery_container(render(chart, EVENTS), "events")
        assert {var["name"] for var in container["env"]} <= declared
        assert {arg for arg in container["args"] if arg.startswith("-")} <= flags

    def test_events_role_in_default(self, chart: helm.Chart) -> None:
        """Exactly create and patch on events, in default, for discovery's ServiceAccount of the
        release namespace; no other Role or ClusterRole names events."""
        rendered = render(chart, EVENTS)
        role = rendered.one("Role", events_role_name())
        assert role["metadata"]["namespace"] == EVENTS_NAMESPACE
        assert role["rules"] == [{"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]
        assert rules_of(rendered, "events") == role["rules"]
        binding = rendered.one("RoleBinding", events_role_name())
        assert binding["metadata"]["namespace"] == EVENTS_NAMESPACE
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": events_role_name()}
        account = rendered.discovery["spec"]["template"]["spec"]["serviceAccountName"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
        assert rules_of(rendered, "pods") == []  # events alone give no pod access
        # Nothing else of the release goes to default.
        assert [(obj["kind"], obj["metadata"]["name"]) for obj in rendered.objects
                if obj["metadata"].get("namespace") == EVENTS_NAMESPACE] == [
            ("Role", events_role_name()), ("RoleBinding", events_role_name())]

    def test_same_release_in_two_namespaces(self, chart: helm.Chart) -> None:
        """Both Roles live in default: the release namespace in the name keeps them apart."""
        names = set()
        for namespace in ("monitoring", "staging", "n" * 63):
            role = render(chart, EVENTS, namespace=namespace).one("Role", events_role_name(namespace))
            assert DNS_SUBDOMAIN.match(role["metadata"]["name"]) and len(role["metadata"]["name"]) <= 253
            names.add(role["metadata"]["name"])
        assert len(names) == 3

    @pytest.mark.parametrize("interval", [1, 60, 120, 3600])
    def test_liveness_probe_follows_the_interval(self, chart: helm.Chart, interval: int) -> None:
        rendered = render(chart, {"events": {**EVENTS["events"], "interval": interval}})
        container = discovery_container(rendered, "events")
        probe = container["livenessProbe"]
        health_file = {var["name"]: var.get("value") for var in container["env"]}["NODE_PING_HEALTH_FILE"]
        max_age = event_probe_max_age(interval)
        assert probe["exec"]["command"] == ["node-ping", "health", "--health-file", health_file,
                                            "--max-age", str(max_age)]
        assert (probe["initialDelaySeconds"], probe["periodSeconds"], probe["timeoutSeconds"],
                probe["failureThreshold"]) == (max_age, 30, 10, 3)
        # On the writable /tmp (the root file system is read-only), apart from discovery's own file.
        assert any(health_file.startswith(mount["mountPath"] + "/") for mount in container["volumeMounts"])
        discovery_env = {var["name"]: var.get("value") for var in discovery_container(rendered)["env"]}
        assert health_file != discovery_env["NODE_PING_HEALTH_FILE"]

    def test_liveness_probe_off(self, chart: helm.Chart) -> None:
        off = render(chart, {"events": {**EVENTS["events"], "livenessProbe": {"enabled": False}}})
        assert "livenessProbe" not in discovery_container(off, "events")

    @pytest.mark.slow
    def test_the_rendered_container_publishes_and_passes_its_check(self, chart: helm.Chart, tmp_path: Path) -> None:
        """The events container as rendered, in a pod of the release namespace (outside a pod: a
        kubeconfig), against a real Prometheus holding a lossy node: its Event lands in default on
        that Node, and the rendered liveness check passes; once the file is older than the max-age
        it fails."""
        reason = promdata.available()
        if reason:
            pytest.skip(reason)
        rendered = render(chart, {"events": {**EVENTS["events"], "interval": 1}})
        container = discovery_container(rendered, "events")
        names = [f"worker-{i}" for i in range(1, 5)]
        promdata.backfill(promdata.openmetrics(Mesh(names, loss=receive_loss(names, "worker-3", 0.3)),
                                               int(time.time())), tmp_path / "tsdb")
        env = kubelet_env(container, {"metadata.namespace": NAMESPACE}, tmp_path)
        health = Path(env["NODE_PING_HEALTH_FILE"])
        with FakeKubeAPI() as kube, promdata.running_prometheus(tmp_path / "tsdb") as prometheus:
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url, namespace=NAMESPACE)
            env.update(NODE_PING_PROMETHEUS_URL=prometheus, PYTHONPATH=str(REPO))
            log = tmp_path / "events.log"
            with log.open("wb") as stderr_file:  # a file, not a pipe: a full pipe would stall the loop
                process = subprocess.Popen([*NODE_PING, *container["args"], "--kubeconfig", str(kubeconfig)],
                                           env=env, stdout=subprocess.DEVNULL, stderr=stderr_file)
            try:
                # A container that exits (exit 2 for a refused namespace) is a crash loop: stop waiting.
                wait_for(lambda: (kube.node_events("worker-3") and health.exists()) or process.poll() is not None,
                         "an Event and the health file", 60)
                check = subprocess.run(liveness_command(rendered, health, "events"), capture_output=True,
                                       text=True, timeout=30, check=False)
            finally:
                exited = process.poll()
                stop(process)
            assert exited is None, log.read_text(errors="replace")
            [event] = kube.node_events("worker-3")
        assert event["metadata"]["namespace"] == EVENTS_NAMESPACE
        assert check.returncode == 0, check.stderr
        max_age = event_probe_max_age(1)
        os.utime(health, (time.time() - max_age - 1, time.time() - max_age - 1))
        stale = subprocess.run(liveness_command(rendered, health, "events"), capture_output=True, text=True,
                               timeout=30, check=False)
        assert stale.returncode == 1 and "unhealthy" in stale.stderr

    @pytest.mark.parametrize(("values", "message"), [
        ({"events": {"enabled": True}}, "events.enabled needs events.prometheusUrl"),
        ({"events": {"enabled": True, "prometheusUrl": "  "}}, "events.enabled needs events.prometheusUrl"),
        ({**EVENTS, "discovery": {"enabled": False}}, "events.enabled needs discovery.enabled"),
    ])
    def test_refused(self, chart: helm.Chart, values: dict[str, Any], message: str) -> None:
        with pytest.raises(helm.HelmError, match=message):
            render(chart, values)

    @pytest.mark.parametrize(("interval", "accepted"), [(0, False), (1, True), (3600, True), (3601, False)])
    def test_interval_limits(self, chart: helm.Chart, interval: int, accepted: bool) -> None:
        assert schema_accepts(chart, {"events": {"interval": interval}}) is accepted

    def test_everything_on_validates(self, chart: helm.Chart) -> None:
        rendered = render(chart, {**POD_NETWORK, **EVENTS, "discovery": {"rackLabel": "example.com/rack"}})
        for obj in rendered.objects:
            kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)
        report = helm.lint(CHART, {**POD_NETWORK, **EVENTS}, strict=True, namespace=NAMESPACE,
                           kube_version=f"v{KUBE_VERSIONS[0]}")
        assert report["errors"] == []


def test_pod_prober_name_stays_apart_at_the_length_limit(chart: helm.Chart) -> None:
    """A 63-character full name: the pod prober's DaemonSet still gets a name of its own, within 63."""
    rendered = render(chart, {**POD_NETWORK, "fullnameOverride": "n" * 63})
    names = [ds["metadata"]["name"] for ds in rendered.all("DaemonSet")]
    assert len(set(names)) == 2 and all(len(name) <= 63 for name in names), names
