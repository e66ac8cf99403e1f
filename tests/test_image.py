"""The container image, without a container engine: what the Dockerfile says is checked against the
repository, Debian and the Helm chart, and its two stages are replayed (wheels built from the files
the builder receives and the build stage copies, installed offline into a clean virtualenv) to see
the entrypoint work.

The Dockerfile is read by dockerfile-parse, and the build context is what the Docker SDK's own
.dockerignore matcher lets through, so neither reading can drift from Docker's.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
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

from tests.support.chart import CHART, REPO, Rendered, render
from tests.support.processes import PYTHON

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

    def test_base_image(self, stages: list[Stage]) -> None:
        assert len(stages) == 2
        assert [stage.base for stage in stages] == [BASE_IMAGE, BASE_IMAGE]
        assert stages[0].name == "build"

    def test_build_stage_makes_wheels(self, stages: list[Stage]) -> None:
        commands = [" ".join(command) for command in run_commands(stages[0])]
        assert any(c.startswith("pip wheel") and "--no-deps" in c and c.endswith(" .") for c in commands)
        assert any(c.startswith("pip wheel") and "-r requirements.txt" in c for c in commands)

    def test_final_stage_installs_only_the_wheels(self, final: Stage) -> None:
        (install,) = [c for c in run_commands(final) if c[:2] == ["pip", "install"]]
        assert "--no-index" in install
        assert any("from=build" in args for args in final.all("RUN"))

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

    def test_user_matches_the_chart(self, final: Stage, rendered: Rendered) -> None:
        commands = run_commands(final)
        (useradd,) = [c for c in commands if c[0] == "useradd"]
        (groupadd,) = [c for c in commands if c[0] == "groupadd"]
        uid = int(useradd[useradd.index("--uid") + 1])
        gid = int(groupadd[groupadd.index("--gid") + 1])
        assert useradd[-1] == "node-ping" and useradd[useradd.index("--gid") + 1] == str(gid)
        # USER must be numeric: the kubelet cannot check runAsNonRoot against a user name.
        (user,) = final.all("USER")
        assert user == f"{uid}:{gid}"
        security = pod_spec(rendered.discovery)["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"], security["runAsNonRoot"]) == (uid, gid, True)

    def test_entrypoint(self, final: Stage, rendered: Rendered) -> None:
        (entrypoint,) = final.all("ENTRYPOINT")
        (cmd,) = final.all("CMD")
        assert json.loads(entrypoint) == ["node-ping"]
        assert json.loads(cmd) == ["run"]
        scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
        assert "node-ping" in scripts
        # The chart passes only arguments, so the entrypoint runs them.
        for workload, args in ((rendered.daemonset, ["run"]), (rendered.discovery, ["discover"])):
            container = pod_spec(workload)["containers"][0]
            assert "command" not in container and container["args"] == args

    def test_copied_paths_exist_and_reach_the_builder(self, stages: list[Stage]) -> None:
        context = build_context(REPO)
        sources = [source for stage in stages for source in copied_sources(stage)]
        assert {"pyproject.toml", "requirements.txt", "node_ping"} <= set(sources)
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


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory, stages: list[Stage]) -> Iterator[Path]:
    """Replay the image build: copy exactly the files the build stage copies out of the build
    context (what .dockerignore lets through) into a fresh directory, build the wheels like the
    build stage, install them offline into a clean virtualenv like the final stage. Yields the
    virtualenv."""
    root = tmp_path_factory.mktemp("image")
    try:
        workdir = root / "src"
        workdir.mkdir()
        context = build_context(REPO)
        for source in copied_sources(stages[0]):
            for file in source_files(source):
                relative = file.relative_to(REPO).as_posix()
                if relative in context:
                    (workdir / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, workdir / relative)
        wheels = root / "wheels"
        pip = [PYTHON, "-m", "pip", "--disable-pip-version-check", "--no-input"]
        for command in (
            [*pip, "wheel", "--no-cache-dir", "--wheel-dir", str(wheels), "--no-deps", "."],
            [*pip, "wheel", "--wheel-dir", str(wheels), "-r", "requirements.txt"],
        ):
            built = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900, check=False)
            assert built.returncode == 0, built.stdout + built.stderr
        venv = root / "venv"
        # The virtualenv's base is the interpreter without the project's packages: it stands for the image.
        subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True, timeout=300)
        installed = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "--no-cache-dir", "--no-index",
             "--find-links", str(wheels), *map(str, sorted(wheels.glob("*.whl")))],
            capture_output=True, text=True, timeout=900, check=False)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        yield venv
    finally:
        shutil.rmtree(root, ignore_errors=True)


def node_ping(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "node-ping"), *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.slow
class TestImageInstall:
    """The wheels build from the copied files alone and give a working `node-ping` entrypoint."""

    def test_wheel_version_is_the_chart_app_version(self, image_venv: Path) -> None:
        app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        shown = subprocess.run([str(image_venv / "bin" / "pip"), "show", "node-ping"], capture_output=True,
                               text=True, timeout=120, check=True)
        assert f"Version: {app_version}" in shown.stdout

    def test_help_lists_the_commands_the_chart_runs(self, image_venv: Path) -> None:
        shown = node_ping(image_venv, "--help")
        assert shown.returncode == 0, shown.stderr
        for command in ("run", "once", "health", "discover"):
            assert re.search(rf"\b{command}\b", shown.stdout), command

    def test_liveness_command_options(self, image_venv: Path) -> None:
        shown = node_ping(image_venv, "health", "--help")
        assert shown.returncode == 0, shown.stderr
        assert "--health-file" in shown.stdout and "--max-age" in shown.stdout

    def test_discover_runs_with_the_installed_dependencies(self, image_venv: Path) -> None:
        shown = node_ping(image_venv, "discover", "--help")
        assert shown.returncode == 0, shown.stderr
        imported = subprocess.run([str(image_venv / "bin" / "python"), "-c", "import kubernetes"],
                                  capture_output=True, text=True, timeout=120, check=False)
        assert imported.returncode == 0, imported.stderr

    def test_venv_is_clean(self, image_venv: Path) -> None:
        """Nothing leaks in from the test runner's environment: the venv sees only its own packages."""
        cfg = (image_venv / "pyvenv.cfg").read_text()
        assert "include-system-site-packages = false" in cfg
