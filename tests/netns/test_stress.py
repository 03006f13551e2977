"""The daemon under load, from outside: `xdpswitch start` as users run it, three hosts pinging each other,
and for STRESS_SECONDS several OpenFlow connections and the control socket adding, modifying and deleting
flows as fast as they can while the state file is saved every tick and the revalidator runs. At the end
the daemon is alive, nothing was logged as an exception, the table (and the state file) is what the
messages should have left, and traffic follows it. (Own module: its own hosts.)"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from ctl.daemon.switch import control_path, request
from ctl.datapath.dpif_xdp import DatapathError, remove_datapath
from ctl.openflow import codec as oc
from ctl.pipeline import ofactions as of
from ctl.pipeline.openflow_tables import parse_flow
from tests.conftest import unique
from tests.netns.conftest import Host
from tests.netns.test_forwarding import udp_recv, udp_send
from tests.netns.test_switch import L2
from tests.unit.ofhelpers import flow_mod, msg

ROOT = Path(__file__).resolve().parents[2]
STRESS_SECONDS = float(os.environ.get("XDPSWITCH_STRESS_SECONDS", "30"))
N_OPENFLOW = 3          # OpenFlow connections, each with a key space of its own
KEYS = 5000             # udp tp_dst values per writer: up to 20k rules, as the burst that killed 2 of 3 daemons
BURST = 500             # flow-mods between barriers (a controller pushing bursts)
ADD, MODIFY_STRICT, DELETE_STRICT = 0, 2, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpenFlowWriter(threading.Thread):
    """One controller connection: bursts of random add/modify_strict/delete_strict on its own tp_dst range,
    each burst closed by a barrier; model holds what the table must say for each key afterwards."""

    def __init__(self, port: int, base: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.base, self.stop = port, base, stop
        self.model: dict[int, str] = {}     # tp_dst -> actions text ("drop" or "output:2"); absent: no rule
        self.sent = 0
        self.errors: list[str] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported by the test
            self.failure = e

    def _run(self) -> None:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.sendall(msg(oc.T.HELLO))
        framer = oc.Framer()
        rnd = random.Random(self.base)
        xid = 10
        while not self.stop.is_set():
            burst = []
            for _ in range(BURST):
                n = self.base + rnd.randrange(KEYS)
                match = parse_flow(f"priority=200,udp,tp_dst={n}", actions=False).match
                op = rnd.choice((ADD, ADD, MODIFY_STRICT, DELETE_STRICT))
                acts: list[of.OfAction] = [of.Output(2)] if rnd.random() < 0.5 else []
                text = "output:2" if acts else "drop"
                burst.append(flow_mod(match, acts, command=op, priority=200, xid=xid))
                if op == ADD or (op == MODIFY_STRICT and n in self.model):
                    self.model[n] = text
                elif op == DELETE_STRICT:
                    self.model.pop(n, None)
                xid += 1
            xid += 1
            s.sendall(b"".join(burst) + msg(oc.T.BARRIER_REQUEST, xid=xid))
            self.sent += len(burst)
            self._until_barrier(s, framer, xid)
        s.close()

    def _until_barrier(self, s: socket.socket, framer: oc.Framer, xid: int) -> None:
        while True:
            data = s.recv(65536)
            assert data, "the switch closed the connection"
            for raw in framer.feed(data):
                _v, mtype, _len, rxid = struct.unpack_from("!BBHI", raw)
                if mtype == oc.T.ERROR:
                    self.errors.append(raw[8:12].hex())
                elif mtype == oc.T.ECHO_REQUEST:
                    s.sendall(msg(oc.T.ECHO_REPLY, raw[8:], rxid))
                elif mtype == oc.T.BARRIER_REPLY and rxid == xid:
                    return


class ControlWriter(threading.Thread):
    """The control socket (xdpswitch ofctl): add-flows of 50 and strict del-flows on its own range."""

    def __init__(self, name: str, base: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.name, self.base, self.stop = name, base, stop
        self.model: dict[int, str] = {}
        self.sent = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        rnd = random.Random(self.base)
        try:
            while not self.stop.is_set():
                if rnd.random() < 0.6:
                    flows = []
                    for _ in range(50):
                        n = self.base + rnd.randrange(KEYS)
                        text = rnd.choice(("drop", "output:2"))
                        flows.append(f"priority=200,udp,tp_dst={n},actions={text}")
                        self.model[n] = text
                    request(self.name, "add-flows", flows=flows)
                    self.sent += len(flows)
                else:
                    n = self.base + rnd.randrange(KEYS)
                    request(self.name, "del-flows", filter=f"priority=200,udp,tp_dst={n}", strict=True)
                    self.model.pop(n, None)
                    self.sent += 1
        except BaseException as e:
            self.failure = e


def test_flow_mods_from_every_side_under_traffic(hosts: list[Host], tmp_path: Path) -> None:
    h1, h2, h3 = hosts
    name, lport = unique("xsst"), free_port()
    flows = tmp_path / "start.flows"
    flows.write_text("\n".join(L2) + "\n")
    log = tmp_path / "daemon.log"
    cli = [sys.executable, "-m", "ctl.cli"]
    with log.open("w") as out:
        proc = subprocess.Popen([*cli, "start", "--name", name, "--state-dir", str(tmp_path), "--flows", str(flows),
                                 "--listen", f"ptcp:{lport}:127.0.0.1", "--metrics-address", "none",
                                 *[a for h in hosts for a in ("--port", f"{h.port}={h.port_no}")]],
                                stdout=out, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    stop = threading.Event()
    pings: list[subprocess.Popen[str]] = []
    try:
        deadline = time.time() + 60
        while not control_path(name).exists():
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(0.5)
        n_pings = int(STRESS_SECONDS * 20)
        for a, b in ((h1, h2), (h2, h3), (h3, h1)):
            pings.append(subprocess.Popen(["ip", "netns", "exec", a.ns, "ping", "-q", "-c", str(n_pings), "-i", "0.05",
                                           "-W", "1", b.ip], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
        writers: list[OpenFlowWriter | ControlWriter] = [
            OpenFlowWriter(lport, 20000 + 10000 * i, stop) for i in range(N_OPENFLOW)]
        writers.append(ControlWriter(name, 50000, stop))
        t0 = time.monotonic()
        for w in writers:
            w.start()
        time.sleep(STRESS_SECONDS)
        stop.set()
        for w in writers:
            w.join(timeout=60)
        elapsed = time.monotonic() - t0
        for w in writers:
            assert w.failure is None, repr(w.failure)
            assert not w.is_alive()
        assert all(not w.errors for w in writers if isinstance(w, OpenFlowWriter)), "a flow-mod was refused"
        sent = sum(w.sent for w in writers)
        print(f"\nstress: {sent} flow-mods in {elapsed:.1f} s = {sent / elapsed:.0f}/s "
              f"({', '.join(f'{type(w).__name__} {w.sent}' for w in writers)})")
        received = []
        for p in pings:
            text, _ = p.communicate(timeout=STRESS_SECONDS + 60)
            received.append(int(text.split(" received")[0].rsplit(",", 1)[1]))
        print(f"stress: pings received {received} of {n_pings} each")
        assert min(received) >= 0.99 * n_pings, received

        # the daemon is alive and nothing went wrong in it
        assert proc.poll() is None, log.read_text()
        shown = request(name, "upcall-show")
        assert shown["loop_errors"] == {}, shown["loop_errors"]
        text = log.read_text()
        assert "Traceback" not in text and "ERROR" not in text, text

        # the table is what the messages should have left (after the base L2 rules)
        expect = {(200, f"udp,tp_dst={n}", a) for w in writers for n, a in w.model.items()}
        expect |= {(10, f"dl_dst=02:00:00:00:00:0{n}", f"output:{n}") for n in (1, 2, 3)}
        dumped = {(r["priority"], r["match"], r["actions"]) for r in request(name, "dump-flows")}
        assert dumped == expect, (len(dumped), len(expect), sorted(dumped ^ expect)[:10])
        time.sleep(1.5)  # the next tick saves what OpenFlow changed
        saved = json.loads((tmp_path / name / "flows.json").read_text())
        assert len(saved["flows"]) == len(expect)

        # traffic follows the table: a dropped port is not delivered, an output:2 or absent one is
        model: dict[int, str] = writers[0].model
        dropped = [n for n, a in model.items() if a == "drop"][:3]
        passed = [n for n, a in model.items() if a == "output:2"][:2] + [
            n for n in range(20000, 20000 + KEYS) if n not in model][:1]
        assert len(dropped) == 3 and len(passed) == 3
        recvs = {n: udp_recv(h2, n, 1) for n in dropped + passed}
        time.sleep(0.3)
        for n in recvs:
            udp_send(h1, h2.ip, n, [f"p{n}"])
        got = {n: r.communicate(timeout=15)[0].strip() for n, r in recvs.items()}
        assert {n: got[n] for n in dropped} == {n: "" for n in dropped}
        assert {n: got[n] for n in passed} == {n: f"p{n}" for n in passed}
    finally:
        stop.set()
        for p in pings:
            if p.poll() is None:
                p.kill()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        with contextlib.suppress(DatapathError):
            remove_datapath(name)  # SIGTERM leaves the datapath running, by design
