"""ovs-ofctl -O OpenFlow13 against the switch's management socket: the real client, real hosts, real packets.

Plain ovs-ofctl (no --no-names) first asks for TABLE_FEATURES and PORT_DESC, so these tests also prove
those replies are good enough for it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from ctl.daemon.switch import PortSpec, Switch, mgmt_path, request
from ctl.datapath import dpif
from ctl.datapath.dpif_xdp import DatapathConfig
from ctl.openflow.connmgr import ChannelConfig
from tests.conftest import need_tool, unique
from tests.netns.conftest import Host
from tests.netns.test_forwarding import ping

pytestmark = pytest.mark.root


def need_ofctl() -> None:
    need_tool("ovs-ofctl", "openvswitch-common")


@pytest.fixture(scope="module")
def ofsw(hosts: list[Host], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Switch]:
    need_ofctl()
    sw = Switch(unique("xsof"), [PortSpec(h.port, h.port_no) for h in hosts],
                tmp_path_factory.mktemp("state") / "flows.json",
                config=DatapathConfig(max_flows=4096, emc_insert_inv_prob=1), say=lambda m: None,
                channel=ChannelConfig(fail_mode="secure"))
    sw.start()
    try:
        time.sleep(1.0)
        yield sw
    finally:
        sw.shutdown(remove=True)


def target(sw: Switch) -> str:
    """The switch's root-only management socket (as OVS's unix:/var/run/openvswitch/BRIDGE.mgmt)."""
    return f"unix:{mgmt_path(sw.name)}"


def ofctl(sw: Switch, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """ovs-ofctl [--options] COMMAND SWITCH [ARGS]."""
    opts = [a for a in args if a.startswith("--")]
    cmd, *rest = [a for a in args if not a.startswith("--")]
    r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--timeout=10", *opts, cmd, target(sw), *rest],
                       capture_output=True, text=True, timeout=20)
    if check:
        assert r.returncode == 0, f"ovs-ofctl {' '.join(args)}: {r.stderr}"
    return r


def flows(sw: Switch) -> list[str]:
    """dump-flows lines without the parts that change (duration)."""
    out = ofctl(sw, "dump-flows").stdout.splitlines()
    return [re.sub(r" duration=[0-9.]+s,", "", line).strip() for line in out if "actions=" in line]


@pytest.fixture
def sw(ofsw: Switch) -> Switch:
    ofctl(ofsw, "del-flows")
    ofctl(ofsw, "del-groups")
    ofctl(ofsw, "del-meters")
    assert ofsw.udpif is not None
    ofsw.udpif.flush()
    return ofsw


def test_show_lists_the_ports_and_features(sw: Switch, hosts: list[Host]) -> None:
    out = ofctl(sw, "show").stdout
    assert f"dpid:{sw.datapath_id:016x}" in out
    assert "n_tables:255" in out
    for h in hosts:
        assert re.search(rf" {h.port_no}\({h.port}\): addr:", out), out


def test_add_dump_and_forward(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, _ = hosts
    ofctl(sw, "add-flow", f"priority=10,in_port={h1.port_no},actions=output:{h2.port_no}")
    ofctl(sw, "add-flow", f"priority=10,in_port={h2.port_no},actions=output:{h1.port_no}")
    ofctl(sw, "add-flow", "table=0,priority=20,ip,nw_dst=10.99.0.0/16,actions=drop")
    assert ping(h1, h2.ip, 5)
    time.sleep(0.7)  # a revalidator pass credits the fast path's packets to the rules
    lines = flows(sw)
    assert len(lines) == 3, lines
    assert any(f"in_port={h1.port_no} actions=output:{h2.port_no}" in ln and "n_packets=5," in ln
               for ln in lines), lines
    assert any("priority=20,ip,nw_dst=10.99.0.0/16 actions=drop" in ln for ln in lines), lines
    # the same rules through the control socket, as our own CLI shows them
    mine = request(sw.name, "dump-flows")
    assert len(mine) == 3


def test_del_flows_loose_strict_and_out_port(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, h3 = hosts
    for p in (1, 2, 3):
        ofctl(sw, "add-flow", f"priority={p},in_port={p},actions=output:{p % 3 + 1}")
    ofctl(sw, "add-flow", "priority=5,ip,actions=output:3")
    ofctl(sw, "--strict", "del-flows", "priority=1,in_port=1")
    assert len(flows(sw)) == 3
    ofctl(sw, "del-flows", "out_port=3")          # the rules that output to port 3
    left = flows(sw)
    assert len(left) == 1 and "in_port=3 actions=output:1" in left[0], left
    ofctl(sw, "del-flows", "in_port=3")
    assert flows(sw) == []
    assert not ping(h1, h2.ip, 1)


def test_dump_ports_counts_traffic(sw: Switch, hosts: list[Host]) -> None:
    h1, h2, _ = hosts
    ofctl(sw, "add-flow", f"in_port={h1.port_no},actions=output:{h2.port_no}")
    ofctl(sw, "add-flow", f"in_port={h2.port_no},actions=output:{h1.port_no}")
    before = ofctl(sw, "dump-ports", str(h1.port_no)).stdout
    rx0 = int(re.search(r"rx pkts=(\d+)", before).group(1))  # type: ignore[union-attr]
    assert ping(h1, h2.ip, 4)
    after = ofctl(sw, "dump-ports", str(h1.port_no)).stdout
    rx1 = int(re.search(r"rx pkts=(\d+)", after).group(1))  # type: ignore[union-attr]
    assert rx1 - rx0 >= 4
    allp = ofctl(sw, "dump-ports").stdout
    assert all(f"port  {h.port_no}:" in allp for h in hosts), allp


def test_bad_flow_is_refused_and_changes_nothing(sw: Switch) -> None:
    ofctl(sw, "add-flow", "priority=7,ip,actions=output:2")
    r = ofctl(sw, "add-flow", "priority=8,ip,actions=group:1", check=False)
    assert r.returncode != 0 and "OFPBAC_BAD_OUT_GROUP" in r.stderr, r.stderr
    r = ofctl(sw, "add-flow", "table=3,priority=8,ip,actions=goto_table:2", check=False)
    assert r.returncode != 0
    assert len(flows(sw)) == 1


def test_nicira_and_onf_fields_round_trip_through_ovs_ofctl(sw: Switch) -> None:
    """ovs-ofctl writes tcp_flags as ONF's experimenter OXM and nw_ttl, ip_frag as Nicira fields in 1.3."""
    ofctl(sw, "add-flow", "priority=4,tcp,tcp_flags=+syn-ack,actions=output:1")
    ofctl(sw, "add-flow", "priority=5,ip,nw_ttl=3,ip_frag=no,actions=output:2")
    mine = {r["priority"]: r["match"] for r in request(sw.name, "dump-flows")}
    assert mine == {4: "tcp,tcp_flags=+syn-ack", 5: "ip,nw_ttl=3,nw_frag=no"}
    lines = flows(sw)
    assert any("tcp_flags=+syn-ack actions=output:1" in ln for ln in lines), lines
    assert any("nw_ttl=3" in ln and "nw_frag=no" in ln for ln in lines), lines


def test_registers_and_metadata_steer_packets(sw: Switch, hosts: list[Host]) -> None:
    """load, move and write_metadata in table 0 choose the rule in table 1 (Nicira actions and OXM metadata over
    OpenFlow 1.3, as ovs-ofctl writes them)."""
    h1, h2, _ = hosts
    ofctl(sw, "add-flow", f"table=0,in_port={h1.port_no},actions=load:0x2->NXM_NX_REG0[],"
                          "write_metadata:0x10/0xff,goto_table:1")
    ofctl(sw, "add-flow", f"table=0,in_port={h2.port_no},"
                          "actions=move:NXM_OF_IN_PORT[]->NXM_NX_REG1[0..15],goto_table:1")
    ofctl(sw, "add-flow", f"table=1,priority=10,reg0=2,metadata=0x10/0xff,actions=output:{h2.port_no}")
    ofctl(sw, "add-flow", f"table=1,priority=10,reg1={h2.port_no},actions=output:{h1.port_no}")
    ofctl(sw, "add-flow", "table=1,priority=5,reg0=3,actions=output:3")
    assert ping(h1, h2.ip, 3)
    time.sleep(0.7)
    lines = flows(sw)
    assert any("load:0x2->NXM_NX_REG0[]" in ln and "write_metadata:0x10/0xff" in ln for ln in lines), lines
    assert any("move:NXM_OF_IN_PORT[]->NXM_NX_REG1[0..15]" in ln for ln in lines), lines
    used = [ln for ln in lines if "reg0=0x2" in ln and "metadata=0x10/0xff" in ln]
    assert used and "n_packets=0," not in used[0], lines
    assert any("reg0=0x3" in ln and "n_packets=0," in ln for ln in lines), lines
    # no register or metadata bit in any megaflow: the datapath never sees them
    assert sw.dp is not None
    dumped = [f.match() for f in sw.dp.dump_flows()]
    assert dumped and not any("reg" in m or "metadata" in m for m in dumped), dumped


# the receiving side of the capture scripts: frames of one protocol on an interface for some seconds, after a
# "ready" line (the caller waits for it before it sends)
RECEIVE = """
import socket, sys, time
def frames(ifname, proto, seconds):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    s.bind((ifname, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.settimeout(0.2)
    end = time.time() + seconds
    print("ready", flush=True)
    while time.time() < end:
        try:
            yield s.recv(4096)
        except TimeoutError:
            continue
"""
CAPTURE = RECEIVE + """
want = int(sys.argv[2], 16)
for f in frames(sys.argv[1], 3, float(sys.argv[3])):
    if int.from_bytes(f[12:14], "big") == want:
        print(f.hex(), flush=True)
"""
SEND = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for _ in range(3):
    s.send(bytes.fromhex(sys.argv[2]))
"""


def _listen(h: Host, script: str, *args: str) -> subprocess.Popen[str]:
    """Run a RECEIVE script in h's namespace on its interface; return once it is ready."""
    p = subprocess.Popen(["ip", "netns", "exec", h.ns, sys.executable, "-c", script, h.ifname, *args],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _capture(h: Host, ethertype: int, seconds: float = 3.0) -> subprocess.Popen[str]:
    return _listen(h, CAPTURE, hex(ethertype), str(seconds))


def _send(h: Host, frame: bytes) -> None:
    subprocess.run(["ip", "netns", "exec", h.ns, sys.executable, "-c", SEND, h.ifname, frame.hex()], check=True,
                   timeout=10)


def test_mpls_push_and_pop_with_a_recirculation(sw: Switch, hosts: list[Host]) -> None:
    """push_mpls labels h1's IPv4 on its way to h3; an MPLS frame from h3 is popped and, read again past the label
    (a recirculation), goes where its inner IPv4 destination says."""
    from scapy.contrib.mpls import MPLS
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    h1, h2, h3 = hosts
    ofctl(sw, "add-flow", f"in_port={h1.port_no},ip,actions=push_mpls:0x8847,set_field:77->mpls_label,"
                          f"output:{h3.port_no}")
    ofctl(sw, "add-flow", f"in_port={h3.port_no},dl_type=0x8847,mpls_label=88,actions=pop_mpls:0x0800,goto_table:1")
    ofctl(sw, "add-flow", f"table=1,ip,nw_dst={h2.ip},actions=output:{h2.port_no}")
    ofctl(sw, "add-flow", f"table=1,priority=0,actions=output:{h1.port_no}")
    inner = IP(src=h1.ip, dst=h3.ip, ttl=9) / UDP(sport=5, dport=6) / b"labelled"
    cap = _capture(h3, 0x8847)
    _send(h1, bytes(Ether(src=h1.mac, dst=h3.mac) / inner))
    out, _ = cap.communicate(timeout=10)
    got = [Ether(bytes.fromhex(x)) for x in out.split()]
    assert got, "no MPLS frame reached h3"
    assert got[0][MPLS].label == 77 and got[0][MPLS].ttl == 9 and got[0][MPLS].s == 1
    assert bytes(got[0][MPLS].payload)[:len(bytes(inner))] == bytes(inner)

    back = IP(src=h3.ip, dst=h2.ip) / UDP(sport=7, dport=8) / b"popped"
    cap2, cap1 = _capture(h2, 0x0800), _capture(h1, 0x0800)
    _send(h3, bytes(Ether(src=h3.mac, dst=h2.mac, type=0x8847) / MPLS(label=88, s=1, ttl=5) / back))
    out2, _ = cap2.communicate(timeout=10)
    out1, _ = cap1.communicate(timeout=10)
    frames = [bytes.fromhex(x) for x in out2.split()]
    assert any(f[14:14 + len(bytes(back))] == bytes(back) for f in frames), out2
    assert not any(bytes(back) in bytes.fromhex(x) for x in out1.split()), "went to table 1's default too"
    # the popping megaflow sends its packets up: each is translated again past the label
    assert sw.dp is not None
    assert any("mpls" in f.match() and "userspace" in dpif.format_actions(f.actions) for f in sw.dp.dump_flows())


SEND_MANY = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for line in open(sys.argv[2]):
    s.send(bytes.fromhex(line.strip()))
"""


def _send_many(h: Host, frames: list[bytes], tmp: str) -> None:
    with open(tmp, "w") as f:
        f.write("\n".join(fr.hex() for fr in frames))
    subprocess.run(["ip", "netns", "exec", h.ns, sys.executable, "-c", SEND_MANY, h.ifname, tmp], check=True,
                   timeout=30)


def _group_stats(sw: Switch) -> dict[int, list[int]]:
    """group -> [packet_count, bucket0 packets, bucket1 packets, ...] from ovs-ofctl dump-group-stats."""
    out = {}
    for line in ofctl(sw, "dump-group-stats").stdout.splitlines():
        m = re.search(r"group_id=(\d+).*?packet_count=(\d+)", line)
        if m:
            out[int(m.group(1))] = [int(m.group(2))] + [int(x) for x in re.findall(r"bucket\d+:packet_count=(\d+)",
                                                                                     line)]
    return out


def test_groups_from_ovs_ofctl_forward_and_count(sw: Switch, hosts: list[Host], tmp_path: object) -> None:
    """A select group spreads h1's connections over h2 and h3 (picked per packet in XDP, counted per bucket), an all
    group copies to both; ovs-ofctl adds, dumps, counts and deletes them, and a group's flows go with it."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    h1, h2, h3 = hosts
    ofctl(sw, "del-groups")
    ofctl(sw, "add-group", f"group_id=1,type=select,bucket=weight:1,actions=output:{h2.port_no},"
                           f"bucket=weight:1,actions=output:{h3.port_no}")
    ofctl(sw, "add-group", f"group_id=2,type=all,bucket=output:{h2.port_no},bucket=output:{h3.port_no}")
    ofctl(sw, "add-flow", f"in_port={h1.port_no},udp,tp_dst=1000,actions=group:1")
    ofctl(sw, "add-flow", f"in_port={h1.port_no},udp,tp_dst=2000,actions=group:2")
    dumped = ofctl(sw, "dump-groups").stdout
    assert f"group_id=1,type=select,bucket=actions=output:{h2.port_no},bucket=actions=output:{h3.port_no}" in dumped
    assert f"group_id=2,type=all,bucket=actions=output:{h2.port_no},bucket=actions=output:{h3.port_no}" in dumped

    def burst(dport: int, n: int) -> list[bytes]:
        return [bytes(Ether(src=h1.mac, dst=h2.mac) / IP(src=h1.ip, dst=h2.ip) / UDP(sport=10000 + i, dport=dport)
                      / b"x") for i in range(n)]

    rx = (h2.rx_packets(), h3.rx_packets())
    _send_many(h1, burst(1000, 200), f"{tmp_path}/select.hex")
    time.sleep(0.5)
    got = (h2.rx_packets() - rx[0], h3.rx_packets() - rx[1])
    assert sum(got) == 200 and min(got) >= 60, got
    time.sleep(0.7)   # a revalidator pass credits the megaflow's packets to the group
    stats = _group_stats(sw)
    assert stats[1] == [200, got[0], got[1]], stats
    assert sw.dp is not None
    assert any("select(" in dpif.format_actions(f.actions) for f in sw.dp.dump_flows())  # in XDP, not user space

    rx = (h2.rx_packets(), h3.rx_packets())
    _send_many(h1, burst(2000, 50), f"{tmp_path}/all.hex")
    time.sleep(0.5)
    assert (h2.rx_packets() - rx[0], h3.rx_packets() - rx[1]) == (50, 50)
    time.sleep(0.7)
    assert _group_stats(sw)[2] == [50, 50, 50]

    ofctl(sw, "del-groups", "group_id=1")
    assert [ln for ln in flows(sw) if "group:" in ln] == [f for f in flows(sw) if "group:2" in f]
    r = ofctl(sw, "add-group", "group_id=2,type=all,bucket=output:1", check=False)
    assert r.returncode != 0 and "OFPGMFC_GROUP_EXISTS" in r.stderr, r.stderr
    ofctl(sw, "del-groups")
    assert flows(sw) == []


STREAM = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
frame = bytes.fromhex(sys.argv[2])
pps, seconds = float(sys.argv[3]), float(sys.argv[4])
start = time.monotonic()
sent = 0
while True:
    now = time.monotonic() - start
    if now >= seconds:
        break
    due = int(now * pps) + 1
    while sent < due:
        s.send(frame)
        sent += 1
    time.sleep(0.002)
print(sent, time.monotonic() - start)
"""


def test_a_10mbps_meter_on_a_50mbps_stream_delivers_10mbps(sw: Switch, hosts: list[Host]) -> None:
    """ovs-ofctl add-meter, then a flow through it: h1 offers 50 Mbps of 1000-byte frames for 4 s; h2 receives
    10 Mbps within 5 %, and the meter's counters say where the rest went."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    h1, h2, _ = hosts
    ofctl(sw, "del-meters")
    ofctl(sw, "add-meter", "meter=1,kbps,burst,stats,bands=type=drop,rate=10000,burst_size=100")
    ofctl(sw, "add-flow", f"in_port={h1.port_no},udp,actions=meter:1,output:{h2.port_no}")
    assert "meter:1" in " ".join(flows(sw))
    frame = bytes(Ether(src=h1.mac, dst=h2.mac) / IP(src=h1.ip, dst=h2.ip) / UDP(sport=1, dport=2) / (b"m" * 958))
    assert len(frame) == 1000
    rx0 = int(h2.sh(f"cat /sys/class/net/{h2.ifname}/statistics/rx_bytes").stdout)
    r = subprocess.run(["ip", "netns", "exec", h1.ns, sys.executable, "-c", STREAM, h1.ifname, frame.hex(), "6250",
                        "4"], capture_output=True, text=True, timeout=30, check=True)
    sent, seconds = int(r.stdout.split()[0]), float(r.stdout.split()[1])
    time.sleep(0.3)
    got = int(h2.sh(f"cat /sys/class/net/{h2.ifname}/statistics/rx_bytes").stdout) - rx0
    offered_mbps, delivered_mbps = sent * 8000 / seconds / 1e6, got * 8 / seconds / 1e6
    assert offered_mbps > 45, offered_mbps
    assert 9.5 <= delivered_mbps <= 10.5, (offered_mbps, delivered_mbps)
    out = ofctl(sw, "meter-stats").stdout
    m = re.search(r"packet_in_count:(\d+).*?0: packet_count:(\d+)", out, re.S)
    assert m is not None, out
    assert int(m.group(1)) == sent and int(m.group(1)) - int(m.group(2)) == got // 1000, out
    ofctl(sw, "del-meters")
    assert flows(sw) == []              # the flow went with its meter


def test_fast_failover_follows_the_watched_ports_link(sw: Switch, hosts: list[Host], tmp_path: object) -> None:
    """type=ff: h1's packets go to h2 while h2's link is up; when h2's end goes down (the switch's port loses its
    carrier), the revalidator moves the megaflow to the next live bucket, h3; back when it comes up."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    h1, h2, h3 = hosts
    ofctl(sw, "del-groups")
    ofctl(sw, "add-group", f"group_id=5,type=ff,bucket=watch_port:{h2.port_no},actions=output:{h2.port_no},"
                           f"bucket=watch_port:{h3.port_no},actions=output:{h3.port_no}")
    ofctl(sw, "add-flow", f"in_port={h1.port_no},udp,tp_dst=3000,actions=group:5")
    frames = [bytes(Ether(src=h1.mac, dst=h2.mac) / IP(src=h1.ip, dst=h2.ip) / UDP(sport=5, dport=3000) / b"ff")] * 20

    def burst() -> tuple[int, int]:
        rx = (h2.rx_packets(), h3.rx_packets())
        _send_many(h1, frames, f"{tmp_path}/ff.hex")
        time.sleep(0.3)
        return h2.rx_packets() - rx[0], h3.rx_packets() - rx[1]

    assert burst() == (20, 0)
    try:
        h2.sh(f"ip link set dev {h2.ifname} down")
        time.sleep(1.0)                  # the link event, then a revalidator pass
        assert burst()[1] == 20
    finally:
        h2.sh(f"ip link set dev {h2.ifname} up")
    time.sleep(1.5)
    assert burst() == (20, 0)
    ofctl(sw, "del-groups")


COUNT_DSCP = RECEIVE + """
import json
counts = {}
for f in frames(sys.argv[1], 0x0800, float(sys.argv[2])):
    if len(f) > 34 and f[23] == 17 and f[36:38] == b"\\x00\\x02":
        d = f[15] >> 2
        counts[d] = counts.get(d, 0) + 1
print(json.dumps(counts), flush=True)
"""


def test_a_dscp_remark_meter_remarks_what_exceeds_its_rate(sw: Switch, hosts: list[Host]) -> None:
    """A 10 Mbps dscp_remark band on a 20 Mbps stream of AF21 (DSCP 18): h2 gets half as AF21 and half as AF22
    (DSCP 20), each within 5 %."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    h1, h2, _ = hosts
    ofctl(sw, "add-meter", "meter=2,kbps,burst,bands=type=dscp_remark,rate=10000,burst_size=100,prec_level=1")
    ofctl(sw, "add-flow", f"in_port={h1.port_no},udp,actions=meter:2,output:{h2.port_no}")
    frame = bytes(Ether(src=h1.mac, dst=h2.mac) / IP(src=h1.ip, dst=h2.ip, tos=18 << 2) / UDP(sport=1, dport=2)
                  / (b"d" * 958))
    cap = _listen(h2, COUNT_DSCP, "5")
    r = subprocess.run(["ip", "netns", "exec", h1.ns, sys.executable, "-c", STREAM, h1.ifname, frame.hex(), "2500",
                        "3"], capture_output=True, text=True, timeout=30, check=True)
    sent, seconds = int(r.stdout.split()[0]), float(r.stdout.split()[1])
    counts = {int(k): v for k, v in json.loads(cap.communicate(timeout=20)[0].strip().splitlines()[-1]).items()}
    kept, remarked = counts.get(18, 0) * 8000 / seconds / 1e6, counts.get(20, 0) * 8000 / seconds / 1e6
    assert sum(counts.values()) == sent, (counts, sent)
    assert 9.5 <= kept <= 10.5 and 9.5 <= remarked <= 10.5, (kept, remarked, sent / seconds * 8000 / 1e6)
