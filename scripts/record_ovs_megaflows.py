#!/usr/bin/env python3
"""Record Open vSwitch's megaflows for the rule sets in tests/fixtures/megaflow/ (the width test's oracle).

For every NAME.flows / NAME.packets pair, this starts a private ovsdb-server and ovs-vswitchd (a dummy
datapath with four dummy ports, nothing touches the host's network), adds the flows with ovs-ofctl and
runs ``ovs-appctl ofproto/trace`` on each packet, then writes NAME.ovs.json: the packet, OVS's
``Megaflow:`` line and its ``Datapath actions:`` line, and the OVS version.

Needs Debian's openvswitch-switch (``apt-get install openvswitch-switch``); run as root:

    sudo python3 scripts/record_ovs_megaflows.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "megaflow"
SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")


def run(*cmd: str, env: dict[str, str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return r.stdout


def main() -> int:
    if not SCHEMA.exists():
        print("record_ovs_megaflows: needs openvswitch-switch (apt-get install openvswitch-switch)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="xdpswitch-ovs.") as d:
        env = {**os.environ, "OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d, "OVS_SYSCONFDIR": d}
        db = f"unix:{d}/db.sock"
        run("ovsdb-tool", "create", f"{d}/conf.db", str(SCHEMA), env=env)
        run("ovsdb-server", f"--remote=punix:{d}/db.sock", "--pidfile", "--detach", "--log-file", f"{d}/conf.db",
            env=env)
        try:
            run("ovs-vsctl", f"--db={db}", "--no-wait", "init", env=env)
            run("ovs-vswitchd", "--enable-dummy=override", "--disable-system", "--pidfile", "--detach",
                "--log-file", db, env=env)
            run("ovs-vsctl", f"--db={db}", "add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=dummy",
                "fail-mode=secure", env=env)
            for i in range(1, 5):
                run("ovs-vsctl", f"--db={db}", "add-port", "br0", f"p{i}", "--", "set", "interface", f"p{i}",
                    "type=dummy", f"ofport_request={i}", env=env)
            version = run("ovs-vswitchd", "--version", env=env).splitlines()[0]
            for flows in sorted(FIXTURES.glob("*.flows")):
                run("ovs-ofctl", "-O", "OpenFlow13", "del-flows", "br0", env=env)
                run("ovs-ofctl", "-O", "OpenFlow13", "add-flows", "br0", str(flows), env=env)
                cases = []
                for pkt in flows.with_suffix(".packets").read_text().splitlines():
                    if not pkt.strip() or pkt.startswith("#"):
                        continue
                    out = run("ovs-appctl", "ofproto/trace", "br0", pkt, env=env)
                    mf = next(x for x in out.splitlines() if x.startswith("Megaflow: "))[len("Megaflow: "):]
                    acts = next(x for x in out.splitlines() if x.startswith("Datapath actions: "))
                    cases.append({"packet": pkt, "megaflow": mf, "datapath_actions": acts[len("Datapath actions: "):]})
                out_path = flows.with_suffix(".ovs.json")
                out_path.write_text(json.dumps({"ovs": version, "cases": cases}, indent=1) + "\n")
                print(f"{out_path.name}: {len(cases)} megaflows")
        finally:
            for pidfile in ("ovs-vswitchd.pid", "ovsdb-server.pid"):
                p = Path(d) / pidfile
                if p.exists():
                    subprocess.run(["kill", p.read_text().strip()], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
