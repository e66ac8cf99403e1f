"""What a person and a script read: the text (verdicts, matrices with bad cells marked, a legend
of shortened names) and the JSON."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from node_ping.diagnose.analysis import LINK, Thresholds
from node_ping.diagnose.render import abbreviate, render_json, render_text
from tests.support.diagnosis import LOSS_TITLE, report_of
from tests.support.promdata import Mesh, matrix_of, receive_loss

NODES = ["n1", "n2", "n3", "n4", "n5"]


class TestAbbreviate:
    """Long node names are shortened in the matrix and spelled out in a legend."""

    def test_short_names_stay(self) -> None:
        assert abbreviate(["n1", "worker-2"]) == {"n1": "n1", "worker-2": "worker-2"}

    def test_shared_prefix_and_suffix_are_dropped(self) -> None:
        names = ["ip-10-0-1-23.eu-west-1.compute.internal", "ip-10-0-2-7.eu-west-1.compute.internal"]
        assert abbreviate(names) == {names[0]: "1-23", names[1]: "2-7"}

    def test_numbers_when_nothing_short_tells_them_apart(self) -> None:
        names = ["a-very-long-node-name-one", "another-long-node-name-two"]
        assert abbreviate(names) == {names[0]: "n1", names[1]: "n2"}

    def test_what_is_dropped_is_what_all_long_names_share(self) -> None:
        """Nodes in one subnet share the third octet too, so only the last one is left."""
        names = ["ip-10-0-1-21.eu-west-1.compute.internal", "ip-10-0-1-22.eu-west-1.compute.internal"]
        assert abbreviate(names) == {names[0]: "21", names[1]: "22"}

    def test_only_long_names_change_and_numbers_skip_real_names(self) -> None:
        assert abbreviate(["a-1", "b-2", "n1", "x-very-long-name-here"]) == {
            "a-1": "a-1", "b-2": "b-2", "n1": "n1", "x-very-long-name-here": "n2"}

    def test_a_shortened_name_never_reads_as_another_node(self) -> None:
        names = ["ip-10-0-1-21.eu-west-1.compute.internal", "ip-10-0-2-7.eu-west-1.compute.internal", "1-21"]
        assert abbreviate(names) == {names[0]: "n1", names[1]: "2-7", "1-21": "1-21"}

    def test_reserved_labels_are_skipped(self) -> None:
        assert abbreviate(["an-external-target-name"], letter="t", reserved={"t1"}) == {
            "an-external-target-name": "t2"}

    @given(st.lists(st.text(alphabet="n12-.x", min_size=1, max_size=16), unique=True, max_size=8),
           st.sets(st.text(alphabet="n12t", min_size=1, max_size=3), max_size=3))
    def test_labels_are_unique_short_and_never_another_name(self, names: list[str], reserved: set[str]) -> None:
        labels = abbreviate(names, width=6, reserved=reserved)
        assert list(labels) == names
        assert len(set(labels.values())) == len(names)
        for name, label in labels.items():
            if len(name) <= 6:
                assert label == name
            else:
                assert 0 < len(label) <= 6
                assert label not in names
                assert label not in reserved


class TestTextOutput:
    """What a person sees: verdicts first, then the matrix with bad cells marked, short names explained."""

    def test_long_names_shortened_with_legend(self) -> None:
        nodes = [f"ip-10-0-{i}-{20 + i}.eu-west-1.compute.internal" for i in range(1, 4)]
        text = render_text(report_of(matrix_of(Mesh(nodes, loss=receive_loss(nodes, nodes[1], 0.3)))))
        lines = text.splitlines()
        assert lines[0] == ("node-ping diagnose: 3 nodes, 0 external targets, 15m up to 2023-11-14 22:13:20 UTC, "
                            "from http://prometheus:9090")
        assert lines[2].startswith(f"* [node-cannot-receive] node {nodes[1]} cannot receive")
        start = lines.index(LOSS_TITLE)
        assert lines[start + 1:start + 5] == [
            "      1-21   2-22  3-23",
            "1-21    .   30.0!  0.0",
            "2-22  0.0      .   0.0",
            "3-23  0.0   30.0!    .",
        ]
        assert lines[-4:] == ["Names:"] + [f"  {i}-{20 + i} = {name}" for i, name in enumerate(nodes, 1)]

    def test_legend_names_only_the_shortened_node(self) -> None:
        nodes = ["a-1", "b-2", "n1", "x-very-long-name-here"]
        text = render_text(report_of(matrix_of(Mesh(nodes, loss=receive_loss(nodes, "n1", 0.3)))))
        lines = text.splitlines()
        start = lines.index(LOSS_TITLE)
        assert lines[start + 1].split() == ["a-1", "b-2", "n1", "n2"]
        assert [line.split()[0] for line in lines[start + 2:start + 6]] == ["a-1", "b-2", "n1", "n2"]
        assert [line.split()[3] for line in lines[start + 2:start + 6]] == ["30.0!", "30.0!", ".", "30.0!"]
        assert lines[-2:] == ["Names:", "  n2 = x-very-long-name-here"]

    def test_large_cluster_shows_the_marked_rows_and_columns(self) -> None:
        nodes = [f"w{i:02}" for i in range(30)]
        text = render_text(report_of(matrix_of(Mesh(nodes, loss=receive_loss(nodes, "w07", 0.3)))))
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("Packet loss %"))
        assert lines[start].endswith("showing 20 of 30 rows and 1 of 30 columns, those with the most marked cells "
                                     "(--output json has every cell)")
        assert lines[start + 1].split() == ["w07"]
        assert [line.split()[1] for line in lines[start + 2:start + 22]] == ["30.0!"] * 20
        assert "Average RTT ms (! = 50 ms or more, - = no reply or no data): no cell marked among 30 rows" in text

    def test_json_has_every_cell_and_the_verdict_numbers(self) -> None:
        document = json.loads(render_json(report_of(matrix_of(Mesh(NODES, loss={("n1", "n2"): 0.5})))))
        assert document["healthy"] is False
        assert document["thresholds"] == {"loss_percent": 5.0, "latency_ms": 50.0}
        [verdict] = document["verdicts"]
        assert (verdict["kind"], verdict["nodes"], verdict["summary"]) == (LINK, ["n1", "n2"],
                                                                          {"worst_loss_percent": 50.0})
        assert len(document["matrix"]) == 20
        assert document["matrix"][0] == {"source": "n1", "destination": "n2", "sent": 1800, "received": 900,
                                         "loss_percent": 50.0, "rtt_avg_ms": 0.4}


class TestMarks:
    """The matrices mark exactly the cells the analysis calls bad, and no others."""

    def test_marks_in_the_text_are_the_analysis_bad_cells(self) -> None:
        mesh = Mesh(NODES, loss={**receive_loss(NODES, "n3", 0.3), ("n1", "n5"): 0.05, ("n5", "n1"): 0.049},
                    rtt_ms={("n2", "n4"): 50.0, ("n4", "n2"): 49.9}, external=["dns"],
                    external_loss={("n2", "dns"): 0.5})
        matrix = matrix_of(mesh)
        thresholds = Thresholds()
        lines = render_text(report_of(matrix)).splitlines()

        def marked(title: str, columns: list[str]) -> set[tuple[str, str]]:
            start = next(i for i, line in enumerate(lines) if line.startswith(title))
            found = set()
            for row in lines[start + 2:start + 2 + len(NODES)]:
                name, *cells = row.split()
                found |= {(name, column) for column, cell in zip(columns, cells, strict=True) if cell.endswith("!")}
            return found

        assert marked("Packet loss %", NODES) == {
            pair for pair, counts in matrix.nodes.items() if thresholds.bad_loss(counts)}
        assert marked("Average RTT ms", NODES) == {
            pair for pair, counts in matrix.nodes.items() if thresholds.slow(counts)} == {("n2", "n4")}
        assert marked("External packet loss %", ["dns"]) == {("n2", "dns")}
