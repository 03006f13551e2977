"""The xdpswitch command line: one typer app whose sub-commands mirror the OVS tools.

    xdpswitch demo
    xdpswitch dpctl show        [--name NAME] [--format text|json]
    xdpswitch dpctl dump-flows  [--name NAME] [--format text|json]
    xdpswitch stats             [--name NAME] [--format text|json]

dpctl and stats open a running datapath's pinned maps by its name (default "xdpswitch"). Errors go to
stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from ctl.dpif import now_ns

if TYPE_CHECKING:
    from ctl.datapath import Datapath

app = typer.Typer(help="An Open vSwitch-style switch with an XDP fast path.", no_args_is_help=True,
                  add_completion=False)
dpctl = typer.Typer(help="The datapath: ports, megaflows (like ovs-dpctl / ovs-appctl dpctl/*).",
                    no_args_is_help=True)
app.add_typer(dpctl, name="dpctl")
out = Console()
err = Console(stderr=True)


class Format(StrEnum):
    text = "text"
    json = "json"


NAME = typer.Option("xdpswitch", "--name", "-n", help="The datapath's name (its pinned maps).")
FORMAT = typer.Option(Format.text, "--format", "-f", help="text for people, json for scripts.")


def _open(name: str) -> Datapath:
    from ctl.datapath import Datapath, DatapathError

    try:
        return Datapath.reopen(name)
    except DatapathError as e:
        err.print(f"xdpswitch: {e}")
        raise typer.Exit(1) from None


def show_dp(dp: Datapath, fmt: Format = Format.text) -> None:
    st = dp.stats()
    ports = dp.attached_ports() or list(dp.ports.values())
    usage = dp.map_usage()
    if fmt == Format.json:
        out.print_json(json.dumps({
            "name": dp.name, "ports": [vars(p) for p in ports],
            "lookups": {"hit": st.emc_hits + st.megaflow_hits, "missed": st.misses, "lost": st.lost},
            "flows": dp.n_flows, "masks": {"hit": st.mask_lookups, "total": dp.n_masks,
                                           "hit/pkt": st.mask_lookups / max(st.packets, 1)},
            "maps": {k: {"entries": v[0], "max_entries": v[1]} for k, v in usage.items()},
        }))
        return
    out.print(f"xdp@{dp.name}:")
    out.print(f"  lookups: hit:{st.emc_hits + st.megaflow_hits} missed:{st.misses} lost:{st.lost}")
    out.print(f"  flows: {dp.n_flows}")
    out.print(f"  masks: hit:{st.mask_lookups} total:{dp.n_masks} hit/pkt:{st.mask_lookups / max(st.packets, 1):.2f}")
    for p in ports:
        ps = dp.port_stats(p.port_no)
        out.print(f"  port {p.port_no}: {p.name} (xdp {p.mode}) rx:{ps.rx_packets} tx:{ps.tx_packets} "
                  f"drops:{ps.drops}")


def dump_flows(dp: Datapath, fmt: Format = Format.text) -> None:
    now = now_ns()
    flows = dp.dump_flows()
    if fmt == Format.json:
        out.print_json(json.dumps([{
            "match": f.match(), "packets": f.packets, "bytes": f.bytes,
            "used_s": None if not f.used_ns else max(0, now - f.used_ns) / 1e9,
            "actions": [str(a) for a in f.actions], "mask_id": f.mask_id} for f in flows]))
        return
    for f in flows:
        out.print(f.format(now), highlight=False, soft_wrap=True)


def show_stats(dp: Datapath, fmt: Format = Format.text) -> None:
    st = dp.stats()
    rows = {
        "packets received": st.packets, "emc hits": st.emc_hits, "megaflow hits": st.megaflow_hits,
        "avg. subtable lookups per megaflow hit": round(st.avg_subtable_lookups, 2),
        "mask hint hits": st.hint_hits, "miss with success upcall": st.misses,
        "lost": st.lost, "emc inserts": st.emc_inserts,
    }
    if fmt == Format.json:
        out.print_json(json.dumps({**rows, "drops": st.drops}))
        return
    table = Table(title=f"xdp@{dp.name} (summed over CPUs)", show_header=False)
    for k, v in rows.items():
        table.add_row(k, str(v))
    for reason, n in st.drops.items():
        if n:
            table.add_row(f"drops: {reason}", str(n))
    out.print(table)


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


@app.command("demo")
def demo() -> None:
    """Three hosts in namespaces on one XDP switch: put megaflows, ping every pair, show the caches.

    Needs root. Everything the demo creates is removed when it ends.

    Example: sudo xdpswitch demo
    """
    from ctl.demo import run_demo

    def show(dp: Datapath) -> None:
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
