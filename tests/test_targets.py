"""nodes.json / external.json: what is accepted, what is skipped, and the messages users see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node_ping.targets import (
    ConfigError,
    ExternalTarget,
    NodeTarget,
    parse_external,
    parse_nodes,
    read_external,
    read_nodes,
)


def nodes_json(*entries: object) -> str:
    return json.dumps(list(entries))


class TestNodes:
    """The node list, as written by the chart or by discovery."""

    def test_valid_list_with_ipv4_ipv6_and_zone(self) -> None:
        loaded = parse_nodes(nodes_json({"name": "a", "ipAddress": "10.0.0.1"},
                                        {"name": "b", "ipAddress": "FD00::0002", "zone": "z1"}))
        assert loaded.targets == (NodeTarget("a", "10.0.0.1"), NodeTarget("b", "fd00::2", "z1"))
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
        # fping names the interface in its report: a result for %2 would never be matched.
        ({"name": "x", "ipAddress": "fe80::1%2"}, "numeric zone; name the interface instead, e.g. fe80::1%eth0"),
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
        with pytest.raises(ConfigError, match=r"does not exist.*NODE_PING_CONFIG / --config"):
            read_nodes(tmp_path / "nodes.json")

    def test_unreadable_files_say_what_to_do(self, tmp_path: Path) -> None:
        (tmp_path / "dir").mkdir()
        with pytest.raises(ConfigError, match="is a directory, not a file; point NODE_PING_CONFIG"):
            read_nodes(tmp_path / "dir")
        latin1 = tmp_path / "latin1.json"
        latin1.write_bytes('[{"name": "n\xf6de", "ipAddress": "10.0.0.1"}]'.encode("latin-1"))
        with pytest.raises(ConfigError, match=r"is not UTF-8 text .*save it as UTF-8"):
            read_nodes(latin1)
        with pytest.raises(ConfigError, match=r"is a directory.*NODE_PING_EXTERNAL_CONFIG"):
            read_external(tmp_path / "dir")


class TestExternal:
    """External hosts: IP addresses or DNS names, never options."""

    def test_ip_and_names(self) -> None:
        loaded = parse_external(json.dumps([{"name": "dns", "host": "8.8.8.8"},
                                            {"name": "web", "host": "example.com."}]))
        assert loaded.targets == (ExternalTarget("dns", "8.8.8.8"), ExternalTarget("web", "example.com."))

    @pytest.mark.parametrize("host", ["-q", "exa mple.com", "a..b", "x" * 64 + ".com", "1.2.3.4.5:80", "fe80::1%2",
                                      "224.0.0.1"])
    def test_bad_hosts_are_skipped(self, host: str) -> None:
        loaded = parse_external(json.dumps([{"name": "bad", "host": host}]))
        assert loaded.targets == () and len(loaded.problems) == 1

    def test_missing_file_means_no_external_targets(self, tmp_path: Path) -> None:
        assert read_external(tmp_path / "external.json").targets == ()
