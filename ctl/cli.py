"""The xdpswitch command line: one typer app whose sub-commands mirror the OVS tools.

    xdpswitch start --port IF[=N] ... [--flows FILE] [--controller tcp:H:P] [--listen pssl:P]   the switch
    xdpswitch ofctl add-flow|add-flows|del-flows|dump-flows|mod-table   (ovs-ofctl)
    xdpswitch ofctl add-group|add-groups|mod-group|del-groups|dump-groups|dump-group-stats
    xdpswitch ofctl add-meter|mod-meter|del-meters|dump-meters|meter-stats
    xdpswitch add-port IF [--ofport N] | del-port IF    (ovs-vsctl add-port / del-port)
    xdpswitch trace FLOW                                (ovs-appctl ofproto/trace)
    xdpswitch upcall show|set                           (ovs-appctl upcall/show, other_config)
    xdpswitch revalidator purge                         (ovs-appctl revalidator/purge)
    xdpswitch dpctl show|dump-flows|del-dp              (ovs-appctl dpctl/*, ovs-dpctl del-dp)
    xdpswitch stats                                     (ovs-appctl dpif-netdev/pmd-stats-show)
    xdpswitch top                                       (a live view, refreshed every second)
    xdpswitch demo

ofctl, trace and upcall talk to the running daemon over its control socket; dpctl and stats open the
datapath's pinned maps read-only (compiling nothing, writing nothing), so they are fast and work even
while the daemon restarts. Every command takes --name (default "xdpswitch"); every dump takes --format json.
Errors go to stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from ctl.datapath.dpif import now_ns

if TYPE_CHECKING:
    from ctl.datapath.view import DatapathReader, DatapathView

app = typer.Typer(help="An Open vSwitch-style switch with an XDP fast path.", no_args_is_help=True,
                  add_completion=False)
dpctl = typer.Typer(help="The datapath: ports, megaflows (like ovs-dpctl / ovs-appctl dpctl/*).",
                    no_args_is_help=True)
app.add_typer(dpctl, name="dpctl")
ofctl = typer.Typer(help="OpenFlow tables in ovs-ofctl syntax (like ovs-ofctl).", no_args_is_help=True)
app.add_typer(ofctl, name="ofctl")
upcall = typer.Typer(help="The upcall path: handlers, ukeys, counters (like ovs-appctl upcall/*).",
                     no_args_is_help=True)
app.add_typer(upcall, name="upcall")
revalidator = typer.Typer(help="The revalidator (like ovs-appctl revalidator/*).", no_args_is_help=True)
app.add_typer(revalidator, name="revalidator")
fdb = typer.Typer(help="The MAC learning table of the NORMAL action (like ovs-appctl fdb/*).", no_args_is_help=True)
app.add_typer(fdb, name="fdb")
out = Console(soft_wrap=True)  # a line each however long, as ovs-ofctl and ovs-appctl print (tables keep the width)
err = Console(stderr=True, soft_wrap=True)  # an error is one line, however long


class Format(StrEnum):
    text = "text"
    json = "json"


def _version(value: bool) -> None:
    if value:
        from ctl import __version__

        out.print(f"xdpswitch {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """An Open vSwitch-style switch with an XDP fast path."""


NAME = typer.Option("xdpswitch", "--name", "-n", help="The datapath's name (its pinned maps).")
FORMAT = typer.Option(Format.text, "--format", "-f", help="text for people, json for scripts.")


def _open(name: str) -> DatapathView:
    """The datapath's pinned maps, read-only: nothing is compiled and nothing is written."""
    from ctl.datapath.view import DatapathView, ViewError

    try:
        return DatapathView.open(name)
    except ViewError as e:
        err.print(f"xdpswitch: {e}", highlight=False, markup=False)
        raise typer.Exit(1) from None


def show_dp(dp: DatapathReader, fmt: Format = Format.text) -> None:
    st = dp.stats()
    ports = dp.ports()
    usage = dp.map_usage()
    n_flows, n_masks = usage["mf_entries"][0], usage["mf_masks"][0]
    if fmt == Format.json:
        _print_json({
            "name": dp.name, "ports": [vars(p) for p in ports],
            "lookups": {"hit": st.emc_hits + st.megaflow_hits, "missed": st.misses, "lost": st.lost},
            "flows": n_flows, "masks": {"hit": st.mask_lookups, "total": n_masks,
                                        "hit/pkt": st.mask_lookups / max(st.packets, 1)},
            "maps": {k: {"entries": v[0], "max_entries": v[1]} for k, v in usage.items()},
        })
        return
    out.print(f"xdp@{dp.name}:")
    out.print(f"  lookups: hit:{st.emc_hits + st.megaflow_hits} missed:{st.misses} lost:{st.lost}")
    out.print(f"  flows: {n_flows}")
    out.print(f"  masks: hit:{st.mask_lookups} total:{n_masks} hit/pkt:{st.mask_lookups / max(st.packets, 1):.2f}")
    for p in ports:
        ps = dp.port_stats(p.port_no)
        out.print(f"  port {p.port_no}: {p.name} (xdp {p.mode}, tx by {p.tx_path}) rx:{ps.rx_packets} "
                  f"tx:{ps.tx_packets} (skb path {ps.tx_skb_packets}) drops:{ps.drops}", highlight=False)


def dump_flows(dp: DatapathReader, fmt: Format = Format.text) -> None:
    from ctl.datapath.dpif import flow_line, format_actions
    from ctl.datapath.flowkey import format_masked

    now = now_ns()
    c = dp.dump_columns()  # 100k megaflows print in well under a second: lists, no object per megaflow
    matches = [format_masked(k, m, premasked=True) for k, m in zip(c.keys, c.masks, strict=True)]
    texts = {id(a): a for a in c.actions}  # megaflows share action lists (the same tuple): format each once
    if fmt == Format.json:
        # written row by row (the same JSON json.dumps writes, at a third of the cost): a match is plain ASCII
        # without quotes or backslashes (else it goes through json.dumps), an action list is dumped once
        acts = {i: json.dumps([str(x) for x in a]) for i, a in texts.items()}
        rows = ",".join(
            f'{{"match": {json.dumps(m) if chr(34) in m or chr(92) in m else chr(34) + m + chr(34)}, '
            f'"packets": {p}, "bytes": {b}, "used_s": {json.dumps(max(0, now - u) / 1e9) if u else "null"}, '
            f'"actions": {acts[id(a)]}, "mask_id": {mid}}}'
            for m, p, b, u, a, mid in zip(matches, c.packets, c.bytes, c.used_ns, c.actions, c.mask_ids, strict=True))
        sys.stdout.write(f"[{rows}]\n")
        return
    line = {i: format_actions(a) for i, a in texts.items()}
    sys.stdout.write("".join(flow_line(m, p, b, u, line[id(a)], now) + "\n"
                             for m, p, b, u, a in zip(matches, c.packets, c.bytes, c.used_ns, c.actions, strict=True)))


def show_stats(dp: DatapathReader, fmt: Format = Format.text) -> None:
    st = dp.stats()
    rows: dict[str, object] = {
        "packets received": st.packets, "emc hits": st.emc_hits, "megaflow hits": st.megaflow_hits,
        "avg. subtable lookups per megaflow hit": round(st.avg_subtable_lookups, 2),
        "mask hint hits": st.hint_hits, "simple match hits": st.simple_hits,
    }
    try:
        from ctl.daemon.control import ControlError, request

        up = request(dp.name, "upcall-show", timeout=5)
        rows["miss with success upcall"] = up["ok"]
        rows["miss with failed upcall"] = up["failed"]
        rows["lost"] = st.lost + up["socket_drops"]
    except (ControlError, OSError):
        rows["miss (sent to user space)"] = st.misses  # no daemon to say how the upcalls went
        rows["lost"] = st.lost
    rows["emc inserts"] = st.emc_inserts
    rows["emc probes skipped"] = st.emc_skips
    if fmt == Format.json:
        _print_json({**rows, "drops": st.drops})
        return
    table = Table(title=f"xdp@{dp.name} (summed over CPUs)", show_header=False)
    for k, v in rows.items():
        table.add_row(k, str(v))
    for reason, n in st.drops.items():
        if n:
            table.add_row(f"drops: {reason}", str(n))
    out.print(table)


@app.command("top")
def top(name: str = NAME,
        interval: float = typer.Option(1.0, "--interval", "-i", help="Seconds between refreshes."),
        iterations: int = typer.Option(None, "--iterations", help="Stop after this many frames (default: "
                                                                   "until Ctrl-C).")) -> None:
    """A live view of the switch: packets/s per cache layer and their shares, upcalls/s and lost/s, megaflows
    and masks, the revalidator's pass, per-port rx/tx/drops, and the top megaflows by packets/s.

    Read-only: the pinned maps, and the daemon's counters if one runs (like watching pmd-stats-show).

    Example: sudo xdpswitch top --name xdpswitch
    """
    from ctl.daemon.control import request
    from ctl.datapath.view import ViewError
    from ctl.top import run_top

    if not 0.1 <= interval <= 3600:
        raise _fail(f"--interval {interval}: 0.1..3600 seconds")
    try:
        run_top(name, interval, iterations, out, ask=lambda cmd: request(name, cmd, timeout=2))
    except ViewError as e:
        raise _fail(str(e)) from None


@dpctl.command("show")
def dpctl_show(name: str = NAME, fmt: Format = FORMAT) -> None:
    """Ports, lookups, flows and masks of a datapath (like `ovs-appctl dpctl/show`).

    Example: xdpswitch dpctl show --name xdpswitch
    """
    with _open(name) as dp:
        show_dp(dp, fmt)


@dpctl.command("dump-flows")
def dpctl_dump_flows(name: str = NAME, fmt: Format = FORMAT) -> None:
    """Every megaflow with its mask, packets, bytes, last use and actions (like `ovs-dpctl dump-flows`).

    Example: xdpswitch dpctl dump-flows --format json
    """
    with _open(name) as dp:
        dump_flows(dp, fmt)


@app.command("stats")
def stats(name: str = NAME, fmt: Format = FORMAT) -> None:
    """Fast-path counters: EMC hits, megaflow hits, misses, lost, drops (like `dpif-netdev/pmd-stats-show`).

    Example: xdpswitch stats --format json
    """
    with _open(name) as dp:
        show_stats(dp, fmt)


def _print_json(obj: object) -> None:
    """JSON for scripts: plain (no colours), fast for 100k megaflows (rich's highlighter is not)."""
    sys.stdout.write(json.dumps(obj) + "\n")


def _fail(msg: str) -> typer.Exit:
    err.print(f"xdpswitch: {msg}", highlight=False, markup=False)
    return typer.Exit(1)


def _request(name: str, cmd: str, **args: Any) -> Any:
    from ctl.daemon.control import ControlError, request
    from ctl.pipeline.ofmatch import FlowSyntaxError

    try:
        return request(name, cmd, **args)
    except FlowSyntaxError as e:
        raise _fail(str(e)) from None
    except ControlError as e:
        raise _fail(str(e)) from None


@app.command("start")
def start(
    port: list[str] = typer.Option(..., "--port", "-p",
                                   help="IF or IF=N; repeat for each port (numbers 1..N in order)."),
    flows: str = typer.Option(None, "--flows", help="Replace the saved OpenFlow tables with this add-flows file."),
    name: str = NAME,
    state_dir: str = typer.Option("/var/lib/xdpswitch", "--state-dir", help="Where NAME/flows.json is kept."),
    flow_limit: int = typer.Option(200000, "--flow-limit", help="Megaflows installed at most (OVS's flow-limit)."),
    handlers: int = typer.Option(1, "--handlers", help="Upcall handler threads (they share the interpreter: "
                                 "more do not set up flows faster)."),
    mode: str = typer.Option("auto", "--mode", help="XDP mode: native, generic or auto."),
    emc_insert_inv_prob: int = typer.Option(100, "--emc-insert-inv-prob",
                                            help="Insert into the EMC on 1 in N megaflow hits (0: the EMC is off, "
                                                 "never filled nor probed)."),
    simple_match: bool = typer.Option(True, "--simple-match/--no-simple-match",
                                      help="Find port-to-port megaflows (only in_port and the Ethernet type) "
                                           "from the port and the frame's type, with no parse, EMC or "
                                           "megaflow lookup (OVS's simple match)."),
    vlan_limit: int = typer.Option(1, "--vlan-limit",
                                   help="VLAN tags parsed, as OVS's other_config:vlan-limit: 1 (an inner tag is "
                                        "payload) or 2 (0: as many as the flow key holds, 2). A change is a new "
                                        "datapath layout: start with --replace."),
    max_idle: int = typer.Option(10000, "--max-idle", help="Delete megaflows idle this long (ms)."),
    max_revalidator: int = typer.Option(500, "--max-revalidator", help="Revalidate at least this often (ms)."),
    metrics_address: str = typer.Option("127.0.0.1:9640", "--metrics-address",
                                         help="Serve Prometheus /metrics here (HOST:PORT); 'none' to turn off."),
    controller: list[str] = typer.Option([], "--controller",
                                         help="An OpenFlow 1.3 controller to connect to: tcp:HOST[:PORT], "
                                              "ssl:HOST[:PORT] or unix:PATH (repeat)."),
    listen: list[str] = typer.Option([], "--listen",
                                     help="Also accept OpenFlow connections on pssl:[PORT][:IP] (TLS), punix:PATH "
                                          "or ptcp:[PORT][:IP] (plain TCP, loopback unless IP is given; any "
                                          "local user can change flows through it) (repeat). The root-only "
                                          "punix:/run/xdpswitch/NAME.mgmt is always there."),
    private_key: str = typer.Option(None, "--private-key", help="TLS: the switch's private key (PEM), for ssl: "
                                                                "and pssl:."),
    certificate: str = typer.Option(None, "--certificate", help="TLS: the switch's certificate (PEM)."),
    ca_cert: str = typer.Option(None, "--ca-cert", help="TLS: the CA certificate peers' certificates must be "
                                                        "signed by (ovs-pki's controllerca/cacert.pem)."),
    max_connections: int = typer.Option(100, "--max-connections",
                                        help="OpenFlow connections at most; more are refused and counted."),
    controller_rate: int = typer.Option(0, "--controller-rate",
                                        help="Packet-ins per second to each OpenFlow connection (OVS's "
                                             "controller_rate_limit); more are dropped and counted (0: no limit). "
                                             "A controller can also meter them: add-meter meter=controller,..."),
    controller_burst: int = typer.Option(0, "--controller-burst",
                                         help="Packet-ins a connection may get at once (0: a quarter of the rate)."),
    allow_remote_plain: bool = typer.Option(False, "--allow-remote-plain",
                                            help="Allow ptcp: on a non-loopback address (anyone who reaches it "
                                                 "can change flows; prefer pssl:)."),
    fail_mode: str = typer.Option("standalone", "--fail-mode",
                                  help="Without a controller: standalone (NORMAL, a learning switch) or secure "
                                       "(installed flows only)."),
    datapath_id: str = typer.Option(None, "--datapath-id", help="The OpenFlow datapath id (hex); default: from "
                                                                "the name."),
    inactivity_probe: float = typer.Option(5.0, "--inactivity-probe",
                                           help="Seconds of silence before an echo probe (twice: disconnect)."),
    mac_aging_time: int = typer.Option(300, "--mac-aging-time", help="Seconds a learned MAC lives unseen."),
    replace: bool = typer.Option(False, "--replace", help="If a datapath of this name runs with another map "
                                                          "layout, remove it (its flows stop) instead of refusing."),
    upcall_rate: int = typer.Option(5000, "--upcall-rate",
                                    help="Upcalls per second from one port (new flows' first packets, slow-path "
                                         "packets); more are dropped in XDP and counted (0: no limit)."),
    upcall_burst: int = typer.Option(0, "--upcall-burst", help="Upcalls a port may send at once (0: a second's "
                                                               "worth of --upcall-rate)."),
    upcall_total_rate: int = typer.Option(0, "--upcall-total-rate",
                                          help="Upcalls per second from all ports together (0: no limit)."),
    mask_limit: int = typer.Option(32, "--mask-limit",
                                   help="Megaflow subtables (masks) before a new megaflow that needs another gets the "
                                        "exact mask instead: the guard against tuple space explosion (0: up to "
                                        "the datapath's 64)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every upcall problem."),
) -> None:
    """Run the switch in the foreground until SIGTERM or Ctrl-C.

    Needs root. SIGTERM and Ctrl-C stop the daemon, not the datapath: its XDP programs stay attached and
    its maps pinned, so established flows keep forwarding (new flows' first packets are counted lost)
    until the next `start` with the same --name adopts it, megaflows and all, and swaps its programs in
    place: a restart or an upgrade loses no packet of an established flow. `xdpswitch dpctl del-dp` removes a
    datapath. The OpenFlow tables persist in STATE_DIR/NAME/flows.json.

    Examples: sudo xdpswitch start --port veth1 --port veth2 --flows my.flows
              sudo xdpswitch start -p veth1 -p veth2 --controller tcp:127.0.0.1:6653
              sudo xdpswitch start -p veth1 -p veth2 --controller ssl:10.0.0.9:6653 --private-key sc-privkey.pem \\
                  --certificate sc-cert.pem --ca-cert controllerca/cacert.pem
    ovs-ofctl reaches it as root: ovs-ofctl -O OpenFlow13 dump-flows unix:/run/xdpswitch/NAME.mgmt
    """
    from pathlib import Path

    from ctl.daemon.switch import Switch, parse_ports
    from ctl.datapath.dpif_xdp import DatapathConfig, DatapathError
    from ctl.openflow.connmgr import ChannelConfig, TlsConfig
    from ctl.pipeline.ofmatch import FlowSyntaxError
    from ctl.udpif.upcall import UpcallLimits

    if verbose:
        logging.getLogger().setLevel(logging.INFO)
    if os.geteuid() != 0:
        raise _fail("start needs root (it loads BPF programs, attaches XDP and binds AF_XDP sockets)")
    try:
        specs = parse_ports(port)
        try:
            dpid = int(datapath_id, 16) if datapath_id else None
        except ValueError:
            raise ValueError(f"--datapath-id {datapath_id!r} is not hexadecimal") from None
        channel = ChannelConfig(list(controller), list(listen), fail_mode, inactivity_probe, dpid,
                                tls=TlsConfig(private_key, certificate, ca_cert), max_connections=max_connections,
                                allow_remote_plain=allow_remote_plain, controller_rate=controller_rate,
                                controller_burst=controller_burst)
        sw = Switch(name, specs, Path(state_dir) / name / "flows.json", Path(flows) if flows else None,
                    flow_limit, handlers, mode,
                    DatapathConfig(emc_insert_inv_prob=emc_insert_inv_prob, vlan_limit=vlan_limit,
                                   simple_match=simple_match),
                    say=lambda m: out.print(m, highlight=False, markup=False),
                    metrics_address=None if metrics_address.lower() == "none" else metrics_address,
                    max_idle_ms=max_idle, max_revalidator_ms=max_revalidator, channel=channel,
                    mac_aging_s=mac_aging_time, replace=replace,
                    upcall_limits=UpcallLimits(upcall_rate, upcall_burst, upcall_total_rate), mask_limit=mask_limit)
        sw.start()
    except FlowSyntaxError as e:
        raise _fail(str(e)) from None
    except (ValueError, DatapathError, OSError) as e:
        raise _fail(str(e)) from None
    try:
        sw.run()
    finally:
        sw.shutdown()


@app.command("add-port")
def add_port(interface: str = typer.Argument(..., help="The interface to add (a veth, a tap, a NIC)."),
             ofport: int = typer.Option(None, "--ofport", help="Its OpenFlow port number (default: the lowest "
                                                                 "free)."),
             name: str = NAME) -> None:
    """Add a port to the running switch (like `ovs-vsctl add-port`), remembered across restarts.

    Other ports keep forwarding meanwhile; controllers get PORT_STATUS (add); floods and NORMAL include it
    once the revalidator has brought the megaflows up to date (this waits for that).

    Example: sudo xdpswitch add-port veth7 --ofport 7
    """
    res = _request(name, "add-port", ifname=interface, ofport=ofport)
    out.print(f"added {res['name']} as port {res['port']} ({res['queues']} upcall queue(s))", highlight=False)


@app.command("del-port")
def del_port(interface: str = typer.Argument(..., help="The port's interface."), name: str = NAME) -> None:
    """Remove a port from the running switch (like `ovs-vsctl del-port`), remembered across restarts.

    Its XDP program is detached, megaflows that sent to it are translated again, MACs learned on it are
    forgotten, controllers get PORT_STATUS (delete). Other ports keep forwarding meanwhile.

    Example: sudo xdpswitch del-port veth7
    """
    res = _request(name, "del-port", ifname=interface)
    out.print(f"removed port {res['port']} ({res['name']})", highlight=False)


@dpctl.command("del-dp")
def del_dp(name: str = NAME) -> None:
    """Remove a datapath: detach its XDP programs from every port and remove its pinned maps (like
    `ovs-dpctl del-dp`). Its daemon must be stopped first; forwarding on its ports stops.

    Example: sudo xdpswitch dpctl del-dp --name xdpswitch
    """
    from ctl.daemon.control import ControlError, request
    from ctl.datapath.dpif_xdp import DatapathError, remove_datapath

    if os.geteuid() != 0:
        raise _fail("del-dp needs root (it detaches XDP programs and removes pinned maps)")
    try:
        request(name, "upcall-show", timeout=5)
    except ControlError:
        pass
    else:
        raise _fail(f"the switch {name!r} is running: stop it first (its datapath would be pulled from under it)")
    try:
        gone = remove_datapath(name)
    except (DatapathError, OSError) as e:
        raise _fail(str(e)) from None
    out.print(f"removed datapath {name}: detached from {', '.join(gone) or 'no ports'}", highlight=False)


def _checked_lines(file: str, parse: Callable[[str], object]) -> list[str]:
    """The items of an add-flows/add-groups file (- for stdin), each checked before anything is sent: an error
    names its line."""
    from ctl.pipeline.ofmatch import FlowSyntaxError, parse_lines

    try:
        text = sys.stdin.read() if file == "-" else open(file).read()
        parse_lines(text, parse)
    except FlowSyntaxError as e:
        raise _fail(f"{file}: {e}") from None
    except OSError as e:
        raise _fail(f"{file}: {e.strerror}") from None
    return [x.strip() for x in text.splitlines() if x.strip() and not x.strip().startswith("#")]


@ofctl.command("add-flow")
def ofctl_add_flow(flow: str = typer.Argument(..., help="A flow in ovs-ofctl syntax."), name: str = NAME) -> None:
    """Add one flow (a flow with the same table, match and priority is replaced).

    Example: xdpswitch ofctl add-flow "table=0,priority=100,ip,nw_dst=10.0.0.2,actions=output:2"
    """
    _request(name, "add-flows", flows=[flow])


@ofctl.command("add-flows")
def ofctl_add_flows(file: str = typer.Argument(..., help="One flow per line; # comments; - for stdin."),
                    name: str = NAME) -> None:
    """Add every flow of a file, all or none.

    Example: xdpswitch ofctl add-flows my.flows
    """
    from ctl.pipeline.openflow_tables import parse_flow

    _request(name, "add-flows", flows=_checked_lines(file, parse_flow))


@ofctl.command("del-flows")
def ofctl_del_flows(flow: str = typer.Argument("", help="A match (no actions); empty: every flow."),
                    strict: bool = typer.Option(False, "--strict", help="Same match and priority only."),
                    name: str = NAME) -> None:
    """Delete the flows a match covers (with --strict: exactly that match and priority).

    Example: xdpswitch ofctl del-flows "table=0,ip,nw_dst=10.0.0.0/8"
    """
    _request(name, "del-flows", filter=flow, strict=strict)


@ofctl.command("dump-flows")
def ofctl_dump_flows(flow: str = typer.Argument("", help="A match to filter by (no actions)."),
                     strict: bool = typer.Option(False, "--strict"), name: str = NAME,
                     fmt: Format = FORMAT) -> None:
    """Every flow with its cookie, duration, table, counters, priority, match and actions (as ovs-ofctl).

    Example: xdpswitch ofctl dump-flows "table=1" --format json
    """
    rules = _request(name, "dump-flows", filter=flow, strict=strict)
    assert isinstance(rules, list)
    if fmt == Format.json:
        _print_json([{k: v for k, v in r.items() if k != "line"} for r in rules])
        return
    for r in rules:
        out.print(r["line"], highlight=False, markup=False)


@ofctl.command("mod-table")
def ofctl_mod_table(table: int = typer.Argument(..., help="Table 0..254."),
                    setting: str = typer.Argument(..., help="drop (default), continue (next table), controller, or "
                                                  "prefixes=FIELD,... (ip_dst, ip_src, ipv6_dst, ipv6_src; none)."),
                    name: str = NAME) -> None:
    """Set what a table does with a packet no rule matches (OpenFlow 1.1's table-miss config), or which address
    fields get a prefix trie, in the order lookups consult them (OVS's Flow_Table prefixes, default
    ip_dst,ip_src; none turns them off). A trie widens megaflows: a packet that no rule prefix matches
    un-wildcards only the leading bits that tell it apart.

    Examples: xdpswitch ofctl mod-table 0 continue; xdpswitch ofctl mod-table 0 prefixes=ip_dst,ipv6_dst
    """
    if setting.startswith("prefixes="):
        _request(name, "mod-table", table=table, prefixes=setting.partition("=")[2])
    else:
        _request(name, "mod-table", table=table, miss=setting)


@ofctl.command("add-group")
def ofctl_add_group(group: str = typer.Argument(..., help="group_id=N,type=all|select|indirect|ff,bucket=..."),
                    name: str = NAME) -> None:
    """Add a group (ovs-ofctl syntax). Buckets: bucket=[weight:W,][watch_port:P,][watch_group:G,]actions=...;
    select picks one bucket per packet by a hash of its addresses and ports, weighted; ff (fast failover)
    takes the first bucket whose watched port is up; all runs every bucket; indirect its one bucket.

    Example: xdpswitch ofctl add-group "group_id=1,type=select,bucket=weight:1,output:2,bucket=weight:2,output:3"
    """
    _request(name, "add-groups", groups=[group])


@ofctl.command("add-groups")
def ofctl_add_groups(file: str = typer.Argument(..., help="One group per line; # comments; - for stdin."),
                     name: str = NAME) -> None:
    """Add every group of a file, all or none (a group may go to one on an earlier line).

    Example: xdpswitch ofctl add-groups my.groups
    """
    from ctl.pipeline.groups import parse_group

    _request(name, "add-groups", groups=_checked_lines(file, parse_group))


@ofctl.command("mod-group")
def ofctl_mod_group(group: str = typer.Argument(..., help="group_id=N,type=...,bucket=... (the whole new group)"),
                    name: str = NAME) -> None:
    """Replace a group's type and buckets (its flows stay; its bucket counters start again).

    Example: xdpswitch ofctl mod-group "group_id=1,type=all,bucket=output:2,bucket=output:3"
    """
    _request(name, "add-groups", groups=[group], modify=True)


@ofctl.command("del-groups")
def ofctl_del_groups(group: str = typer.Argument("", help="group_id=N; empty: every group."), name: str = NAME) -> None:
    """Delete a group (or all), and the flows that go to it, as OpenFlow says. A group another group's bucket
    goes to is refused: delete that one first.

    Example: xdpswitch ofctl del-groups group_id=1
    """
    res = _request(name, "del-groups", filter=group)
    assert isinstance(res, dict)
    if res.get("flows_deleted"):
        out.print(f"deleted {res['deleted']} group(s) and the {res['flows_deleted']} flow(s) that went to them",
                  highlight=False)


@ofctl.command("dump-groups")
def ofctl_dump_groups(group: str = typer.Argument("", help="group_id=N; empty: every group."), name: str = NAME,
                      fmt: Format = FORMAT) -> None:
    """Every group with its type and buckets (as ovs-ofctl -O OpenFlow13 dump-groups).

    Example: xdpswitch ofctl dump-groups
    """
    groups = _request(name, "dump-groups", filter=group)
    assert isinstance(groups, list)
    if fmt == Format.json:
        _print_json(groups)
        return
    for g in groups:
        out.print(f" {g['line']}", highlight=False, markup=False)


@ofctl.command("dump-group-stats")
def ofctl_dump_group_stats(group: str = typer.Argument("", help="group_id=N; empty: every group."),
                           name: str = NAME, fmt: Format = FORMAT) -> None:
    """Each group's counters and each bucket's (as ovs-ofctl dump-group-stats). A select group's buckets are
    counted per packet by the fast path, which picks them.

    Example: xdpswitch ofctl dump-group-stats group_id=1
    """
    stats = _request(name, "dump-group-stats", filter=group)
    assert isinstance(stats, list)
    if fmt == Format.json:
        _print_json(stats)
        return
    for g in stats:
        buckets = "".join(f",bucket{i}:packet_count={b['packet_count']},byte_count={b['byte_count']}"
                          for i, b in enumerate(g["buckets"]))
        out.print(f" group_id={g['group_id']},duration={g['duration']:.3f}s,ref_count={g['ref_count']},"
                  f"packet_count={g['packet_count']},byte_count={g['byte_count']}{buckets}",
                  highlight=False, markup=False)


@ofctl.command("add-meter")
def ofctl_add_meter(meter: str = typer.Argument(..., help="meter=N,kbps|pktps[,burst][,stats],bands=type=drop,rate=R"),
                    name: str = NAME) -> None:
    """Add an OpenFlow meter (ovs-ofctl syntax); flows use it with the meter:N instruction, first in their actions.
    Bands: type=drop or type=dscp_remark (with prec_level=1|2: raises an AF DSCP's drop precedence), rate=R in kbps
    or packets/s, burst_size=B (kbits or packets, with the burst flag; else 100 ms of the rate). The fast path
    enforces it, one token bucket per band shared by every CPU.

    Example: xdpswitch ofctl add-meter "meter=1,kbps,burst,bands=type=drop,rate=10000,burst_size=100"
    """
    _request(name, "add-meters", meters=[meter])


@ofctl.command("mod-meter")
def ofctl_mod_meter(meter: str = typer.Argument(..., help="meter=N,... (the whole new meter)"),
                    name: str = NAME) -> None:
    """Replace a meter's flags and bands (its buckets start full, its counters at zero).

    Example: xdpswitch ofctl mod-meter "meter=1,pktps,bands=type=drop,rate=1000"
    """
    _request(name, "add-meters", meters=[meter], modify=True)


@ofctl.command("del-meters")
def ofctl_del_meters(meter: str = typer.Argument("", help="meter=N; empty: every meter."), name: str = NAME) -> None:
    """Delete a meter (or all) and the flows that use it.

    Example: xdpswitch ofctl del-meters meter=1
    """
    res = _request(name, "del-meters", filter=meter)
    assert isinstance(res, dict)
    if res.get("flows_deleted"):
        out.print(f"deleted {res['deleted']} meter(s) and the {res['flows_deleted']} flow(s) that used them",
                  highlight=False)


@ofctl.command("dump-meters")
def ofctl_dump_meters(meter: str = typer.Argument("", help="meter=N; empty: every meter."), name: str = NAME,
                      fmt: Format = FORMAT) -> None:
    """Every meter with its flags and bands.

    Example: xdpswitch ofctl dump-meters
    """
    meters = _request(name, "dump-meters", filter=meter)
    assert isinstance(meters, list)
    if fmt == Format.json:
        _print_json(meters)
        return
    for m in meters:
        out.print(m["line"], highlight=False, markup=False)


@ofctl.command("meter-stats")
def ofctl_meter_stats(meter: str = typer.Argument("", help="meter=N; empty: every meter."), name: str = NAME,
                      fmt: Format = FORMAT) -> None:
    """Each meter's flows, packets and bytes in, and per band the packets over its rate (as ovs-ofctl meter-stats).

    Example: xdpswitch ofctl meter-stats meter=1
    """
    stats = _request(name, "meter-stats", filter=meter)
    assert isinstance(stats, list)
    if fmt == Format.json:
        _print_json(stats)
        return
    for m in stats:
        bands = " ".join(f"{i}: packet_count:{b['packet_count']} byte_count:{b['byte_count']}"
                         for i, b in enumerate(m["bands"]))
        out.print(f"meter:{m['meter_id']} flow_count:{m['flow_count']} packet_in_count:{m['packet_in_count']} "
                  f"byte_in_count:{m['byte_in_count']} duration:{m['duration']:.3f}s bands:\n{bands}",
                  highlight=False, markup=False)


@app.command("trace")
def trace(flow: str = typer.Argument(..., help="A packet in match syntax: in_port=1,tcp,nw_dst=10.0.0.2,tp_dst=80"),
          name: str = NAME, fmt: Format = FORMAT) -> None:
    """Follow a packet through the OpenFlow tables and show the megaflow it would get (like ofproto/trace).

    Every table visited, the rule matched, the final datapath actions and the Megaflow: line.

    Example: xdpswitch trace "in_port=1,icmp,nw_src=10.0.0.1,nw_dst=10.0.0.2"
    """
    res = _request(name, "trace", flow=flow)
    assert isinstance(res, dict)
    if fmt == Format.json:
        _print_json({k: v for k, v in res.items() if k != "text"})
        return
    out.print(res["text"], highlight=False, markup=False)


@ofctl.command("show")
def ofctl_show(name: str = NAME, fmt: Format = FORMAT) -> None:
    """The OpenFlow channel: datapath id, fail mode, controllers, listeners and connections.

    Example: xdpswitch ofctl show
    """
    st = _request(name, "channel-show")
    assert isinstance(st, dict)
    if fmt == Format.json:
        _print_json(st)
        return
    mode = st["fail_mode"] + (" (fail-open: NORMAL)" if st["fail_open"] else "")
    lines = [f"dpid:{st['datapath_id']}  fail-mode {mode}",
             "  controllers : " + (", ".join(st["controllers"]) or "none"),
             "  listening   : " + (", ".join(f"{x['target']} ({x['access']})" for x in st["listening"]) or "no"),
             *[f"  WARNING: {x['target']}: {x['access']} can change flows" for x in st["listening"]
               if x["access"].startswith("plain TCP: any host")],
             f"  flow-mods {st['flow_mods']}, group-mods {st['group_mods']}, meter-mods {st['meter_mods']}, "
             f"packet-outs {st['packet_outs']}, MACs learned {st['mac_entries']}",
             "  packet-ins  : " + (f"at most {st['controller_rate']}/s per connection (burst "
                                   f"{st['controller_burst']})" if st["controller_rate"] else "no rate limit"),
             f"  connections {len(st['connections'])} of at most {st['max_connections']}; refused or closed: "
             + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in st["refused"].items() if v) or "none")]
    for c in st["connections"]:
        lines.append(f"  {c['type']:10s} {c['peer']:22s}{' TLS' if c['tls'] else ''} role {c['role']:6s} "
                     f"up {c['connected_s']}s  "
                     f"rx {c['rx_msgs']} tx {c['tx_msgs']} packet-ins {c['packet_ins']} "
                     f"(dropped {c['packet_ins_dropped']}, over the rate limit {c['packet_ins_rate_limited']}) "
                     f"errors sent {c['errors_sent']}")
    out.print("\n".join(lines), highlight=False, markup=False)


@fdb.command("show")
def fdb_show(name: str = NAME, fmt: Format = FORMAT) -> None:
    """The MAC learning table of NORMAL: port, VLAN, MAC, age (like `ovs-appctl fdb/show`).

    Example: xdpswitch fdb show
    """
    entries = _request(name, "fdb-show")
    assert isinstance(entries, list)
    if fmt == Format.json:
        _print_json(entries)
        return
    lines = [" port  VLAN  MAC                Age"]
    lines += [f"{e['port']:5d}  {e['vlan']:4d}  {e['mac']}  {e['age']:4d}" for e in entries]
    out.print("\n".join(lines), highlight=False, markup=False)


@upcall.command("show")
def upcall_show(name: str = NAME, fmt: Format = FORMAT) -> None:
    """Handlers, flows against the flow-limit, and the upcall counters (like `ovs-appctl upcall/show`).

    Example: xdpswitch upcall show --format json
    """
    st = _request(name, "upcall-show")
    assert isinstance(st, dict)
    if fmt == Format.json:
        _print_json(st)
        return
    lines = [
        f"{st['name']}:",
        f"  flows         : (current {st['flows']}) (avg {st['avg_flows']}) (max {st['max_flows']}) "
        f"(limit {st['flow_limit']})",
        f"  dump duration : {st['dump_duration_ms']:.0f}ms",
        f"  settings      : flow-limit {st['flow_limit_configured']}, max-idle {st['max_idle']}ms, "
        f"max-revalidator {st['max_revalidator']}ms",
        f"  ukeys         : {st['ukeys']}",
        f"  handlers      : {st['handlers']} (restarted {st['handler_restarts']} times)",
        f"  upcalls       : received {st['received']}, ok {st['ok']}, failed {st['failed']}, "
        f"lost {st['fast_path_lost'] + st['socket_drops']}",
        "  reasons       : " + ", ".join(f"{k} {v}" for k, v in st["by_reason"].items()),
        "  handling      : " + ", ".join(f"{k} {v / max(st['received'], 1) * 1e6:.1f}"
                                         for k, v in st["phase_seconds"].items()) + " us per upcall (mean)",
        f"  megaflows     : installed {st['installed']} (slow path {st['slow_path']}), existing {st['existing']}, "
        f"over flow-limit {st['over_flow_limit']}, install failed {st['install_failed']}",
        "  deleted       : " + (", ".join(f"{k} {v}" for k, v in st["deleted"].items()) or "none"),
        "  rules expired : " + ", ".join(f"{k} {v}" for k, v in st["rules_expired"].items()),
        f"  revalidated   : {st['revalidated']} megaflows translated again after changes that could affect them "
        f"({st['updated_in_place']} updated in place), {st['stale']} stale now",
        f"  transmitted   : {st['tx_packets']} (dropped {st['tx_dropped']})",
        f"  controller    : {st['controller']} (dropped: no OpenFlow channel yet)",
        f"  upcall limits : {st['upcall_rate'] or 'none'}/s per port (burst {st['upcall_burst']}), "
        f"{st['upcall_total_rate'] or 'none'}/s in all; over them: {st['upcall_limited']} dropped in XDP",
        f"  masks         : {st['masks']} (limit {st['mask_limit'] or 'none'}; megaflows given the exact mask "
        f"past it: {st['mask_limited']})",
    ]
    if st["drops"]:
        lines.append("  action drops  : " + ", ".join(f"{k} {v}" for k, v in st["drops"].items()))
    lines.append("  loop errors   : " + (", ".join(f"{k} {v}" for k, v in st["loop_errors"].items()) or "none")
                 + " (caught; the loop went on)")
    out.print("\n".join(lines), highlight=False, markup=False)


@upcall.command("set")
def upcall_set(flow_limit: int = typer.Option(None, "--flow-limit", help="Megaflows installed at most."),
               max_idle: int = typer.Option(None, "--max-idle", help="Idle megaflows go after this (ms)."),
               max_revalidator: int = typer.Option(None, "--max-revalidator", help="Revalidation period (ms)."),
               upcall_rate: int = typer.Option(None, "--upcall-rate", help="Upcalls/s from one port (0: no limit)."),
               upcall_burst: int = typer.Option(None, "--upcall-burst", help="A port's upcall bucket (0: 1 s)."),
               upcall_total_rate: int = typer.Option(None, "--upcall-total-rate",
                                                     help="Upcalls/s from all ports (0: no limit)."),
               mask_limit: int = typer.Option(None, "--mask-limit", help="Subtables before the exact mask (0: 64)."),
               name: str = NAME) -> None:
    """Change the flow-limit, max-idle, max-revalidator or upcall limits of a running switch (OVS: other_config).

    Examples: xdpswitch upcall set --flow-limit 50000 --max-idle 2000; xdpswitch upcall set --upcall-rate 2000
    """
    res = _request(name, "set", flow_limit=flow_limit, max_idle=max_idle, max_revalidator=max_revalidator)
    assert isinstance(res, dict)
    if (upcall_rate, upcall_burst, upcall_total_rate, mask_limit) != (None, None, None, None):
        lim = _request(name, "upcall-limit", rate=upcall_rate, burst=upcall_burst, total_rate=upcall_total_rate,
                       mask_limit=mask_limit)
        assert isinstance(lim, dict)
        res.update(lim)
    out.print(", ".join(f"{k.replace('_', '-')} {v}" for k, v in res.items()), highlight=False)


@revalidator.command("purge")
def revalidator_purge(name: str = NAME) -> None:
    """Delete every megaflow now (like `ovs-appctl revalidator/purge`); they come back on the next packets.

    Example: xdpswitch revalidator purge
    """
    res = _request(name, "revalidator-purge")
    out.print(f"deleted {res['deleted']} megaflows", highlight=False)


@app.command("demo")
def demo() -> None:
    """Three hosts in namespaces on the switch with a small rule set: trace, ping every pair, show the caches.

    Needs root. Everything the demo creates is removed when it ends.

    Example: sudo xdpswitch demo
    """
    if os.geteuid() != 0:
        raise _fail("demo needs root (it makes network namespaces and loads XDP programs)")
    from ctl.demo import run_demo

    def show(dp: DatapathReader) -> None:
        out.rule("xdpswitch dpctl show")
        show_dp(dp)
        out.rule("xdpswitch dpctl dump-flows")
        dump_flows(dp)
        out.rule("xdpswitch stats")
        show_stats(dp)

    try:
        rc = run_demo(out, show)
    except Exception as e:
        err.print(f"xdpswitch demo: {e}")
        raise typer.Exit(1) from None
    raise typer.Exit(rc)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
