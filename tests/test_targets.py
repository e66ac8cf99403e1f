"""nodes.json / external.json: what is accepted, what is skipped, and the messages users see."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from node_ping import contract
from node_ping.probe.config import CONFIG, EXTERNAL_CONFIG
from node_ping.targets import (
    ConfigError,
    ExternalTarget,
    NodeTarget,
    parse_external,
    parse_nodes,
    read_external,
    read_nodes,
)
from tests.support.exposition import families
from tests.support.processes import NODE_PING, stop


def nodes_json(*entries: object) -> str:
    return json.dumps(list(entries))


class TestNodes:
    """The node list, as written by the chart or by discovery."""

    def test_valid_list_with_ipv4_ipv6_and_zone(self) -> None:
        loaded = parse_nodes(nodes_json({"name": "a", "ipAddress": "10.0.0.1"},
                                        {"name": "b", "ipAddress": "FD00::0002", "zone": "z1"}))
        assert loaded.targets == (NodeTarget("a", "10.0.0.1"), NodeTarget("b", "fd00::2", "z1"))
        assert loaded.problems == ()

    def test_rack_is_read_like_the_zone(self) -> None:
        """Discovery writes a rack from a node label; empty means unknown, as for the zone."""
        loaded = parse_nodes(nodes_json({"name": "a", "ipAddress": "10.0.0.1", "zone": "z1", "rack": "r7"},
                                        {"name": "b", "ipAddress": "10.0.0.2", "rack": ""}))
        assert loaded.targets == (NodeTarget("a", "10.0.0.1", "z1", "r7"), NodeTarget("b", "10.0.0.2"))
        assert loaded.problems == ()

    @pytest.mark.parametrize(("text", "fragment"), [
        ("", "is empty"),
        ("   \n", "is empty"),
        ("[{", "not valid JSON"),
        ('{"name": "a"}', "holds a JSON object, not a list"),
        ("42", "holds a JSON number, not a list"),
        ("null", "holds a JSON null, not a list"),
    ])
    def test_unusable_file_raises_with_fix(self, text: str, fragment: str) -> None:
        with pytest.raises(ConfigError, match=fragment) as info:
            parse_nodes(text, "/config/nodes.json")
        assert "/config/nodes.json" in str(info.value)
        assert '"ipAddress"' in str(info.value)  # says what the file should look like

    @pytest.mark.parametrize(("entry", "fragment"), [
        ({"ipAddress": "10.0.0.9"}, "'name' is missing"),
        ({"name": "x"}, "'ipAddress' is missing"),
        ({"name": "x", "ipAddress": 10}, "'ipAddress' is missing or not a non-empty string"),
        ({"name": "x", "ipAddress": "10.0.0.300"}, "not a valid unicast"),
        ({"name": "x", "ipAddress": "node-x.example"}, "not a valid unicast"),
        ({"name": "x", "ipAddress": "0.0.0.0"}, "not a valid unicast"),  # noqa: S104 - a value, not a bind
        ({"name": "x", "ipAddress": "224.0.0.1"}, "not a valid unicast"),
        ({"name": "x", "ipAddress": "-f/etc/shadow"}, "starts with '-'"),
        ({"name": "-x", "ipAddress": "10.0.0.9"}, "starts with '-'"),
        ({"name": "x", "ipAddress": "10.0.0.9", "zone": 3}, "zone"),
        ({"name": "x", "ipAddress": "10.0.0.9", "rack": ["r1"]}, "rack of node 'x' must be a string or absent"),
        # Both become label values of the node's info metric: a lone surrogate would break every write.
        ({"name": "x", "ipAddress": "10.0.0.9", "rack": "\ud800"}, "rack '\\ud800' of node 'x' is not valid Unicode"),
        # fping names the interface in its report: a result for %2 would never be matched.
        ({"name": "x", "ipAddress": "fe80::1%2"}, "numeric zone; name the interface instead, e.g. fe80::1%eth0"),
        # Checked as what fping is given, after the IPv4-mapped form is converted.
        ({"name": "x", "ipAddress": "::ffff:0.0.0.0"}, "not a valid unicast"),
        ({"name": "x", "ipAddress": "::ffff:224.0.0.1"}, "not a valid unicast"),
        ({"name": "x", "ipAddress": "255.255.255.255"}, "not a valid unicast"),
        # fping resolves a zone on a link-local address only; on any other it reports nothing.
        ({"name": "x", "ipAddress": "fd00::1%eth0"}, "only a link-local address (fe80::/10) takes; remove %eth0"),
        ("10.0.0.9", "not a JSON object"),
    ])
    def test_bad_entry_is_skipped_and_named(self, entry: object, fragment: str) -> None:
        loaded = parse_nodes(nodes_json({"name": "good", "ipAddress": "10.0.0.1"}, entry))
        assert loaded.targets == (NodeTarget("good", "10.0.0.1"),)
        (problem,) = loaded.problems
        assert fragment in problem and "entry 1" in problem

    def test_duplicates_are_skipped(self) -> None:
        loaded = parse_nodes(nodes_json({"name": "a", "ipAddress": "10.0.0.1"},
                                        {"name": "b", "ipAddress": "10.0.0.1"},
                                        {"name": "a", "ipAddress": "10.0.0.2"},
                                        {"name": "c", "ipAddress": "fd00::1"},
                                        {"name": "d", "ipAddress": "FD00:0::1"}))
        assert [t.name for t in loaded.targets] == ["a", "c"]
        assert len(loaded.problems) == 3 and all("listed twice" in p for p in loaded.problems)

    def test_empty_list_is_valid(self) -> None:
        assert parse_nodes("[]").targets == ()

    def test_missing_file_is_an_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"does not exist.*'--config' \(env var: 'NODE_PING_CONFIG'\)"):
            read_nodes(tmp_path / "nodes.json", CONFIG.hint)

    def test_unreadable_files_say_what_to_do(self, tmp_path: Path) -> None:
        (tmp_path / "dir").mkdir()
        with pytest.raises(ConfigError, match=r"is a directory, not a file; point '--config' "
                                              r"\(env var: 'NODE_PING_CONFIG'\)"):
            read_nodes(tmp_path / "dir", CONFIG.hint)
        latin1 = tmp_path / "latin1.json"
        latin1.write_bytes('[{"name": "n\xf6de", "ipAddress": "10.0.0.1"}]'.encode("latin-1"))
        with pytest.raises(ConfigError, match=r"is not UTF-8 text .*save it as UTF-8"):
            read_nodes(latin1, CONFIG.hint)
        with pytest.raises(ConfigError, match=r"is a directory.*NODE_PING_EXTERNAL_CONFIG"):
            read_external(tmp_path / "dir", EXTERNAL_CONFIG.hint)


class TestExternal:
    """External hosts: IP addresses or DNS names, never options."""

    def test_ip_and_names(self) -> None:
        loaded = parse_external(json.dumps([{"name": "dns", "host": "8.8.8.8"},
                                            {"name": "web", "host": "example.com."}]))
        assert loaded.targets == (ExternalTarget("dns", "8.8.8.8"), ExternalTarget("web", "example.com."))

    @pytest.mark.parametrize("host", ["-q", "exa mple.com", "a..b", "x" * 64 + ".com", "1.2.3.4.5:80", "fe80::1%2",
                                      "224.0.0.1", "::ffff:0.0.0.0", "::ffff:224.0.0.1", "::1%lo"])
    def test_bad_hosts_are_skipped(self, host: str) -> None:
        loaded = parse_external(json.dumps([{"name": "bad", "host": host}]))
        assert loaded.targets == () and len(loaded.problems) == 1

    def test_missing_file_means_no_external_targets(self, tmp_path: Path) -> None:
        assert read_external(tmp_path / "external.json", EXTERNAL_CONFIG.hint).targets == ()
        (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere")
        assert read_external(tmp_path / "dangling.json", EXTERNAL_CONFIG.hint).targets == ()


class TestInterfaces:
    """A link-local address names an interface; without it on this node fping reports nothing."""

    def test_an_absent_interface_is_a_bad_entry_every_time_it_is_read(self, tmp_path: Path) -> None:
        nodes = tmp_path / "nodes.json"
        nodes.write_text(nodes_json({"name": "here", "ipAddress": "fe80::1%lo"},
                                    {"name": "gone", "ipAddress": "fe80::2%np-absent0"}))
        for _ in range(2):
            loaded = read_nodes(nodes, CONFIG.hint)
            assert loaded.targets == (NodeTarget("here", "fe80::1%lo"),)
            (problem,) = loaded.problems
            assert "'fe80::2%np-absent0' of 'gone' names the interface 'np-absent0'" in problem
        external = tmp_path / "external.json"
        external.write_text(json.dumps([{"name": "gone", "host": "fe80::2%np-absent0"}]))
        external_list = read_external(external, EXTERNAL_CONFIG.hint)
        assert external_list.targets == () and len(external_list.problems) == 1

    def test_the_check_is_of_the_host_not_of_the_text(self) -> None:
        """Discovery renders nodes.json on another node: parsing alone does not look at interfaces."""
        assert parse_nodes(nodes_json({"name": "x", "ipAddress": "fe80::2%np-absent0"})).problems == ()


class TestOnlyRegularFiles:
    """A FIFO or a device where a list should be is refused by its type, without reading from it."""

    @pytest.mark.parametrize("setting", ["--config", "--external-config"])
    def test_a_fifo_is_refused_without_blocking(self, tmp_path: Path, setting: str) -> None:
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        (tmp_path / "nodes.json").write_text(nodes_json({"name": "a", "ipAddress": "127.0.0.2"}))
        paths = {"--config": tmp_path / "nodes.json", "--external-config": tmp_path / "external.json", setting: fifo}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NODE_PING", "MY_NODE", "PROMETHEUS_"))}
        process = subprocess.Popen([*NODE_PING, "once", "--node-name", "self", "--count", "1", "--period-ms", "10",
                                    *[str(part) for pair in paths.items() for part in pair]],
                                   env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = process.communicate(timeout=30)  # bounds a hang; a normal run takes about a second
        finally:
            stop(process)
        assert process.returncode == 1, err  # the list was never read: `once` says so
        env_var = "NODE_PING_CONFIG" if setting == "--config" else "NODE_PING_EXTERNAL_CONFIG"
        assert f"{fifo} is a named pipe (FIFO), not a regular file; point '{setting}' (env var: '{env_var}') at" in err
        series = families(out)
        assert {labels["kind"]: v for labels, v in series[contract.ERRORS.name]}[contract.CONFIG_ERROR] == 1
        if setting == "--external-config":  # the node list is probed all the same
            assert [labels["destination_node"] for labels, _ in series[contract.NODE.packets_sent.name]] == ["a"]

    def test_a_link_to_a_device_is_refused_a_link_to_a_file_read(self, tmp_path: Path) -> None:
        """A ConfigMap volume is links into ..data/: links are followed, to files only."""
        (tmp_path / "..data").mkdir()
        (tmp_path / "..data" / "nodes.json").write_text(nodes_json({"name": "a", "ipAddress": "10.0.0.1"}))
        (tmp_path / "nodes.json").symlink_to("..data/nodes.json")
        assert read_nodes(tmp_path / "nodes.json", CONFIG.hint).targets == (NodeTarget("a", "10.0.0.1"),)
        (tmp_path / "zero.json").symlink_to("/dev/zero")  # would never end
        with pytest.raises(ConfigError, match=r"zero.json is a character device, not a regular file; point "
                                              r"'--config' \(env var: 'NODE_PING_CONFIG'\) at the JSON file"):
            read_nodes(tmp_path / "zero.json", CONFIG.hint)
