"""Test hosts as network namespaces on one bridge: a small data centre on one machine.

Each host is a namespace with a veth into a bridge that lives in a "switch" namespace, so nothing
touches the machine's own network. Hosts get 10.231.0.0/24 and fd00:231::/64 addresses, which
exist only inside these namespaces. Everything is torn down by `close()`, also after a failure.

`add_pod_network(lab)` gives every host a second veth, `pod0`, into a second bridge of the
switch (10.232.0.0/24, fd00:232::/64): the pod network's overlay, which can break while the hosts'
own network works. `Lab.port_mtu` shrinks a host's port on the bridge: the bridge then drops
larger frames silently, a true MTU black hole (its host's own interface still says 1500).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.exposition import Series, families
from tests.support.processes import NODE_PING, REPO, communicate

V4_NET = "10.231.0"
V6_NET = "fd00:231::"
POD_V4_NET = "10.232.0"
POD_V6_NET = "fd00:232::"
POD_IF = "pod0"

_lab_numbers = itertools.count(1)


def run_prefix() -> str:
    """What every namespace this test process makes starts with: `remove_leftovers(run_prefix())`
    clears what an earlier, killed process with the same pid left behind."""
    return f"np{os.getpid() % 100000}-"


def new_prefix() -> str:
    """A prefix no other lab of this process has: a second lab in one test must not reuse (and,
    on a failed build, delete) the first one's namespaces."""
    return f"{run_prefix()}{next(_lab_numbers)}-"


def available() -> str | None:
    """None if namespaces can be made here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    for tool in ("ip", "nft", "fping"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class Host:
    name: str  # namespace name
    index: int
    port: str = ""  # its eth0's other end, on the switch's bridge

    @property
    def ipv4(self) -> str:
        return f"{V4_NET}.{self.index}"

    @property
    def ipv6(self) -> str:
        return f"{V6_NET}{self.index:x}"

    @property
    def pod_ipv4(self) -> str:
        return f"{POD_V4_NET}.{self.index}"

    @property
    def pod_ipv6(self) -> str:
        return f"{POD_V6_NET}{self.index:x}"

    def cmd(self, *argv: str) -> list[str]:
        """argv that runs inside this host."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh(*self.cmd(*argv), check=check, timeout=timeout)

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset inside this host (replacing our table if present)."""
        subprocess.run(self.cmd("nft", "-f", "-"), input=ruleset, check=True, capture_output=True, text=True,
                       timeout=30)

    def drop_incoming_icmp(self, percent: int, from_address: str | None = None) -> None:
        """Drop `percent`% of incoming echo requests (optionally only from one source)."""
        match = f"ip saddr {from_address} " if from_address and ":" not in from_address else (
            f"ip6 saddr {from_address} " if from_address else "")
        # numgen's range is 0..99, so 100% is a plain drop.
        chance = "" if percent >= 100 else f"numgen random mod 100 < {percent} "
        self.nft(f"""
table inet nodeping_test
delete table inet nodeping_test
table inet nodeping_test {{
  chain input {{
    type filter hook input priority 0; policy accept;
    {match}icmp type echo-request {chance}drop
    {match}icmpv6 type echo-request {chance}drop
  }}
}}
""")

    def drop_pod_network(self) -> None:
        """The pod network fails at this host (a dead tunnel end, a full eBPF map): every packet
        arriving on its pod interface is dropped, while its own network works."""
        self.nft(f"""
table inet nodeping_test
delete table inet nodeping_test
table inet nodeping_test {{
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname "{POD_IF}" drop
  }}
}}
""")

    def clear_faults(self) -> None:
        self.run("nft", "delete", "table", "inet", "nodeping_test", check=False)

    def link(self, up: bool) -> None:
        self.run("ip", "link", "set", "eth0", "up" if up else "down")


@dataclass
class Lab:
    prefix: str
    hosts: list[Host] = field(default_factory=list)
    switch_made: bool = False  # close() removes only namespaces this lab made

    @property
    def switch(self) -> str:
        return f"{self.prefix}sw"

    def port_mtu(self, host: Host, mtu: int) -> None:
        """Set the MTU of `host`'s port on the bridge: frames larger than it are dropped there."""
        sh(*Host(self.switch, 0).cmd("ip", "link", "set", host.port, "mtu", str(mtu)))

    def close(self) -> None:
        for ns in [h.name for h in self.hosts] + ([self.switch] if self.switch_made else []):
            # Kill anything still running inside, then remove the namespace.
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            sh("ip", "netns", "delete", ns, check=False)


def remove_leftovers(prefix: str) -> None:
    """Remove namespaces of an earlier run that was killed before its teardown."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            sh("ip", "netns", "delete", name, check=False)


def _plug(lab: Lab, host: Host, interface: str, *, bridge: str, port: str, v4_net: str, v6_net: str) -> None:
    """A veth from `host` (named `interface`, with the host's index in both networks) into `bridge`."""
    sh("ip", "link", "add", interface, "netns", host.name, "type", "veth", "peer", "name", port, "netns", lab.switch)
    sh(*Host(lab.switch, 0).cmd("ip", "link", "set", port, "master", bridge, "up"))
    host.run("sysctl", "-qw", f"net.ipv6.conf.{interface}.accept_dad=0")
    host.run("ip", "addr", "add", f"{v4_net}.{host.index}/24", "dev", interface)
    host.run("ip", "-6", "addr", "add", f"{v6_net}{host.index:x}/64", "dev", interface, "nodad")
    host.run("ip", "link", "set", interface, "up")


def add_pod_network(lab: Lab) -> None:
    """A second bridge, and a `pod0` veth from every host into it: the pod network (10.232.0.0/24,
    fd00:232::/64) beside the hosts' own. Removed with the lab's namespaces."""
    sh(*Host(lab.switch, 0).cmd("ip", "link", "add", "br1", "type", "bridge"))
    sh(*Host(lab.switch, 0).cmd("ip", "link", "set", "br1", "up"))
    for host in lab.hosts:
        _plug(lab, host, POD_IF, bridge="br1", port=f"{lab.prefix[:6]}q{host.index}", v4_net=POD_V4_NET,
              v6_net=POD_V6_NET)


def build(names: Sequence[str], prefix: str | None = None) -> Lab:
    """Namespaces `<prefix><name>` on a bridge, each reachable by IPv4 and IPv6 from the others."""
    prefix = prefix or new_prefix()
    lab = Lab(prefix)
    try:
        sh("ip", "netns", "add", lab.switch)
        lab.switch_made = True
        sh(*Host(lab.switch, 0).cmd("ip", "link", "add", "br0", "type", "bridge"))
        sh(*Host(lab.switch, 0).cmd("ip", "link", "set", "br0", "up"))
        for index, name in enumerate(names, start=1):
            host = Host(f"{prefix}{name}", index, port=f"{prefix[:6]}p{index}")
            sh("ip", "netns", "add", host.name)
            lab.hosts.append(host)
            host.run("ip", "link", "set", "lo", "up")
            _plug(lab, host, "eth0", bridge="br0", port=host.port, v4_net=V4_NET, v6_net=V6_NET)
    except BaseException:
        lab.close()
        raise
    return lab


@contextlib.contextmanager
def lab(names: Sequence[str]) -> Iterator[Lab]:
    built = build(names)
    try:
        yield built
    finally:
        built.close()


def start_node_ping(host: Host, workdir: Path, nodes: list[dict[str, str]], *, count: int, period_ms: int,
                    cycles: int = 1, external: list[dict[str, str]] | None = None, args: Sequence[str] = (),
                    config: str = "nodes.json") -> subprocess.Popen[str]:
    """`node-ping run` as node "a" in `host`, started (with `args` added), its list written to `config`."""
    textfile = workdir / "textfile"
    textfile.mkdir(parents=True, exist_ok=True)
    (workdir / config).write_text(json.dumps(nodes))
    (workdir / "external.json").write_text(json.dumps(external or []))
    return subprocess.Popen(
        host.cmd(*NODE_PING, "run", "--node-name", "a", "--textfile-dir", str(textfile),
                 "--config", str(workdir / config), "--external-config", str(workdir / "external.json"),
                 "--count", str(count), "--period-ms", str(period_ms), "--cycles", str(cycles), *args),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> str:
    """Wait for a node-ping started by start_node_ping, assert it succeeded; its log."""
    stderr = communicate(process, timeout)[1]
    assert process.returncode == 0, stderr
    return stderr


def run_node_ping(host: Host, workdir: Path, nodes: list[dict[str, str]], *, count: int, period_ms: int,
                  cycles: int = 1, external: list[dict[str, str]] | None = None, args: Sequence[str] = (),
                  output: str = "node-ping_a.prom") -> Series:
    """One `node-ping run` as node "a" in `host`; the series of the file it wrote (`output`)."""
    finish(start_node_ping(host, workdir, nodes, count=count, period_ms=period_ms, cycles=cycles, external=external,
                           args=args))
    return families((workdir / "textfile" / output).read_text())
