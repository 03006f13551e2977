"""The shipped Prometheus rules and Grafana dashboard: promtool checks and unit-tests the rules; the
dashboard is well-formed and queries only metrics the exporter has. (A real Prometheus answers every one of
its queries in tests/netns/test_prometheus.py.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.conftest import need_tool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "prometheus" / "xdpswitch.rules.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "xdpswitch.json"
GOLDEN = ROOT / "tests" / "fixtures" / "metrics.golden"


def promtool() -> str:
    return need_tool("promtool", "prometheus")


def test_promtool_checks_the_rules() -> None:
    r = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_promtool_unit_tests_pass() -> None:
    r = subprocess.run([promtool(), "test", "rules", RULES.with_suffix(".test.yml").name], capture_output=True,
                       text=True, cwd=RULES.parent)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def exported_metrics() -> set[str]:
    """Every series name the exporter writes (its golden exposition)."""
    return {ln.split("{")[0].split()[0] for ln in GOLDEN.read_text().splitlines() if ln and not ln.startswith("#")}


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def test_the_dashboard_is_well_formed_and_queries_what_the_exporter_has() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "xdpswitch"
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "instance"}
    known = exported_metrics()
    for p in dash["panels"]:
        assert p["targets"] and p["title"] and p["gridPos"]["w"] > 0
        for t in p["targets"]:
            assert 'instance=~"$instance"' in t["expr"], t["expr"]
            for name in re.findall(r"\b(xdpswitch_[a-z_]+)\b", t["expr"]):
                assert name in known, f"{p['title']}: {name} is not a metric the exporter writes"
    rules = RULES.read_text()
    for name in set(re.findall(r"\b(xdpswitch_[a-z_]+)\b", rules)):
        assert name in known, f"the rules use {name}, which the exporter does not write"
