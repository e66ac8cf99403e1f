"""Properties that must hold for every input, not just the ones we thought of: the parser and the
config loaders never fail with an untyped exception, a valid fping report parses back to what
fping measured, the statistics are self-consistent, and any label text survives the exposition
format and prometheus_client's parser unchanged."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from node_ping import contract
from node_ping.probe.export import Snapshot, TargetRow, render
from node_ping.probe.report import parse_report, summarize
from node_ping.targets import ConfigError, TargetList, is_ip, normalise_ip, parse_external, parse_nodes

# Enough examples to find the classic mistakes, few enough that the file runs in seconds.
PROPERTY = settings(max_examples=150, deadline=None)

# Characters that the text formats involved treat specially, mixed into arbitrary text so the
# generator hits them often rather than once in a million.
TRICKY = st.sampled_from(['"', "\\", "\n", "\r", "\t", " ", ":", "-", "=", ",", "{", "}", "#", "\x00",
                          "é", "ß", "日本", "\u2028", "\U0001f600", "\\n", '\\"'])
LABEL_TEXT = st.lists(st.one_of(TRICKY, st.text(max_size=5)), max_size=8).map("".join)
# Lone surrogates are valid in JSON ("\\ud800") but cannot be written as UTF-8.
ANY_CHARS = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)

ADDRESS = st.ip_addresses().map(str)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), ANY_CHARS, ADDRESS,
                        LABEL_TEXT)
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(st.text(max_size=8), inner,
                                                                               max_size=4)),
                          max_leaves=12)
FIELD_VALUE = st.one_of(ADDRESS, LABEL_TEXT, ANY_CHARS, st.sampled_from(["localhost", "example.com", "-f", ""]),
                        JSON_SCALAR)
ENTRY = st.dictionaries(st.sampled_from(["name", "ipAddress", "zone", "host", "other"]), FIELD_VALUE, max_size=5)
# Lists of entries that look almost right: where real mistakes in a ConfigMap hide.
ENTRY_LIST = st.lists(st.one_of(ENTRY, JSON_VALUE), max_size=6)


def dumps(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


def check_loaded(result: TargetList[Any], data: Any, key: str) -> None:
    """What a loader accepted is usable: normalised, unique, safe for fping, and exportable."""
    assert isinstance(data, list)
    assert len(result.targets) + len(result.problems) == len(data)
    names = [t.name for t in result.targets]
    keys = [getattr(t, key) for t in result.targets]
    assert len(set(names)) == len(names) and len(set(keys)) == len(keys)
    for target in result.targets:
        assert target.name and not target.name.startswith("-")
        value = getattr(target, key)
        assert value and not value.startswith("-")
        if key == "address":
            assert normalise_ip(value) == value
        if is_ip(value):
            # An address that is accepted is one whose fping report line is read back under it:
            # else fping's result for it would be lost every cycle.
            assert parse_report(f"{value} : 0.05 -\n") == {value: (0.05, None)}
    rows = tuple(TargetRow((t.name, getattr(t, key)), 1, 1, 1.0, summarize([1.0])) for t in result.targets)
    text = render(Snapshot(source_node="self", nodes=rows))  # a name that cannot be exported must be refused
    exported = {s.labels["destination_node"] for f in text_string_to_metric_families(text) for s in f.samples
                if "destination_node" in s.labels}
    assert exported == set(names)


class TestLoadersNeverCrash:
    """nodes.json and external.json come from a ConfigMap anyone may edit: any text either loads
    or raises ConfigError with a message; never another exception that would end the cycle."""

    @PROPERTY
    @given(st.one_of(st.text(), ANY_CHARS))
    @example("[" * 5000)  # nesting deeper than the JSON decoder's recursion limit
    @example("[" + "1" * 5000 + "]")  # an integer longer than Python converts by default
    @example("[NaN, Infinity]")
    @example("\ufeff[]")  # a UTF-8 byte order mark, as some editors write it
    def test_arbitrary_text(self, text: str) -> None:
        for load in (parse_nodes, parse_external):
            try:
                load(text)
            except ConfigError as err:
                assert str(err)

    @PROPERTY
    @given(JSON_VALUE, st.booleans())
    def test_arbitrary_json(self, value: Any, ascii_only: bool) -> None:
        for load in (parse_nodes, parse_external):
            try:
                load(dumps(value, ascii_only))
            except ConfigError as err:
                assert not isinstance(value, list) and str(err)

    @PROPERTY
    @given(ENTRY_LIST, st.booleans())
    @example([{"name": "\ud800", "ipAddress": "10.0.0.1"}], True)  # valid JSON, not encodable as UTF-8
    @example([{"name": "a", "ipAddress": "::ffff:10.0.0.1"}, {"name": "b", "ipAddress": "10.0.0.1"}], False)
    @example([{"name": " -a", "ipAddress": " 10.0.0.1 "}], False)  # the '-' rule holds after trimming too
    @example([{"name": "a", "ipAddress": "::ffff:0.0.0.0"}, {"name": "b", "ipAddress": "::ffff:224.0.0.1"}], False)
    def test_nodes_that_load_are_usable(self, entries: list[Any], ascii_only: bool) -> None:
        check_loaded(parse_nodes(dumps(entries, ascii_only)), entries, "address")

    @PROPERTY
    @given(ENTRY_LIST, st.booleans())
    @example([{"name": "\udcff", "host": "example.com"}], True)
    @example([{"name": "a", "host": "::ffff:0.0.0.0"}, {"name": "b", "host": "::ffff:239.1.2.3"}], False)
    def test_external_targets_that_load_are_usable(self, entries: list[Any], ascii_only: bool) -> None:
        check_loaded(parse_external(dumps(entries, ascii_only)), entries, "host")


def fping_time(ms: float) -> str:
    """An RTT as fping 5 prints it in -C output (sprint_tm: fewer decimals for larger values)."""
    if ms < 1:
        return f"{ms:.3f}"
    if ms < 10:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def target_form(address: str) -> str | None:
    """The address as a target list holds it, or None if a target list refuses it."""
    try:
        return normalise_ip(address)
    except ValueError:
        return None


@st.composite
def fping_reports(draw: st.DrawFn) -> tuple[str, dict[str, tuple[str | None, ...]]]:
    """A report as `fping -A -C N -q` writes it: padded addresses, '-' for lost pings, and
    commentary lines (duplicates, ICMP errors) mixed in. Returns the text and the truth."""
    count = draw(st.integers(1, 12))
    addresses = draw(st.lists(st.ip_addresses().map(str), min_size=1, max_size=8, unique=True))
    # fping -A prints each target once, in canonical form; an IPv4-mapped address and its IPv4
    # form are one target for us, so keep only one of them.
    unique = {canonical: a for a in addresses if (canonical := target_form(a)) is not None}
    truth: dict[str, tuple[str | None, ...]] = {}
    for canonical in unique:
        samples = draw(st.lists(st.one_of(st.none(), st.floats(0, 99_999, allow_nan=False).map(fping_time)),
                                min_size=count, max_size=count))
        truth[canonical] = tuple(samples)
    width = max((len(a) for a in unique.values()), default=0)
    lines = [f"{unique[c]:<{width}} : {' '.join('-' if s is None else s for s in samples)}"
             for c, samples in truth.items()]
    noise = st.sampled_from([
        "{a} : duplicate for [0], 64 bytes, 0.340 ms",
        "ICMP Host Unreachable from 10.231.0.2 for ICMP Echo sent to {a}",
        "{a}: error while sending ping: No route to host",
        "",
    ])
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.integers(0, len(lines)))
        lines.insert(where, draw(noise).format(a=draw(st.sampled_from(list(unique.values()) or ["10.0.0.1"]))))
    return "\n".join(lines) + "\n", truth


class TestParser:
    """fping's stderr is parsed into samples and nothing else, whatever it contains."""

    @PROPERTY
    @given(st.one_of(st.text(), ANY_CHARS, st.lists(st.one_of(TRICKY, ADDRESS, st.just(" : "), st.just(" - "),
                                                              st.just(" 0.05")), max_size=20).map("".join)))
    @example("0.0.0.0 : 0.05 -\n")  # addresses a normal run never prints must not raise
    @example("ff02::1 : 1.0\n")
    def test_arbitrary_text_never_raises(self, text: str) -> None:
        for address, samples in parse_report(text).items():
            assert address and samples
            assert all(s is None or (math.isfinite(s) and s >= 0) for s in samples)

    @PROPERTY
    @given(fping_reports())
    def test_valid_report_round_trips(self, report: tuple[str, dict[str, tuple[str | None, ...]]]) -> None:
        text, truth = report
        expected = {a: tuple(None if s is None else float(s) for s in samples) for a, samples in truth.items()}
        assert parse_report(text) == expected

    @PROPERTY
    @given(fping_reports(), st.data())
    def test_cut_off_last_line_is_dropped_not_misread(self, report: tuple[str, dict[str, Any]],
                                                      data: st.DataObject) -> None:
        text, _truth = report
        body = text.rstrip("\n")
        last_start = body.rfind("\n") + 1
        cut = data.draw(st.integers(last_start, len(body) - 1)) if len(body) > last_start else last_start
        complete = parse_report(text)
        partial = parse_report(body[:cut])
        # Every line that survives the cut is reported in full; the cut line contributes nothing.
        assert all(complete[a] == samples for a, samples in partial.items())


SAMPLE = st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False, allow_infinity=False))


class TestStats:
    """One cycle's numbers agree with each other for every possible set of samples."""

    @PROPERTY
    @given(st.lists(SAMPLE, max_size=200))
    @example([0.1, 0.1, 0.1])  # 0.1 * 3 / 3 != 0.1 in binary floating point
    @example([1e6, 5e-324])
    def test_invariants(self, samples: list[float | None]) -> None:
        stats = summarize(samples)
        replies = [s for s in samples if s is not None]
        assert stats.sent == len(samples)
        assert 0 <= stats.received <= stats.sent and stats.received == len(replies)
        if not replies:
            assert (stats.rtt_min_ms, stats.rtt_max_ms, stats.rtt_mdev_ms) == (None, None, None)
            assert stats.rtt_sum_ms == 0
            return
        assert stats.rtt_min_ms is not None and stats.rtt_max_ms is not None and stats.rtt_mdev_ms is not None
        average = stats.rtt_sum_ms / stats.received  # what PromQL computes from the two counters
        # Dividing a correctly rounded sum can land one rounding step outside [min, max].
        slack = 1e-12 * stats.rtt_max_ms
        assert stats.rtt_min_ms - slack <= average <= stats.rtt_max_ms + slack
        assert stats.rtt_mdev_ms >= 0
        assert stats.rtt_mdev_ms <= (stats.rtt_max_ms - stats.rtt_min_ms) / 2 + slack
        assert math.isclose(stats.rtt_mdev_ms, statistics.pstdev(replies), rel_tol=1e-9, abs_tol=1e-9)
        if stats.rtt_min_ms == stats.rtt_max_ms:
            assert stats.rtt_mdev_ms == 0


def escaped(value: str) -> str:
    """A label value as the text exposition format writes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class TestExpositionLabels:
    """Any node name or address text is escaped in the file and reads back identically."""

    @PROPERTY
    @given(st.lists(st.tuples(LABEL_TEXT, LABEL_TEXT), min_size=1, max_size=5, unique_by=lambda t: t),
           st.lists(st.tuples(LABEL_TEXT, LABEL_TEXT), max_size=3, unique_by=lambda t: t))
    @example([('a "quoted" \\ node\nwith newline', "fd00::1")], [("日本\\n", 'x"\\')])
    def test_labels_round_trip(self, nodes: list[tuple[str, str]], external: list[tuple[str, str]]) -> None:
        stats = summarize([1.5, None, 2.5])
        snapshot = Snapshot(source_node="node-1",
                            nodes=tuple(TargetRow(labels, 3, 2, 4.0, stats) for labels in nodes),
                            external=tuple(TargetRow(labels, 3, 2, 4.0, stats) for labels in external))
        text = render(snapshot)
        for name, address in nodes:
            assert f'destination_node="{escaped(name)}",destination_node_ip_address="{escaped(address)}"' in text
        parsed: dict[tuple[str, str], list[dict[str, str]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                parsed.setdefault((family.name, sample.name), []).append(sample.labels)
        sent = parsed[(contract.NODE.packets_sent.base, contract.NODE.packets_sent.name)]
        assert sorted((s["destination_node"], s["destination_node_ip_address"]) for s in sent) == sorted(nodes)
        assert all(s["source_node"] == "node-1" for s in sent)
        mdev = parsed[(contract.NODE.rtt_mdev.name, contract.NODE.rtt_mdev.name)]
        assert sorted((s["destination_node"], s["destination_node_ip_address"]) for s in mdev) == sorted(nodes)
        ext = parsed.get((contract.EXTERNAL.packets_received.base, contract.EXTERNAL.packets_received.name), [])
        assert sorted((s["destination_name"], s["destination_host"]) for s in ext) == sorted(external)
        # Every line is either a comment or one sample: no label text broke a line in two. The
        # format separates lines by "\n" only; "\r" or U+2028 inside a value are plain characters.
        samples = sum(len(v) for v in parsed.values())
        assert samples == sum(1 for line in text.split("\n") if line and not line.startswith("#"))
