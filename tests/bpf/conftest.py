"""bpf tier fixtures: one datapath per module on three veth ports, packets through BPF_PROG_TEST_RUN.

BPF_PROG_TEST_RUN runs the program on the calling CPU, so the module pins itself to CPU 0 and reads
per-CPU state (the parser's scratch key) from there."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ctl.datapath import progrun
from ctl.datapath.dpif import DpStats, PortStats
from ctl.datapath.dpif_xdp import Datapath, DatapathConfig
from ctl.datapath.flowkey import SHORT_KEY_WORDS, FlowKey, format_key, is_short_key
from tests.conftest import Net, need_root, unique

CONFIG = DatapathConfig(max_flows=8192, emc_insert_inv_prob=1)


@dataclass
class Bench:
    dp: Datapath
    ifindex: dict[int, int]  # port number -> ifindex

    def run(self, frame: bytes, in_port: int = 1, queue: int = 0) -> progrun.RunResult:
        return progrun.run_xdp(self.dp.emc_prog_fd, frame, self.ifindex[in_port], queue)

    def scratch_key(self) -> bytes:
        """The flow key the XDP parser left in dp_scratch on CPU 0."""
        return bytes(self.dp.bpf["dp_scratch"].getvalue(0)[0].key)

    def scratch_short_key(self) -> bool:
        """Whether the XDP parser found the key short (dp_scratch.short_key on CPU 0)."""
        return bool(self.dp.bpf["dp_scratch"].getvalue(0)[0].short_key)

    def check_short_key(self, key: FlowKey) -> None:
        """The parser's short-key flag is what flowkey.is_short_key says of the key it left, and a short key has
        nothing after its first SHORT_KEY_WORDS words (the EMC compares only those)."""
        short = self.scratch_short_key()
        assert short == is_short_key(key), f"short_key {short} for {format_key(key)}"
        assert not short or not any(bytes(key)[8 * SHORT_KEY_WORDS:]), f"a short key with more: {format_key(key)}"

    def scratch_hash(self) -> int:
        """The flow key hash emc_rx left in dp_scratch on CPU 0."""
        return int(self.dp.bpf["dp_scratch"].getvalue(0)[0].hash)

    def reset(self) -> None:
        self.dp.flush_flows()
        self.dp.flush_emc()
        self.dp.set_emc_insert_inv_prob(CONFIG.emc_insert_inv_prob)
        self.dp.set_simple_match(True)

    def port_stats(self) -> dict[int, PortStats]:
        return {p: self.dp.port_stats(p) for p in self.ifindex}

    def stats(self) -> DpStats:
        return self.dp.stats()


@pytest.fixture(scope="module")
def bench(module_net: Net) -> Iterator[Bench]:
    need_root()
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    dp = Datapath(unique("xsbpf"), CONFIG)
    try:
        ifindex = {}
        for n in (1, 2, 3):
            a, _b = module_net.veth(quiet=True, gro=True)  # these cases are about the XDP redirect path
            ifindex[n] = dp.add_port(a, n).ifindex
        yield Bench(dp, ifindex)
    finally:
        dp.close(unpin=True)
        os.sched_setaffinity(0, old)


@pytest.fixture
def tb(bench: Bench) -> Bench:
    bench.reset()
    return bench
