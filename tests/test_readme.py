"""The documentation says what the code does: README.md's settings and metric names are the real ones,
the chart values docs/ quotes are the chart's, README.md stays short, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from node_ping.contract import ALL_METRICS, FAMILIES, MTU, NODE, NODE_INFO, POD, SELF_METRICS, SOURCE, Metric
from node_ping.diagnose.config import HEADER, HEADERS_ENV
from node_ping.diagnose.config import SETTINGS as DIAGNOSE_SETTINGS
from node_ping.discover.config import DISCOVER_SETTINGS
from node_ping.probe.config import RUN_SETTINGS

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
OPERATIONS = ROOT / "docs" / "operations.md"
MAX_README_LINES = 300
DOCUMENTS = sorted([README, *(ROOT / "docs").glob("*.md"), ROOT / "CHANGELOG.md",
                    ROOT / "charts" / "node-ping" / "README.md", ROOT / "monitoring" / "README.md"])

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", flags=re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_METRIC_ROW = re.compile(r"^\| `([a-z_]+)(?:\{([a-z_, ]+)\})?` \| (\w+) \|", flags=re.MULTILINE)


def section(text: str, title: str) -> str:
    """The part of a markdown text from the heading `title` (any level) to the next heading of that
    level or above."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, flags=re.MULTILINE)
    assert match, f"no heading {title!r}"
    end = re.search(rf"^#{{1,{len(match.group(1))}}} ", without_code(text[match.end():]), flags=re.MULTILINE)
    return text[match.start():match.end() + end.start() if end else None]


def without_code(text: str) -> str:
    """The text with fenced code blocks blanked out: a `# comment` there is not a heading, nor `[x](y)` a link."""
    return _FENCE.sub(lambda block: re.sub(r"[^\n]", " ", block.group()), text)  # offsets stay as they were


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file: lower case, punctuation dropped,
    spaces to dashes, and `-1`, `-2`, ... appended to repeats."""
    seen: dict[str, int] = {}
    result = set()
    for heading in re.findall(r"^#+ (.+)$", without_code(path.read_text()), flags=re.MULTILINE):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(path: Path) -> list[str]:
    """Every link target in a markdown file that is not a URL with a scheme (http:, mailto:, ...)."""
    return [target for target in _LINK.findall(without_code(path.read_text()))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def metric_rows(text: str) -> dict[str, tuple[str, str | None]]:
    """`| `name{label}` | type | ...` rows -> {name: (type, labels in braces or None)}."""
    rows: dict[str, tuple[str, str | None]] = {}
    for name, labels, kind in _METRIC_ROW.findall(text):
        assert name not in rows, f"{name} has two rows"
        rows[name] = (kind, labels or None)
    return rows


def own_labels(metric: Metric) -> str | None:
    """The labels a metric has besides `source_node`, as the README writes them in braces."""
    extra = [label for label in metric.labels if label != SOURCE]
    return ",".join(extra) or None


class TestReadmeConfiguration:
    """The settings table users copy from is `node-ping run`'s declared settings."""

    def test_configuration_env_vars_and_flags_exist(self) -> None:
        """Every row of the table is a declared setting of `run`, with its env var, and every
        declared setting with an env var has a row."""
        table = section(README.read_text(), "Configuration")
        rows = re.findall(r"^\| (?:`([A-Z_]+)`)? ?\| `(--[a-z-]+)` \|", table, flags=re.MULTILINE)
        declared = {(setting.env or "", setting.flag) for setting in RUN_SETTINGS if setting.flag != "--verbose"}
        assert set(rows) == declared

    def test_configuration_defaults(self) -> None:
        """A setting with a default shows exactly that default in its row."""
        table = section(README.read_text(), "Configuration")
        defaults = dict(re.findall(r"^\| (?:`[A-Z_]+`)? ?\| `(--[a-z-]+)` \| ([^|]+) \|", table, flags=re.MULTILINE))
        checked = 0
        for setting in RUN_SETTINGS:
            if setting.default is not None and not setting.is_flag:
                assert defaults[setting.flag] == f"`{setting.default}`", setting.flag
                checked += 1
        assert checked >= 5


class TestReadmeMetrics:
    """The metric tables are node_ping.contract's metrics, no more and no fewer."""

    def test_every_documented_metric_is_in_the_contract_and_back(self) -> None:
        rows = metric_rows(section(README.read_text(), "Metrics"))
        contract = {metric.name for metric in ALL_METRICS}
        assert set(rows) - contract == set(), "documented but not exported"
        assert contract - set(rows) == set(), "exported but not documented"

    def test_types(self) -> None:
        rows = metric_rows(section(README.read_text(), "Metrics"))
        assert {name: kind for name, (kind, _) in rows.items()} == \
            {metric.name: metric.kind.value for metric in ALL_METRICS}

    def test_labels(self) -> None:
        """The exporter's own metrics name their extra labels in braces; each ping family's table
        is introduced with its three labels, and its rows carry no braces."""
        text = section(README.read_text(), "Metrics")
        rows = metric_rows(text)
        for metric in SELF_METRICS:
            assert rows[metric.name][1] == own_labels(metric), metric.name
        assert "all with label `source_node`" in text
        for family in FAMILIES:
            assert "labels " + ", ".join(f"`{label}`" for label in family.labels) in text, family.prefix
            for metric in family.metrics:
                assert rows[metric.name][1] is None, metric.name

    def test_labels_beyond_a_family(self) -> None:
        """The MTU pairs name the one label they add to their family's; the node info its own."""
        rows = metric_rows(section(README.read_text(), "Metrics"))
        for family in (NODE, POD):
            for metric in family.mtu_metrics:
                assert rows[metric.name][1] == MTU, metric.name
        assert rows[NODE_INFO.name][1] == own_labels(NODE_INFO)


class TestDocsSettings:
    """The settings tables of discover and diagnose in docs/ are their declared settings."""

    def test_discover_table(self) -> None:
        table = section(OPERATIONS.read_text(), "Node discovery")
        rows = re.findall(r"^\| (?:`([A-Z_]+)`)? ?\| `(--[a-z-]+)`", table, flags=re.MULTILINE)
        assert set(rows) == {(setting.env or "", setting.flag) for setting in DISCOVER_SETTINGS}

    def test_diagnose_table(self) -> None:
        table = section((ROOT / "docs" / "diagnose.md").read_text(), "Flags")
        rows = re.findall(r"^\| `(--[a-z-]+)[^`]*` \| (?:env `([A-Z_]+)`)?", table, flags=re.MULTILINE)
        # --header's variable holds one header per line, so it is read apart from click's env vars.
        envs = {HEADER.flag: HEADERS_ENV}
        assert set(rows) == {(setting.flag, setting.env or envs.get(setting.flag, "")) for setting in DIAGNOSE_SETTINGS}


class TestDocsChartValues:
    """The chart values docs/operations.md quotes are rows of the chart's own values table."""

    def test_chart_value_rows_match_the_charts_readme(self) -> None:
        chart_rows = set((ROOT / "charts/node-ping/README.md").read_text().splitlines())
        rows = [line for line in section(OPERATIONS.read_text(), "Values most installs touch").splitlines()
                if line.startswith("| `")]
        assert len(rows) > 10
        assert [row for row in rows if row not in chart_rows] == []


class TestDocumentShape:
    """README.md is read in ten minutes, and no link in the documentation leads nowhere."""

    def test_readme_is_short(self) -> None:
        assert len(README.read_text().splitlines()) <= MAX_README_LINES

    def test_docs_exist(self) -> None:
        assert {path.name for path in (ROOT / "docs").glob("*.md")} >= {
            "architecture.md", "operations.md", "scale.md", "security.md", "diagnose.md", "development.md"}

    @pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
    def test_relative_links_resolve(self, document: Path) -> None:
        """Every relative link points at a file that exists, and its #anchor, if any, at a heading there."""
        broken = []
        for target in relative_links(document):
            file_part, _, anchor = target.partition("#")
            linked = (document.parent / file_part).resolve() if file_part else document
            if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
                broken.append(target)
        assert broken == []

    def test_link_check_catches_a_broken_link(self, tmp_path: Path) -> None:
        page = tmp_path / "page.md"
        page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [web](https://example.com)\n"
                        "```\n[in code](nowhere.md)\n# not a heading\n```\n")
        assert relative_links(page) == ["#title", "missing.md"]
        assert anchors(page) == {"title"}
