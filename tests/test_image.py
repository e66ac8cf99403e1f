"""The container image, without a container engine: what the Dockerfile says is checked against the
repository, Debian and the Helm chart, and its two stages are replayed (wheels built from the files
it copies, installed offline into a clean virtualenv) to see the entrypoint work.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CHART = REPO / "charts" / "node-ping"
BASE_IMAGE = "python:3.11-slim-bookworm"


@dataclass
class Stage:
    """One FROM ... section of the Dockerfile: the base, the optional name, its instructions."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions; line continuations joined, comments dropped, ARGs declared
    before the first FROM substituted into FROM lines (as Docker does)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        args = args.strip()
        if instruction == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif instruction == "FROM":
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], args.split()[0])
            words = args.split()
            stage_name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, stage_name))
        else:
            assert stages, f"{instruction} before the first FROM"
            stages[-1].instructions.append((instruction, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


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


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative, with /) out of the build context: the last pattern
    that matches the path or one of its parent directories decides; `!` re-includes."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                out += "(?:.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                out += ".*"
                index += 2
            elif pattern[index] == "*":
                out += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                out += "[^/]"
                index += 1
            else:
                out += re.escape(pattern[index])
                index += 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw[1:] if negated else raw
        pattern = pattern.strip().strip("/")
        if any(regex(pattern).fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def chart_objects(values: dict[str, object] | None = None) -> list[dict[str, object]]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name="node-ping", namespace="monitoring")
    return [obj for path, text in manifests.items() if path.endswith(".yaml")
            for obj in yaml.safe_load_all(text) if obj]


def pod_spec(kind: str) -> dict[str, object]:
    (workload,) = [obj for obj in chart_objects() if obj["kind"] == kind]
    spec = workload["spec"]
    assert isinstance(spec, dict)
    pod: dict[str, object] = spec["template"]["spec"]
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

    def test_user_matches_the_chart(self, final: Stage) -> None:
        commands = run_commands(final)
        (useradd,) = [c for c in commands if c[0] == "useradd"]
        (groupadd,) = [c for c in commands if c[0] == "groupadd"]
        uid = int(useradd[useradd.index("--uid") + 1])
        gid = int(groupadd[groupadd.index("--gid") + 1])
        assert useradd[-1] == "node-ping" and useradd[useradd.index("--gid") + 1] == str(gid)
        # USER must be numeric: the kubelet cannot check runAsNonRoot against a user name.
        (user,) = final.all("USER")
        assert user == f"{uid}:{gid}"
        security = pod_spec("Deployment")["securityContext"]
        assert isinstance(security, dict)
        assert (security["runAsUser"], security["runAsGroup"], security["runAsNonRoot"]) == (uid, gid, True)

    def test_entrypoint(self, final: Stage) -> None:
        (entrypoint,) = final.all("ENTRYPOINT")
        (cmd,) = final.all("CMD")
        assert json.loads(entrypoint) == ["node-ping"]
        assert json.loads(cmd) == ["run"]
        scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
        assert "node-ping" in scripts
        # The chart passes only arguments, so the entrypoint runs them.
        for kind, args in (("DaemonSet", ["run"]), ("Deployment", ["discover"])):
            containers = pod_spec(kind)["containers"]
            assert isinstance(containers, list)
            assert "command" not in containers[0] and containers[0]["args"] == args

    def test_copied_paths_exist_and_reach_the_builder(self, stages: list[Stage]) -> None:
        patterns = dockerignore_patterns()
        sources = [source for stage in stages for source in copied_sources(stage)]
        assert {"pyproject.toml", "requirements.txt", "node_ping"} <= set(sources)
        for source in sources:
            path = REPO / source
            assert path.exists(), f"COPY {source}: no such file in the repository"
            files = [path] if path.is_file() else [
                f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
            assert files
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                assert not dockerignore_excludes(relative, patterns), f"{relative} is in .dockerignore"

    def test_dockerignore_keeps_the_rest_out(self) -> None:
        patterns = dockerignore_patterns()
        for path in (".git/config", ".venv/bin/python", "tests/test_image.py", "charts/node-ping/values.yaml",
                     "node_ping/__pycache__/cli.cpython-311.pyc"):
            assert dockerignore_excludes(path, patterns), path
        assert not dockerignore_excludes("node_ping/cli.py", patterns)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory, stages: list[Stage]) -> Iterator[Path]:
    """Replay the image build: copy exactly the files the Dockerfile copies into a fresh context,
    build the wheels like the build stage, install them offline into a clean virtualenv like the
    final stage. Yields the virtualenv."""
    root = tmp_path_factory.mktemp("image")
    context = root / "src"
    context.mkdir()
    for source in copied_sources(stages[0]):
        path = REPO / source
        if path.is_dir():
            shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, context / source)
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    for command in (
        [*pip, "wheel", "--no-cache-dir", "--wheel-dir", str(wheels), "--no-deps", "."],
        [*pip, "wheel", "--wheel-dir", str(wheels), "-r", "requirements.txt"],
    ):
        built = subprocess.run(command, cwd=context, capture_output=True, text=True, timeout=900, check=False)
        assert built.returncode == 0, built.stdout + built.stderr
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "--no-cache-dir", "--no-index",
         "--find-links", str(wheels), *map(str, sorted(wheels.glob("*.whl")))],
        capture_output=True, text=True, timeout=900, check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    try:
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
