"""The container images: what the Dockerfile says is checked against the repository, Debian and the
Helm chart, then both targets are built by podman and run the way the chart runs them.

The Dockerfile is read by dockerfile-parse, and the build context is what the Docker SDK's own
.dockerignore matcher lets through, so neither reading can drift from Docker's.

There is no registry here, so the base image python:3.11-slim-bookworm is a stand-in made by
scripts/stand_in_base.sh from Debian bookworm's own packages. It differs from the real image in:
Python is Debian's 3.11.2 in /usr/bin (the real image builds the newest 3.11 into /usr/local); pip is
Debian's 23.0 with setuptools and wheel beside it; pip installs into /usr/local/lib/python3.11/
dist-packages, not site-packages; it is larger (about 245 MB against about 130 MB). `python`, `pip`,
LANG=C.UTF-8, a pip allowed to install system-wide and empty apt lists are as in the real image.
Builds never pull (--pull=never); the build's pip reaches PyPI with the machine's CA bundle,
mounted for RUN only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser
from dockerfile_parse.parser import image_from

from node_ping import contract
from node_ping.targets import parse_nodes
from tests.support import netlab, podman
from tests.support.chart import CHART, NAMESPACE, REPO, Rendered, render
from tests.support.exporters import node_exporter
from tests.support.exposition import by_destination, families
from tests.support.fake_kube_api import FakeKubeAPI, make_node
from tests.support.ports import get

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
BASE_IMAGE = "python:3.11-slim-bookworm"


@dataclass
class Stage:
    """One FROM ... section of the Dockerfile: the base (build arguments substituted), the optional
    name, its instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def parse_stages(path: Path) -> list[Stage]:
    """The Dockerfile's stages as dockerfile-parse reads them (continuations joined, comments
    dropped). The bases are its `parent_images`, one per FROM, with the ARGs declared before the
    first FROM substituted as Docker does."""
    parser = DockerfileParser(path=str(path))
    bases = iter(parser.parent_images)
    stages: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            stages.append(Stage(next(bases), image_from(value)[1]))
        elif stages:
            stages[-1].instructions.append((instruction, value))
        else:
            assert instruction == "ARG", f"{instruction} before the first FROM"
    assert next(bases, None) is None, "a FROM without an image"
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_stages(DOCKERFILE)


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def run_commands(stage: Stage) -> list[list[str]]:
    """Each `&&`-separated command of the stage's RUN instructions, as argv (RUN flags dropped)."""
    commands: list[list[str]] = []
    for args in stage.all("RUN"):
        words = shlex.split(args)
        while words and words[0].startswith("--"):  # RUN's own flags (--mount=..., --network=...)
            words.pop(0)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";"):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def copied_sources(stage: Stage) -> list[str]:
    """Source paths of the stage's COPY/ADD instructions that take files from the build context."""
    sources: list[str] = []
    for args in stage.all("COPY") + stage.all("ADD"):
        words = shlex.split(args)
        if any(word.startswith("--from") for word in words):
            continue
        words = [word for word in words if not word.startswith("--")]
        sources.extend(words[:-1])
    return sources


def dockerignore_patterns(path: Path) -> list[str]:
    """The patterns of a .dockerignore, read the way the Docker SDK reads them before a build."""
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def build_context(root: Path, dockerignore: Path = DOCKERIGNORE) -> set[str]:
    """The paths under `root` (files and directories, relative, with /) that Docker sends to the
    builder, by the Docker SDK's .dockerignore matcher."""
    return exclude_paths(root, dockerignore_patterns(dockerignore))


def source_files(source: str) -> list[Path]:
    """The repository's files under a COPY source (bytecode left aside: it is not part of the source)."""
    path = REPO / source
    if path.is_file():
        return [path]
    return [file for file in path.rglob("*") if file.is_file() and "__pycache__" not in file.parts]


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart) -> Rendered:
    """The chart with its default values."""
    return render(chart)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = workload["spec"]["template"]["spec"]
    return pod


class TestDockerfile:
    """The Dockerfile against the repository, Debian and the chart."""

    def test_targets(self, stages: list[Stage]) -> None:
        """Both targets share one base; the exporter is the default (last) target."""
        assert [(stage.name, stage.base) for stage in stages] == [
            ("build", BASE_IMAGE), ("common", BASE_IMAGE), ("discovery", "common"), ("exporter", "common")]

    def test_apt_packages_exist_in_debian(self, final: Stage) -> None:
        packages = [word for command in run_commands(final) if command[:2] == ["apt-get", "install"]
                    for word in command[2:] if not word.startswith("-")]
        assert "fping" in packages
        codename = BASE_IMAGE.rsplit("-", 1)[1]
        os_release = Path("/etc/os-release").read_text()
        if f"VERSION_CODENAME={codename}" not in os_release:
            pytest.skip(f"this machine is not Debian {codename}: its apt lists say nothing about the image")
        if shutil.which("apt-cache") is None:
            pytest.skip("apt-cache is not installed")
        for package in packages:
            shown = subprocess.run(["apt-cache", "show", package], capture_output=True, text=True,
                                   timeout=60, check=False)
            assert shown.returncode == 0 and f"Package: {package}" in shown.stdout, (
                f"Debian {codename} has no package {package!r} (after `apt-get update`): {shown.stderr}")

    def test_user_matches_the_chart(self, stages: list[Stage], rendered: Rendered) -> None:
        commands = run_commands(stages[1])
        (useradd,) = [c for c in commands if c[0] == "useradd"]
        (groupadd,) = [c for c in commands if c[0] == "groupadd"]
        uid = int(useradd[useradd.index("--uid") + 1])
        gid = int(groupadd[groupadd.index("--gid") + 1])
        assert useradd[-1] == "node-ping" and useradd[useradd.index("--gid") + 1] == str(gid)
        # USER must be numeric: the kubelet cannot check runAsNonRoot against a user name.
        for target in stages[2:]:
            (user,) = target.all("USER")
            assert user == f"{uid}:{gid}", target.name
        security = pod_spec(rendered.discovery)["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"], security["runAsNonRoot"]) == (uid, gid, True)

    def test_entrypoint(self, stages: list[Stage], rendered: Rendered) -> None:
        (entrypoint,) = stages[1].all("ENTRYPOINT")
        assert json.loads(entrypoint) == ["node-ping"]
        assert [json.loads(target.all("CMD")[0]) for target in stages[2:]] == [["discover"], ["run"]]
        scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
        assert "node-ping" in scripts
        # The chart passes only arguments, so the entrypoint runs them.
        for workload, args in ((rendered.daemonset, ["run"]), (rendered.discovery, ["discover"])):
            container = pod_spec(workload)["containers"][0]
            assert "command" not in container and container["args"] == args

    def test_copied_paths_exist_and_reach_the_builder(self, stages: list[Stage]) -> None:
        context = build_context(REPO)
        sources = [source for stage in stages for source in copied_sources(stage)]
        assert {"pyproject.toml", "requirements.lock", "requirements-discover.lock", "node_ping"} <= set(sources)
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
            files = source_files(source)
            assert files
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                assert relative in context, f"{relative} is in .dockerignore"

    def test_dockerignore_keeps_the_rest_out(self, tmp_path: Path) -> None:
        """Docker's walk over a tree holding each path, with the repository's .dockerignore: the
        paths themselves need not exist in this checkout."""
        kept_out = (".git/config", ".venv/bin/python", "tests/test_image.py", "charts/node-ping/values.yaml",
                    "node_ping/__pycache__/cli.cpython-311.pyc")
        for relative in (*kept_out, "node_ping/cli.py"):
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / relative).touch()
        context = build_context(tmp_path)
        for path in kept_out:
            assert path not in context, path
        assert "node_ping/cli.py" in context


# input -> the lock scripts/lock.sh makes from it
LOCKS = {"requirements.txt": "requirements.lock", "requirements-discover.txt": "requirements-discover.lock",
         "requirements-dev.txt": "requirements-dev.lock"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def inputs(path: Path) -> dict[str, str]:
    """Package -> version pinned by a requirements file, following its `-r` includes."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins |= inputs(path.parent / line[3:].strip())
        elif line:
            match = PIN.match(line)
            assert match, f"{path.name}: {line!r} is not pinned with =="
            pins[canonical(match[1])] = match[2]
    return pins


def locked(path: Path) -> dict[str, str]:
    """Package -> version of a lock, each entry checked to carry at least one sha256 hash."""
    entries = re.split(r"\n(?=[A-Za-z0-9])", path.read_text())
    pins: dict[str, str] = {}
    for entry in entries:
        match = PIN.match(entry)
        if match:
            assert "--hash=sha256:" in entry, f"{path.name}: {match[1]} has no hash"
            pins[canonical(match[1])] = match[2]
    return pins


class TestLocks:
    """Every dependency the images and .venv install is pinned with hashes, and each lock agrees with
    its human-edited input (requirements*.txt) and with the other locks."""

    @pytest.mark.parametrize("source", list(LOCKS))
    def test_every_input_is_locked_at_its_version(self, source: str) -> None:
        wanted = inputs(REPO / source)
        pins = locked(REPO / LOCKS[source])
        assert {name: pins.get(name) for name in wanted} == wanted, f"run `bash scripts/lock.sh` after editing {source}"

    def test_locks_agree_with_the_dev_lock(self) -> None:
        """The tests run the versions the images ship."""
        dev = locked(REPO / "requirements-dev.lock")
        for lock in ("requirements.lock", "requirements-discover.lock"):
            pins = locked(REPO / lock)
            assert {name: dev.get(name) for name in pins} == pins, lock

    def test_exporter_lock_has_no_kubernetes_client(self) -> None:
        assert "kubernetes" not in locked(REPO / "requirements.lock")
        assert "kubernetes" in locked(REPO / "requirements-discover.lock")


# The exporter's own layers stay small: no Kubernetes client, no bytecode.
EXPORTER_MAX_OVER_BASE = 30_000_000
# The discovery image carries the Kubernetes client (and its asyncio copy): about 105 MB.
DISCOVERY_MAX_OVER_BASE = 125_000_000


@dataclass(frozen=True)
class Images:
    base: str
    exporter: str  # image ids
    discovery: str


@pytest.fixture(scope="module")
def images(rendered: Rendered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """Both targets built by podman from the repository, tagged as the chart names them (the
    Deployment's name last, should both name the same image); removed afterwards, the base kept."""
    reason = podman.unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs podman (scripts/setup.sh), yet: {reason}")
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("images")
    base = podman.base_image()
    built: list[str] = []
    try:
        for target, workload in (("exporter", rendered.daemonset), ("discovery", rendered.discovery)):
            built.append(podman.build(target, pod_spec(workload)["containers"][0]["image"], workdir))
        yield Images(base, *built)
    finally:
        podman.remove_images(*built)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.slow
class TestImages:
    """What each image holds, read from the built images."""

    def test_sizes_over_the_base(self, images: Images) -> None:
        base = podman.size(images.base)
        assert podman.size(images.exporter) - base <= EXPORTER_MAX_OVER_BASE
        assert podman.size(images.discovery) - base <= DISCOVERY_MAX_OVER_BASE

    def test_only_discovery_has_the_kubernetes_client(self, images: Images) -> None:
        probe = ("import importlib.util, sys; "
                 "sys.exit(0 if importlib.util.find_spec('kubernetes') else 3)")
        assert podman.run(images.exporter, "-c", probe, entrypoint="python").returncode == 3
        found = podman.run(images.discovery, "-c", probe, entrypoint="python")
        assert found.returncode == 0, found.stderr

    def test_exactly_the_locked_versions(self, images: Images) -> None:
        for image, lock in ((images.exporter, "requirements.lock"), (images.discovery, "requirements-discover.lock")):
            listed = podman.run(image, "-m", "pip", "list", "--format", "json", entrypoint="python")
            assert listed.returncode == 0, listed.stderr
            installed = {canonical(p["name"]): p["version"] for p in json.loads(listed.stdout)}
            pins = locked(REPO / lock)
            assert {name: installed.get(name) for name in pins} == pins, image
        assert "fping" not in podman.run(images.discovery, "-c", "import shutil; print(shutil.which('fping'))",
                                         entrypoint="python").stdout.split()

    def test_no_bytecode(self, images: Images) -> None:
        for image in (images.exporter, images.discovery):
            found = podman.run(image, "/usr/local", "-name", "*.pyc", entrypoint="find")
            assert found.returncode == 0 and found.stdout == "", image

    def test_version_is_the_chart_app_version(self, images: Images) -> None:
        app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        for image in (images.exporter, images.discovery):
            shown = podman.run(image, "--version")
            assert shown.returncode == 0, shown.stderr
            assert shown.stdout.strip() == f"node-ping {app_version}"

    def test_help_lists_the_commands_the_chart_runs(self, images: Images) -> None:
        shown = podman.run(images.exporter, "--help")
        assert shown.returncode == 0, shown.stderr
        for command in ("run", "once", "health", "discover"):
            assert re.search(rf"\b{command}\b", shown.stdout), command


@pytest.mark.slow
@pytest.mark.netns
class TestExporterContainer:
    """The exporter image run as the chart's DaemonSet runs it, in a test host's network namespace."""

    def test_probes_writes_and_stops_on_sigterm(self, images: Images, chart: helm.Chart, tmp_path: Path) -> None:
        reason = netlab.available()
        if reason:
            pytest.skip(reason)
        count = 5
        daemonset = render(chart, {"ping": {"count": count, "periodMs": 100}}).daemonset
        pod = pod_spec(daemonset)
        config, textfile = tmp_path / "config", tmp_path / "textfile"
        config.mkdir()
        textfile.mkdir()
        with netlab.lab(["a", "b", "c"]) as lab:
            a, _, c = lab.hosts
            (config / "nodes.json").write_text(json.dumps(
                [{"name": name, "ipAddress": host.ipv4} for name, host in zip("abc", lab.hosts, strict=True)]))
            (config / "external.json").write_text("[]")
            c.drop_incoming_icmp(100)
            options = podman.pod_options(pod, {"spec.nodeName": "a"},
                                         {"config": config, "textfile": textfile})
            volumes = {volume["name"] for volume in pod["volumes"]}
            assert volumes == {"config", "textfile", "tmp"}  # each one stood for above
            args = pod["containers"][0]["args"]
            with podman.container(images.exporter, [*options, "--network", f"ns:/run/netns/{a.name}"], args) as name:
                written = textfile / "node-ping_a.prom"
                deadline = time.monotonic() + 60
                while not written.exists():
                    assert podman.state(name)["Running"], podman.logs(name)
                    assert time.monotonic() < deadline, f"no {written.name} after 60 s:\n{podman.logs(name)}"
                    time.sleep(0.2)
                with node_exporter(textfile) as url:
                    series = families(get(url))
                assert by_destination(series, contract.NODE.packets_sent.name) == {"b": count, "c": count}
                assert by_destination(series, contract.NODE.packets_received.name) == {"b": count, "c": 0}
                grace = pod.get("terminationGracePeriodSeconds", 30)
                stopped = podman.podman("stop", "--time", str(grace), name, timeout=grace + 30)
                assert stopped.returncode == 0
                final_state = podman.state(name)
                assert final_state["ExitCode"] == 0, podman.logs(name)
                # Nothing of the container (fping included) is left in the host's namespace.
                assert netlab.sh("ip", "netns", "pids", a.name).stdout.split() == []


@pytest.mark.slow
class TestDiscoveryContainer:
    """The discovery image run as the chart's Deployment runs it, against the stand-in API server."""

    def test_writes_nodes_json(self, images: Images, rendered: Rendered, tmp_path: Path) -> None:
        pod = pod_spec(rendered.discovery)
        with FakeKubeAPI() as kube:
            linux = {"kubernetes.io/os": "linux"}  # the chart's default node selector
            kube.load_nodes([make_node("n1", "10.231.0.1", labels=linux), make_node("n2", "10.231.0.2", labels=linux)])
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": kube.url}}],
                "users": [{"name": "test", "user": {"token": "test"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
            kubeconfig.chmod(0o644)
            options = podman.pod_options(pod, {"metadata.namespace": NAMESPACE}, {})
            options += ["--network", "host", "--volume", f"{kubeconfig}:/kube/config:ro"]
            args = [*pod["containers"][0]["args"], "--kubeconfig", "/kube/config"]
            env = {var["name"]: var.get("value") for var in pod["containers"][0]["env"]}
            configmap = env["NODE_PING_CONFIGMAP"]
            with podman.container(images.discovery, options, args) as name:
                deadline = time.monotonic() + 60
                while kube.configmap(NAMESPACE, configmap) is None:
                    assert podman.state(name)["Running"], podman.logs(name)
                    assert time.monotonic() < deadline, f"no ConfigMap after 60 s:\n{podman.logs(name)}"
                    time.sleep(0.2)
                stored = kube.configmap(NAMESPACE, configmap)
                assert stored is not None
                parsed = parse_nodes(stored["data"]["nodes.json"])
                assert parsed.problems == ()
                assert {(t.name, t.address) for t in parsed.targets} == {("n1", "10.231.0.1"), ("n2", "10.231.0.2")}
                stopped = podman.podman("stop", "--time", "30", name, timeout=60)
                assert stopped.returncode == 0
                assert podman.state(name)["ExitCode"] == 0, podman.logs(name)
