"""The Vagrant bench: valid, and provisioned by the same setup script as the README and CI."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_vagrantfile_provisions_with_the_shared_setup() -> None:
    text = (ROOT / "Vagrantfile").read_text()
    assert "scripts/setup.sh" in text
    assert 'provider "libvirt"' in text and 'provider "virtualbox"' in text
    assert "debian/bookworm64" in text


def test_vagrant_validate() -> None:
    if shutil.which("vagrant") is None:
        pytest.fail("vagrant is not installed: scripts/test.sh installs it")
    r = subprocess.run(["vagrant", "validate"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
