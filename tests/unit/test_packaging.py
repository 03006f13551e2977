"""The systemd unit: systemd itself finds nothing wrong with it, and it keeps the property that makes a
restart hitless (SIGTERM stops the daemon, nothing removes the datapath on stop)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "xdpswitch@.service"


def test_the_unit_restarts_hitlessly() -> None:
    text = UNIT.read_text()
    lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in text.splitlines() if "=" in ln and ln[0] != "#"}
    assert lines["ExecStart"].startswith("/usr/local/bin/xdpswitch start --name %i ")
    assert lines["KillSignal"] == "SIGTERM" and lines["Restart"] == "on-failure"
    assert "ExecStopPost" not in lines and "ExecStop" not in lines  # a stop for a restart leaves the datapath


def test_systemd_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    xdpswitch = Path(sys.executable).parent / "xdpswitch"
    if not xdpswitch.exists():
        pytest.skip(f"no {xdpswitch}: scripts/setup.sh installs the command")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/xdpswitch", str(xdpswitch))
                    .replace("EnvironmentFile=/etc/", "EnvironmentFile=-/etc/"))
    r = subprocess.run([analyze, "verify", str(tmp_path / "xdpswitch@sw0.service")], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr
