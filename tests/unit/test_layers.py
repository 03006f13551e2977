"""The control plane's layers, as docs/architecture.md draws them: a module may import its own package and
the layers below it, never one above (nor a sibling package on the same level)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# lowest first; a level holds groups of modules, and groups on one level do not import each other
LAYERS: list[list[tuple[str, ...]]] = [
    [("ctl.common", "ctl.__version__")],             # loops that survive an exception; nothing switch-specific
    [("ctl.datapath",)],                             # the fast path's maps, programs, sockets, key, actions
    [("ctl.pipeline",)],                             # OpenFlow tables, classifier, translation, NORMAL
    [("ctl.udpif",), ("ctl.openflow",), ("exporters",)],  # upcalls, revalidator; the OpenFlow channel; metrics
    [("ctl.daemon",)],                               # the switch: wiring, threads, control socket, state
    [("ctl.cli", "ctl.demo", "ctl.top")],            # the command line
]


def layer_of(module: str) -> tuple[int, tuple[str, ...]]:
    for i, groups in enumerate(LAYERS):
        for g in groups:
            if any(module == n or module.startswith(n + ".") for n in g):
                return i, g
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)")


def modules() -> dict[str, Path]:
    out = {}
    for top in ("ctl", "exporters"):
        for p in (ROOT / top).rglob("*.py"):
            rel = p.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            if parts != ("ctl",):
                out[".".join(parts)] = p
    return out


def imports_of(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            mod = max((n for n in names if n.split(".")[0] in ("ctl", "exporters")), key=len, default=None)
            if mod is not None:
                out.append((node.lineno, node.module if node.module != "ctl" else mod))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] in ("ctl", "exporters")]
    return out


def test_every_module_is_in_a_layer() -> None:
    for name in modules():
        layer_of(name)


def test_no_import_runs_up_the_layers() -> None:
    bad = []
    for name, path in modules().items():
        mine, pkg = layer_of(name)
        for line, target in imports_of(path):
            theirs, tpkg = layer_of(target)
            if theirs > mine or (theirs == mine and tpkg != pkg):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name} (layer {mine}) imports {target} (layer {theirs})")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text("from ctl.daemon.switch import Switch\nfrom ctl.datapath import dpif\n")
    assert [layer_of(t)[0] for _l, t in imports_of(p)] == [4, 1]


def test_only_the_datapath_module_imports_bcc() -> None:
    users = [n for n, p in modules().items()
             if any(isinstance(x, (ast.Import, ast.ImportFrom)) and "bcc" in ast.unparse(x).split()[1].split(".")[0]
                    for x in ast.walk(ast.parse(p.read_text())))]
    assert users == ["ctl.datapath.dpif_xdp"]


def test_no_ip_subprocess_in_the_control_plane() -> None:
    """Every netlink job goes through pyroute2 (links, events, namespaces, veths, addresses): no `ip` command
    is run from ctl/."""
    import re

    bad = []
    for name, path in modules().items():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""\[\s*["']ip["']\s*,|["']ip (?:-\w+ )*(?:link|netns|addr|route|neigh)\b""", line) \
                    and "detach it first" not in line:
                bad.append(f"{name}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_the_control_client_is_light_to_import() -> None:
    # stats, top and ofctl ask a running daemon through ctl.daemon.control: it must not pull in bcc (a compiler
    # and the kernel headers' world), pyroute2 or the daemon itself
    import subprocess
    import sys

    heavy = ("bcc", "pyroute2", "ctl.daemon.switch", "ctl.datapath.dpif_xdp")
    out = subprocess.run([sys.executable, "-c", "import sys, ctl.daemon.control; "
                          f"print([m for m in {heavy!r} if m in sys.modules])"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
