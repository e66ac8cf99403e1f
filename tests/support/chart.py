"""The Helm chart rendered by Helm's own engine (helm-python-sdk): scenarios, and the objects it renders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "node-ping"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "node-ping"
NAMESPACE = "monitoring"

#: Scenario name -> user-supplied values, as `helm install -f ci/<name>` would pass them.
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    **{path.name: yaml.safe_load(path.read_text()) or {} for path in CI_VALUES},
}

class UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping, as Flux, kustomize and
    Argo CD do (PyYAML and Helm silently keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_manifests(text: str) -> list[dict[str, Any]]:
    return [obj for obj in yaml.load_all(text, Loader=UniqueKeyLoader) if obj]


@dataclass(frozen=True)
class Rendered:
    """One `helm template`: the objects, the NOTES.txt text and the values Helm used."""

    objects: list[dict[str, Any]]
    notes: str
    values: dict[str, Any]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        matches = [obj for obj in self.all(kind) if name is None or obj["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
        return matches[0]

    def has(self, kind: str) -> bool:
        return bool(self.all(kind))

    @property
    def notes_text(self) -> str:
        """NOTES.txt as one line of words, so that checks do not depend on where lines wrap."""
        return " ".join(self.notes.split())

    def component(self, kind: str, component: str) -> dict[str, Any]:
        """The one object of `kind` whose app.kubernetes.io/component label is `component`."""
        matches = [obj for obj in self.all(kind)
                   if obj["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        assert len(matches) == 1, f"expected one {kind} of component {component}, found {len(matches)}"
        return matches[0]

    @property
    def daemonset(self) -> dict[str, Any]:
        """The host prober's (the exporter's) DaemonSet."""
        return self.component("DaemonSet", "exporter")

    @property
    def pod_daemonset(self) -> dict[str, Any]:
        """The pod-network prober's DaemonSet (podNetwork.enabled)."""
        return self.component("DaemonSet", "pod-prober")

    @property
    def exporter(self) -> dict[str, Any]:
        (container,) = self.daemonset["spec"]["template"]["spec"]["containers"]
        assert isinstance(container, dict)
        return container

    @property
    def exporter_env(self) -> dict[str, dict[str, Any]]:
        return {var["name"]: var for var in self.exporter["env"]}

    @property
    def discovery(self) -> dict[str, Any]:
        return self.one("Deployment")


def render(chart: helm.Chart, values: dict[str, Any] | None = None, *,
           release: str = RELEASE, namespace: str = NAMESPACE) -> Rendered:
    manifests = chart.render(values or {}, name=release, namespace=namespace)
    objects = [obj for path, text in sorted(manifests.items()) if path.endswith((".yaml", ".yml"))
               for obj in load_manifests(text)]
    notes = next((text for path, text in manifests.items() if path.endswith("NOTES.txt")), "")
    return Rendered(objects, notes, chart.merge_values(values or {}))
