"""Building node-ping's images with Debian's podman and running them the way the chart runs them.

There is no registry here: the Dockerfile's base image is made from Debian's packages by
scripts/stand_in_base.sh (kept between runs), and builds never pull. The chart's pod spec is turned
into `podman run` options by `pod_options`, so a test runs what the chart renders, not a copy of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.support.processes import REPO

# runc, not crun: crun refuses a host with both cgroup v1 and v2 hierarchies. cgroupfs: no systemd.
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
# Below the hard limits of a test machine: podman's defaults ask for more than it may grant.
ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
STAND_IN_BASE = REPO / "scripts" / "stand_in_base.sh"
# The build stage's pip verifies PyPI with the machine's CA bundle; mounted for RUN only, never in a layer.
CA_CERTIFICATES = Path("/etc/ssl/certs")
TEST_LABEL = "org.node-ping.test-run"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def unavailable() -> str | None:
    """None if images can be built and run here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root: podman runs the containers with the chart's capabilities and network namespaces"
    for tool in ("podman", "runc", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    info = subprocess.run([*PODMAN, "info"], capture_output=True, text=True, timeout=120, check=False)
    if info.returncode != 0:
        return f"podman cannot run here: {info.stderr.strip()}"
    return None


def base_image() -> str:
    """The name of the Dockerfile's base image in podman's storage, made first if missing."""
    made = subprocess.run(["bash", str(STAND_IN_BASE)], capture_output=True, text=True, timeout=900, check=False)
    assert made.returncode == 0, f"{STAND_IN_BASE.name} failed: {made.stderr}"
    return made.stdout.strip().splitlines()[-1]


def build(target: str, tag: str, workdir: Path) -> str:
    """Build one target of the repository's Dockerfile as `tag`; its image id. --layers=false: podman
    4.3 cannot bind-mount a stage that comes from its layer cache (RUN --mount=from=build)."""
    iidfile = workdir / f"{target}.iid"
    built = podman("build", "--pull=never", "--layers=false", *ULIMITS, "--target", target, "--tag", tag,
                   "--label", f"{TEST_LABEL}={os.getpid()}", "--iidfile", str(iidfile),
                   "--volume", f"{CA_CERTIFICATES}:{CA_CERTIFICATES}:ro", str(REPO), timeout=900, check=False)
    assert built.returncode == 0, f"building {target} failed:\n{built.stdout[-4000:]}\n{built.stderr[-4000:]}"
    return iidfile.read_text().strip()


def remove_images(*images: str) -> None:
    for image in images:
        podman("rmi", "--force", image, check=False)


def size(image: str) -> int:
    """Bytes, as podman counts an image (its layers and those of its base)."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)


def memory(quantity: str) -> str:
    """A Kubernetes memory quantity as podman's --memory takes it (bytes)."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return str(int(quantity[: -len(suffix)]) * factor)
    return quantity


def pod_options(pod: Mapping[str, Any], field_values: Mapping[str, str],
                host_paths: Mapping[str, Path]) -> list[str]:
    """`podman run` options for the pod's only container: its user, capabilities, read-only root,
    no_new_privs, memory limit, environment and mounts. `field_values` gives the fieldRef values
    (e.g. spec.nodeName); `host_paths` the directory that stands for each configMap, projected or
    hostPath volume by name. emptyDirs become tmpfs of their sizeLimit."""
    (container,) = pod["containers"]
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    options = ["--user", f"{security['runAsUser']}:{security['runAsGroup']}"]
    capabilities = security.get("capabilities", {})
    options += [f"--cap-drop={cap.lower()}" for cap in capabilities.get("drop", [])]
    options += [f"--cap-add={cap.lower()}" for cap in capabilities.get("add", [])]
    assert not security.get("privileged", False)
    if security.get("readOnlyRootFilesystem"):
        # Without podman's own tmpfs on /tmp, /run and /var/tmp: only the pod's volumes are writable.
        options += ["--read-only", "--read-only-tmpfs=false"]
    if security.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    if "memory" in container.get("resources", {}).get("limits", {}):
        options += ["--memory", memory(container["resources"]["limits"]["memory"])]
    for var in container.get("env", []):
        value = var["value"] if "value" in var else field_values[var["valueFrom"]["fieldRef"]["fieldPath"]]
        options += ["--env", f"{var['name']}={value}"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            limit = volume["emptyDir"].get("sizeLimit")
            options += ["--tmpfs", mount["mountPath"] + (f":size={memory(limit)}" if limit else "")]
        else:
            mode = "ro" if mount.get("readOnly") else "rw"
            options += ["--volume", f"{host_paths[mount['name']]}:{mount['mountPath']}:{mode}"]
    return options


@contextlib.contextmanager
def container(image: str, options: list[str], args: list[str]) -> Iterator[str]:
    """A detached container of `image` with the pod's `options` and `args`; its name. Removed on exit,
    running or not."""
    name = f"node-ping-test-{uuid.uuid4().hex[:12]}"
    podman("run", "--detach", "--name", name, "--pull=never", *ULIMITS, *options, image, *args)
    try:
        yield name
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def state(name: str) -> dict[str, Any]:
    inspected = json.loads(podman("container", "inspect", name).stdout)
    result: dict[str, Any] = inspected[0]["State"]
    return result


def logs(name: str) -> str:
    shown = podman("logs", name, check=False)
    return shown.stdout + shown.stderr


def run(image: str, *argv: str, entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
    """One short command in a throwaway container without a network."""
    options = ["--entrypoint", entrypoint] if entrypoint else []
    return podman("run", "--rm", "--pull=never", "--network", "none", *ULIMITS, *options, image, *argv,
                  check=False)
