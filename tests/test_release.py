"""scripts/release.sh: the images it builds (both Dockerfile targets, both platforms, tagged with the
chart's appVersion), the chart package it makes, and what it says to push."""

from __future__ import annotations

import shlex
import subprocess
import tarfile
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from tests.support.chart import CHART, REPO

SCRIPT = REPO / "scripts" / "release.sh"
CHART_YAML = yaml.safe_load((CHART / "Chart.yaml").read_text())
APP_VERSION = str(CHART_YAML["appVersion"])
CHART_VERSION = str(CHART_YAML["version"])
IMAGES = {"exporter": "node-ping", "discovery": "node-ping-discovery"}
LOCAL = "localhost/"
"""How podman names a local image: a short name in `containers-storage:` would mean docker.io/library/."""
PLATFORMS = ("linux/amd64", "linux/arm64")


def release(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False)


def commands(stdout: str) -> list[list[str]]:
    """The commands a run printed (`+ cmd args`), split as a shell would."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


class TestDryRun:
    """`--dry-run` prints every command of a release and runs none."""

    @pytest.fixture(scope="class")
    def dry(self) -> subprocess.CompletedProcess[str]:
        return release("--dry-run", "--out", "/nonexistent/dist")

    def test_builds_each_target_for_each_platform(self, dry: subprocess.CompletedProcess[str]) -> None:
        assert dry.returncode == 0, dry.stderr
        builds = [c for c in commands(dry.stdout) if c[:2] == ["podman", "build"]]
        seen = {(option(c, "--target"), option(c, "--platform")): option(c, "--tag") for c in builds}
        assert len(builds) == len(seen) == 4
        for target, image in IMAGES.items():
            for platform in PLATFORMS:
                assert seen[(target, platform)] == f"{LOCAL}{image}:{APP_VERSION}-{platform.removeprefix('linux/')}"
        for build in builds:
            assert option(build, "--file") == str(REPO / "Dockerfile") and build[-1] == str(REPO)

    def test_one_manifest_list_per_image(self, dry: subprocess.CompletedProcess[str]) -> None:
        """Both architectures under the tag the chart pulls by default (appVersion)."""
        printed = commands(dry.stdout)
        for image in IMAGES.values():
            local = f"{LOCAL}{image}:{APP_VERSION}"
            assert ["podman", "manifest", "create", local] in printed  # afresh: no old entries kept
            added = {c[-1] for c in printed if c[:4] == ["podman", "manifest", "add", local]}
            assert added == {f"containers-storage:{local}-{arch}" for arch in ("amd64", "arm64")}

    def test_packages_the_chart(self, dry: subprocess.CompletedProcess[str]) -> None:
        (package,) = [c for c in commands(dry.stdout) if "package" in " ".join(c)]
        assert str(CHART) in package and "/nonexistent/dist" in package

    def test_prints_what_to_push(self, dry: subprocess.CompletedProcess[str]) -> None:
        for image in IMAGES.values():
            assert (f"podman manifest push --all {LOCAL}{image}:{APP_VERSION} "
                    f"docker://<registry>/{image}:{APP_VERSION}") in dry.stdout
        assert f"helm push /nonexistent/dist/node-ping-{CHART_VERSION}.tgz oci://<registry>/charts" in dry.stdout

    def test_writes_nothing(self, dry: subprocess.CompletedProcess[str]) -> None:
        assert not Path("/nonexistent").exists()
        assert f"# node-ping {APP_VERSION}, chart {CHART_VERSION}" in dry.stdout

    def test_registry_names_the_images(self) -> None:
        run = release("--dry-run", "--registry", "registry.example.com/team/")
        tags = {option(c, "--tag") for c in commands(run.stdout) if c[:2] == ["podman", "build"]}
        assert tags == {f"registry.example.com/team/{image}:{APP_VERSION}-{arch}"
                        for image in IMAGES.values() for arch in ("amd64", "arm64")}
        assert (f"podman manifest push --all registry.example.com/team/node-ping:{APP_VERSION} "
                f"docker://registry.example.com/team/node-ping:{APP_VERSION}") in run.stdout

    def test_refuses_an_unknown_argument(self) -> None:
        run = release("--dryrun")
        assert run.returncode == 2
        assert "unknown argument '--dryrun'" in run.stderr and run.stdout == ""


class TestChartPackage:
    """`--chart-only` really packages the chart, as `helm package` lays it out."""

    def test_package(self, tmp_path: Path) -> None:
        run = release("--chart-only", "--out", str(tmp_path))
        assert run.returncode == 0, run.stderr
        package = tmp_path / f"node-ping-{CHART_VERSION}.tgz"
        assert str(package) in run.stdout
        with tarfile.open(package) as archive:
            names = archive.getnames()
            chart_yaml = archive.extractfile("node-ping/Chart.yaml")
            assert chart_yaml is not None
            packaged = yaml.safe_load(chart_yaml.read())
        assert (packaged["version"], packaged["appVersion"]) == (CHART_VERSION, APP_VERSION)
        assert all(name.startswith("node-ping/") for name in names)
        assert {"node-ping/values.schema.json", "node-ping/templates/daemonset.yaml",
                "node-ping/files/node-ping-dashboard.json"} <= set(names)
        assert not [c for c in commands(run.stdout) if c[:2] == ["podman", "build"]]
        with helm.Chart.load(package) as loaded:
            assert loaded.metadata["version"] == CHART_VERSION
