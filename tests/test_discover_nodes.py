"""node_ping.discover.nodes: Node objects in, the exporter's nodes.json out, as pure functions.

A Node -> its target entry, the target list -> the exact nodes.json text, "does it need writing".
Nodes are written as the JSON dicts the API server sends (tests/support/fake_kube_api.make_node);
what is rendered is read back with the exporter's own loader, `node_ping.targets.parse_nodes`.
"""

from __future__ import annotations

import json

import pytest

from node_ping.discover.nodes import (
    CONFIGMAP_LIMIT_BYTES,
    needs_write,
    node_target,
    oversize,
    render_nodes_json,
    summarize_change,
    validate_nodes_json,
)
from node_ping.targets import NodeTarget, parse_nodes
from tests.support.discovery import target
from tests.support.fake_kube_api import make_node


class TestNodeTarget:
    """A Node object becomes one nodes.json entry: the preferred address type, its zone, or nothing yet."""

    def test_internal_ip_is_preferred_over_external_ip(self) -> None:
        node = make_node("n1", "10.0.0.1", "203.0.113.1")
        assert node_target(node, ("InternalIP", "ExternalIP")) == target("n1", "10.0.0.1")

    def test_external_ip_when_there_is_no_internal_ip(self) -> None:
        node = make_node("n1", None, "203.0.113.1")
        assert node_target(node, ("InternalIP", "ExternalIP")) == target("n1", "203.0.113.1")

    def test_preference_is_configurable(self) -> None:
        node = make_node("n1", "10.0.0.1", "203.0.113.1")
        assert node_target(node, ("ExternalIP", "InternalIP")) == target("n1", "203.0.113.1")
        assert node_target(make_node("n2", None, "203.0.113.2"), ("InternalIP",)) is None

    def test_order_of_the_address_list_does_not_override_the_preference(self) -> None:
        node = make_node("n1", addresses=[("ExternalIP", "203.0.113.1"), ("InternalIP", "10.0.0.1")])
        assert node_target(node, ("InternalIP", "ExternalIP")) == target("n1", "10.0.0.1")

    def test_no_address_yet_gives_none(self) -> None:
        assert node_target(make_node("n1"), ("InternalIP", "ExternalIP")) is None  # only a Hostname
        bare = {"metadata": {"name": "n2"}, "status": {}}
        assert node_target(bare, ("InternalIP", "ExternalIP")) is None

    def test_dual_stack_takes_the_first_address_of_the_type(self) -> None:
        node = make_node("n1", addresses=[("InternalIP", "10.0.0.1"), ("InternalIP", "fd00::1")])
        assert node_target(node, ("InternalIP",)) == target("n1", "10.0.0.1")

    def test_rack_from_the_configured_label(self) -> None:
        node = make_node("n1", "10.0.0.1", zone="z1", labels={"example.com/rack": "r7", "other/rack": "x"})
        assert node_target(node, ("InternalIP",), "example.com/rack") == target("n1", "10.0.0.1", "z1", "r7")
        assert node_target(node, ("InternalIP",)) == target("n1", "10.0.0.1", "z1")  # no rack label: no rack
        unlabelled = make_node("n2", "10.0.0.2", labels={"example.com/rack": ""})
        assert node_target(unlabelled, ("InternalIP",), "example.com/rack") == target("n2", "10.0.0.2")

    def test_rack_is_written_and_read_back(self) -> None:
        text = render_nodes_json([target("n1", "10.0.0.1", "z1", "r7"), target("n2", "10.0.0.2", rack="r8")])
        assert text == ('[\n{"ipAddress":"10.0.0.1","name":"n1","rack":"r7","zone":"z1"},\n'
                        '{"ipAddress":"10.0.0.2","name":"n2","rack":"r8"}\n]\n')
        assert parse_nodes(text).targets == (target("n1", "10.0.0.1", "z1", "r7"), target("n2", "10.0.0.2", rack="r8"))

    def test_malformed_address_falls_through_to_the_next_usable_one(self) -> None:
        node = make_node("n1", addresses=[("InternalIP", "not-an-ip"), ("InternalIP", "fd00:0::0:1")])
        assert node_target(node, ("InternalIP",)) == target("n1", "fd00::1")  # normalised as fping prints it

    def test_zone_from_the_topology_label_only_when_present(self) -> None:
        assert node_target(make_node("n1", "10.0.0.1", zone="eu-1a"), ("InternalIP",)) == target(
            "n1", "10.0.0.1", "eu-1a")
        assert node_target(make_node("n1", "10.0.0.1"), ("InternalIP",)) == target("n1", "10.0.0.1")
        assert node_target(make_node("n1", "10.0.0.1", zone=""), ("InternalIP",)) == target("n1", "10.0.0.1")

    def test_not_ready_node_keeps_its_entry(self) -> None:
        node = make_node("n1", "10.0.0.1", ready=False)
        assert node_target(node, ("InternalIP",)) == target("n1", "10.0.0.1")


class TestRenderNodesJson:
    """The nodes.json text is a pure function of the node set: same set, same bytes."""

    def test_exact_layout(self) -> None:
        text = render_nodes_json([target("b", "10.0.0.2"), target("a", "10.0.0.1", "z1")])
        assert text == ('[\n'
                        '{"ipAddress":"10.0.0.1","name":"a","zone":"z1"},\n'
                        '{"ipAddress":"10.0.0.2","name":"b"}\n'
                        ']\n')

    def test_order_of_discovery_does_not_matter(self) -> None:
        nodes = [target(f"node-{i}", f"10.0.0.{i}", "z" if i % 2 else None) for i in range(1, 20)]
        assert render_nodes_json(nodes) == render_nodes_json(reversed(nodes))

    def test_the_exporter_reads_back_what_was_rendered(self) -> None:
        nodes = (target("a", "10.0.0.1", "z1"), target("b", "fd00::2"), target("c", "192.168.1.3", "z2"))
        parsed = parse_nodes(render_nodes_json(nodes))
        assert parsed.targets == nodes
        assert parsed.problems == ()

    def test_empty_cluster_is_an_empty_list(self) -> None:
        assert render_nodes_json([]) == "[]\n"
        assert parse_nodes(render_nodes_json([])).targets == ()

    def test_two_nodes_with_one_address_are_reported(self) -> None:
        problems = validate_nodes_json(render_nodes_json([target("a", "10.0.0.1"), target("b", "10.0.0.1")]))
        assert len(problems) == 1
        assert "'10.0.0.1'" in problems[0] and "'b'" in problems[0]


def cloud_nodes(count: int, zone: str | None = None) -> list[NodeTarget]:
    """Nodes with names of 63 characters, the most a label value (and so a node name used as one) may
    have, and IPv6 addresses of the longest form."""
    return [target(f"node-{i:06d}-".ljust(63, "x"),
                   f"fd00:1234:5678:9abc:def0:{0x1000 + i // 4096:x}:{0x1000 + i % 4096:x}:abcd", zone)
            for i in range(count)]


class TestConfigMapLimit:
    """nodes.json must fit the 1 MiB the API server accepts in a ConfigMap: 8,065 nodes with 63-character
    names and IPv6 addresses do (6,808 with a zone such as europe-west1-b); beyond that discovery says so."""

    @pytest.mark.parametrize(("count", "zone"), [(8_000, None), (6_800, "europe-west1-b")])
    def test_the_largest_clusters_fit(self, count: int, zone: str | None) -> None:
        text = render_nodes_json(cloud_nodes(count, zone))
        assert len(text.encode()) <= CONFIGMAP_LIMIT_BYTES
        assert oversize(text, count) is None
        assert parse_nodes(text).targets == tuple(cloud_nodes(count, zone))

    def test_an_entry_per_line(self) -> None:
        lines = render_nodes_json(cloud_nodes(3)).splitlines()
        assert (lines[0], lines[-1], len(lines)) == ("[", "]", 5)

    def test_the_exporter_reads_indented_lists_too(self) -> None:
        nodes = cloud_nodes(3, "z1")
        indented = json.dumps([{"name": n.name, "ipAddress": n.address, "zone": n.zone} for n in nodes], indent=2)
        assert parse_nodes(indented).targets == parse_nodes(render_nodes_json(nodes)).targets == tuple(nodes)

    def test_over_the_limit_says_why_and_what_to_do(self) -> None:
        text = render_nodes_json(cloud_nodes(8_200))
        assert oversize(text, 8_200) == (
            f"nodes.json for 8,200 nodes is {len(text):,} bytes, more than the 1,048,576 bytes (1 MiB) the API server "
            "accepts in a ConfigMap: not writing it, so the exporters keep the node list last written. Probe fewer "
            "nodes (--node-selector).")

    def test_other_keys_count_too(self) -> None:
        text = render_nodes_json(cloud_nodes(10))
        other = CONFIGMAP_LIMIT_BYTES - len(text) + 1
        assert oversize(text, 10, other - 1) is None
        message = oversize(text, 10, other)
        assert message is not None
        assert f"{len(text):,} bytes, 1,048,577 with the ConfigMap's other keys" in message
        assert message.endswith("or move the other keys out of this ConfigMap.")


class TestNeedsWrite:
    """Only a difference in the stored bytes causes a write."""

    def test_identical_text_needs_no_write(self) -> None:
        text = render_nodes_json([target("a", "10.0.0.1")])
        assert not needs_write(text, text)

    def test_missing_or_different_text_needs_a_write(self) -> None:
        text = render_nodes_json([target("a", "10.0.0.1")])
        assert needs_write(None, text)
        assert needs_write(render_nodes_json([target("a", "10.0.0.2")]), text)
        assert needs_write(json.dumps(json.loads(text)), text)  # same content, hand-formatted: put back

    def test_change_summary(self) -> None:
        old = render_nodes_json([target("a", "10.0.0.1"), target("b", "10.0.0.2")])
        new = render_nodes_json([target("a", "10.0.0.9"), target("c", "10.0.0.3")])
        assert summarize_change(old, new) == "1 added, 1 removed, 1 changed"
        assert summarize_change(None, new) == "new"
        assert summarize_change("{oops", new) == "replacing unreadable content"
