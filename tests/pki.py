"""Certificates for the TLS tests, made by Open vSwitch's own ``ovs-pki`` (Debian's openvswitch-pki), in the
layout OVS documents: a controller CA and a switch CA under DIR/pki, and key/certificate pairs signed by
them (``ovs-pki req+sign NAME switch|controller``)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def controllerca(self) -> Path:
        """The CA certificate that signs controllers (the switch's --ca-cert)."""
        return self.root / "pki" / "controllerca" / "cacert.pem"

    @property
    def switchca(self) -> Path:
        """The CA certificate that signs switches (a controller's CA file)."""
        return self.root / "pki" / "switchca" / "cacert.pem"

    def key(self, name: str) -> Path:
        return self.root / f"{name}-privkey.pem"

    def cert(self, name: str) -> Path:
        return self.root / f"{name}-cert.pem"


def make_pki(root: Path, controllers: tuple[str, ...] = ("ctl",)) -> Pki:
    """A new PKI under root: the switch's key and certificate as "sc", one per controller name."""
    root.mkdir(parents=True, exist_ok=True)

    def pki(*args: str) -> None:
        subprocess.run(["ovs-pki", f"--dir={root / 'pki'}", *args], cwd=root, check=True, capture_output=True)

    pki("init")
    pki("req+sign", "sc", "switch")
    for name in controllers:
        pki("req+sign", name, "controller")
    return Pki(root)
