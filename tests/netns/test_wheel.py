"""The package as a user installs it: a wheel built from the tracked sources, installed (not editable) into a
fresh venv, runs the switch with no source tree in sight (the fast path's C sources travel in the wheel)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import zipfile
from pathlib import Path

import pytest

from ctl.daemon.switch import control_path, request
from tests.conftest import unique
from tests.netns.conftest import Host
from tests.netns.test_controller import wait_for
from tests.netns.test_forwarding import ping

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]


def test_a_wheel_installed_in_a_fresh_venv_runs_the_switch(hosts: list[Host], tmp_path: Path) -> None:
    # build from a copy of what git tracks, so the work tree gets no build/ or egg-info
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    venv_py = Path(os.environ.get("XDPSWITCH_VENV", ROOT / ".venv")) / "bin" / "python"
    subprocess.run([str(venv_py), "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("xdpswitch-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("xdp/emc.c", "xdp/megaflow.c", "xdp/skb_tx.c", "xdp/dp_maps.h", "ctl/cli.py", "exporters/server.py"):
        assert f in names, f"{f} is not in {wheel.name}"

    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "requirements.lock"), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import ctl, xdp; print(ctl.__file__, xdp.__file__)"],
                           cwd="/", env=env, capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in where and "site-packages" in where, where
    version = subprocess.run([str(venv / "bin" / "xdpswitch"), "--version"], cwd="/", env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
    assert version.startswith("xdpswitch ") and version != "xdpswitch 0+unknown", version

    name = unique("xswhl")
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([str(venv / "bin" / "xdpswitch"), "start", "--name", name, "--state-dir", str(tmp_path),
                             "--metrics-address", "none",
                             *[a for h in hosts for a in ("--port", f"{h.port}={h.port_no}")]],
                            cwd="/", env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: control_path(name).exists() or proc.poll() is not None, timeout=90), log.read_text()
        assert proc.poll() is None, log.read_text()
        h1, h2, h3 = hosts
        assert wait_for(lambda: ping(h1, h2.ip, 1), timeout=10), log.read_text()
        assert ping(h2, h3.ip, 2)
        assert request(name, "upcall-show")["ok"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        subprocess.run([str(venv / "bin" / "xdpswitch"), "dpctl", "del-dp", "--name", name], cwd="/", env=env,
                       capture_output=True, timeout=60)
