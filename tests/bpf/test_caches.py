"""The two cache layers: EMC fill and invalidation, tuple space search with hints and ranking, limits,
the counter partition and pinned maps."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import random
import shutil
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

import xdp
from ctl.datapath import dpif, progrun
from ctl.datapath.dpif import ActionError, DpDrop, DpOutput, DpSetEthDst, DpSetIpv4Dst, MapFull
from ctl.datapath.dpif_xdp import Datapath, DatapathConfig, DatapathError
from ctl.datapath.flowkey import FIELD_NAMES, build, mask_for, mask_words, parse
from ctl.datapath.netdev import xdp_mode
from ctl.datapath.progrun import XDP_DROP, XDP_REDIRECT
from ctl.datapath.view import PIN_ROOT
from tests.bpf.conftest import CONFIG, Bench
from tests.conftest import Net, sh, unique

MAC = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def udp(dport: int = 53, src: str = "10.0.0.1") -> bytes:
    return bytes(Ether(**MAC) / IP(src=src, dst="10.0.0.2") / UDP(sport=1000, dport=dport) / (b"x" * 18))


def test_miss_without_a_socket_is_lost(tb: Bench) -> None:
    before = tb.stats()
    assert tb.run(udp()).verdict == XDP_DROP
    d = tb.stats().delta(before)
    assert (d.lost, d.misses, d.megaflow_hits, d.emc_hits) == (1, 0, 0, 0)
    assert d.drops["no_upcall_socket"] == 1


def test_megaflow_hit_fills_the_emc_then_emc_hits(tb: Bench) -> None:
    tb.dp.set_simple_match(False)  # a port-to-port megaflow: else the simple match finds it before the EMC
    tb.dp.put_flow(parse(udp(), 1), mask_for("in_port", "dl_type"), [DpOutput(2)])
    before = tb.stats()
    assert tb.run(udp()).verdict == XDP_REDIRECT
    assert tb.run(udp()).verdict == XDP_REDIRECT
    d = tb.stats().delta(before)
    assert (d.megaflow_hits, d.emc_inserts, d.emc_hits) == (1, 1, 1)
    [flow] = tb.dp.dump_flows()
    assert (flow.packets, flow.bytes) == (2, 2 * len(udp()))
    assert flow.used_ns > 0


def test_last_use_follows_the_coarse_clock(tb: Bench) -> None:
    # the fast path reads the clock once per jiffy per CPU (dp_now_ns): a hit's time is the clock of its tick,
    # never an earlier one, on the simple-match, EMC and megaflow paths alike
    tb.dp.put_flow(parse(udp(), 1), mask_for("in_port", "dl_type"), [DpOutput(2)])
    for simple, inv in ((True, 1), (False, 1), (False, 0)):  # simple-match hits, EMC hits, megaflow hits only
        tb.dp.set_simple_match(simple)
        tb.dp.set_emc_insert_inv_prob(inv)
        for _ in range(3):
            t0 = dpif.now_ns()
            assert tb.run(udp()).verdict == XDP_REDIRECT
            t1 = dpif.now_ns()
            [flow] = tb.dp.dump_flows()
            assert t0 <= flow.used_ns <= t1
            time.sleep(0.03)  # several ticks (HZ is 100 to 1000)


def test_emc_insert_probability_zero_never_inserts(tb: Bench) -> None:
    tb.dp.set_emc_insert_inv_prob(0)
    tb.dp.put_flow(parse(udp(), 1), mask_for("in_port"), [DpOutput(2)])
    before = tb.stats()
    for _ in range(20):
        tb.run(udp())
    d = tb.stats().delta(before)
    assert (d.megaflow_hits, d.emc_hits, d.emc_inserts) == (20, 0, 0)
    assert d.emc_skips == 20  # an EMC that is off is not probed either (OVS skips emc_lookup)


def test_a_thrashing_emc_is_not_probed_until_a_sample_says_it_pays(tb: Bench) -> None:
    # emc.c's sampler: EMC_SAMPLE (256) probes that all miss, then EMC_SKIP (4096) packets skip the probe, then
    # probes again; inserts go on while skipping, so the flow that came back hits at once
    tb.dp.set_emc_insert_inv_prob(1)
    tb.dp.put_flow(parse(udp(), 1), mask_for("in_port"), [DpOutput(2)])
    flows = [udp(dport=i + 1, src=f"10.1.{i % 250}.{i // 250 + 1}") for i in range(256)]
    before = tb.stats()
    for f in flows:  # every probe misses (each flow is new); the 256th miss's verdict: skip
        tb.run(f)
    d = tb.stats().delta(before)
    assert (d.emc_hits, d.megaflow_hits, d.emc_skips) == (0, 256, 0)
    again = udp(dport=9)
    before = tb.stats()
    for _ in range(4096):
        assert tb.run(again).verdict == XDP_REDIRECT
    d = tb.stats().delta(before)
    assert (d.emc_hits, d.megaflow_hits, d.emc_skips) == (0, 4096, 4096)
    assert d.emc_inserts == 4096
    before = tb.stats()
    for _ in range(10):
        tb.run(again)
    d = tb.stats().delta(before)
    assert (d.emc_hits, d.megaflow_hits, d.emc_skips) == (10, 0, 0)
    # emptying the EMC starts the sampler again: the next packet probes
    for f in flows[:100]:
        tb.run(f)
    tb.dp.flush_emc()
    before = tb.stats()
    tb.run(again)
    tb.run(again)
    d = tb.stats().delta(before)
    assert (d.emc_hits, d.megaflow_hits, d.emc_skips) == (1, 1, 0)


def test_a_sampler_that_keeps_saying_skip_backs_off(tb: Bench) -> None:
    # each verdict in a row that says skip doubles the next skip: EMC_SKIP << n, n at most EMC_BACKOFF_MAX (4);
    # a sample that pays starts again at EMC_SKIP. An insert probability of 1 in 2^32 keeps the EMC empty, so
    # every probe of the one frame misses
    tb.dp.put_flow(parse(udp(), 1), mask_for("in_port"), [DpOutput(2)])

    def skips_after(frame: bytes, n: int) -> int:
        before = tb.stats()
        progrun.run_xdp(tb.dp.emc_prog_fd, frame, tb.ifindex[1], repeat=n)
        d = tb.stats().delta(before)
        assert d.emc_hits + d.megaflow_hits == n
        return d.emc_skips

    tb.dp.set_emc_insert_inv_prob(0xFFFFFFFF)
    assert skips_after(udp(), 256) == 0  # 256 probes, all missed: the last one's verdict says skip
    for skip in (4096, 8192, 16384, 32768, 65536, 65536):
        assert skips_after(udp(), skip + 256) == skip  # then 256 probes again, the last one's verdict
    assert skips_after(udp(), 65536) == 65536  # the last verdict's skip
    # a sample whose probes mostly hit ends the backoff
    tb.dp.set_emc_insert_inv_prob(1)
    before = tb.stats()
    assert skips_after(udp(), 300) == 0  # the first probe misses and inserts, the rest hit
    assert tb.stats().delta(before).emc_hits == 299
    assert skips_after(udp(dport=9), 1) == 0  # the verdict, at this miss: the probes paid
    tb.dp.set_emc_insert_inv_prob(0xFFFFFFFF)
    assert skips_after(udp(dport=10), 256) == 0
    assert skips_after(udp(dport=10), 4096 + 256) == 4096  # back to the first skip


def test_emc_insert_probability_is_about_one_in_n(tb: Bench) -> None:
    tb.dp.set_emc_insert_inv_prob(10)
    tb.dp.put_flow(parse(udp(), 1), mask_for("in_port"), [DpOutput(2)])
    before = tb.stats()
    for i in range(400):  # distinct flows: every one is a megaflow hit, some get EMC entries
        tb.run(udp(dport=i + 1, src=f"10.0.{i % 250}.{i // 250 + 1}"))
    d = tb.stats().delta(before)
    assert d.megaflow_hits == 400
    assert 10 <= d.emc_inserts <= 90


def test_deleted_megaflow_never_runs_from_the_emc(tb: Bench) -> None:
    key = parse(udp(), 1)
    tb.dp.put_flow(key, mask_for("in_port"), [DpOutput(2)])
    tb.run(udp())
    tb.run(udp())
    assert tb.stats().emc_hits >= 1
    assert tb.dp.del_flow(key, mask_for("in_port"))
    before = tb.stats()
    assert tb.run(udp()).verdict == XDP_DROP
    d = tb.stats().delta(before)
    assert (d.emc_hits, d.megaflow_hits, d.lost) == (0, 0, 1)
    assert not tb.dp.del_flow(key, mask_for("in_port"))


def test_a_batch_of_deletes_unlinks_and_kills_each_and_frees_the_slots(tb: Bench) -> None:
    """del_flows (the revalidator's and a flush's deletes, written in batches): each megaflow asked for goes,
    and only those (one not installed, and one asked twice, report False); their packets miss, from the EMC
    too, and their slots take new megaflows; the count follows."""
    m = mask_for("in_port", "tp_dst")
    keys = [parse(udp(dport=2000 + i), 1) for i in range(20)]
    tb.dp.put_flows([(k, m, [DpOutput(2)]) for k in keys])
    for _ in range(3):
        tb.run(udp(dport=2000))   # an EMC entry names it now
    assert tb.stats().emc_hits >= 1
    gone = keys[:12:2]
    result = tb.dp.del_flows([(k, m) for k in gone] + [(parse(udp(dport=3000), 1), m), (gone[0], m)])
    assert result == [True] * 6 + [False, False]
    assert tb.dp.n_flows == 14 == tb.dp.reader.n_flows()
    before = tb.stats()
    verdicts = {2000 + i: tb.run(udp(dport=2000 + i)).verdict for i in range(20)}
    d = tb.stats().delta(before)
    assert [p for p, v in verdicts.items() if v != XDP_REDIRECT] == [2000, 2002, 2004, 2006, 2008, 2010]
    assert d.lost == 6 and d.emc_hits + d.megaflow_hits == 14
    fresh = [parse(udp(dport=4000 + i), 1) for i in range(6)]
    assert all(isinstance(r, int) for r in tb.dp.put_flows([(k, m, [DpOutput(3)]) for k in fresh]))
    assert tb.run(udp(dport=4005)).verdict == XDP_REDIRECT and tb.dp.n_flows == 20
    assert tb.dp.flush_flows() == 20 and tb.dp.n_flows == 0 == tb.dp.reader.n_flows() and tb.dp.n_masks == 0


def test_changed_megaflow_takes_effect_through_the_emc(tb: Bench) -> None:
    key = parse(udp(), 1)
    tb.dp.put_flow(key, mask_for("in_port"), [DpOutput(2)])
    tb.run(udp())
    tb.run(udp())
    tb.dp.put_flow(key, mask_for("in_port"), [DpSetIpv4Dst("10.0.0.99"), DpOutput(3)])
    before, ports_before = tb.stats(), tb.port_stats()
    r = tb.run(udp())
    assert IP(r.frame[14:]).dst == "10.0.0.99"
    d = tb.stats().delta(before)
    assert (d.emc_hits, d.megaflow_hits) == (0, 1)
    assert tb.port_stats()[3].tx_packets == ports_before[3].tx_packets + 1
    assert tb.port_stats()[2].tx_packets == ports_before[2].tx_packets
    [flow] = tb.dp.dump_flows()
    assert flow.packets == 3  # counters carry over a change, as OVS's modify keeps them
    assert tb.dp.n_masks == 1


def test_one_subtable_needs_no_hint(tb: Bench) -> None:
    tb.dp.set_emc_insert_inv_prob(0)
    tb.dp.put_flow(parse(udp(), 1), mask_for("in_port"), [DpOutput(2)])
    before = tb.stats()
    for _ in range(3):
        assert tb.run(udp()).verdict == XDP_REDIRECT
    d = tb.stats().delta(before)
    assert (d.megaflow_hits, d.mask_lookups, d.hint_hits) == (3, 3, 0)
    # a second subtable: the hint is kept again and found on the next packet
    tb.dp.put_flow(parse(udp(dport=7), 1), mask_for("in_port", "tp_dst"), [DpOutput(3)])
    tb.run(udp())
    before = tb.stats()
    tb.run(udp())
    d = tb.stats().delta(before)
    assert (d.megaflow_hits, d.hint_hits) == (1, 1)


def test_tuple_space_search_hint_and_ranking(tb: Bench) -> None:
    tb.dp.set_emc_insert_inv_prob(0)
    masks = [mask_for("in_port", "tp_dst"), mask_for("in_port", "nw_src"), mask_for("dl_src"),
             mask_for("in_port", "dl_type", "nw_proto"), mask_for("in_port", "dl_dst", "tp_src")]
    other = bytes(Ether(src="02:00:00:00:00:99", dst="02:00:00:00:00:98") / IP(src="192.0.2.1")
                  / UDP(sport=9, dport=7))
    others = [parse(other, 2)] * 4  # a flow whose masked keys the target packet matches in none of them
    for m, k in zip(masks[:4], others, strict=True):
        tb.dp.put_flow(k, m, [DpDrop()])
    target = parse(udp(), 1)
    tb.dp.put_flow(target, masks[4], [DpOutput(2)])
    assert tb.dp.n_masks == 5

    before = tb.stats()
    tb.run(udp())  # no hint yet: all five subtables
    d = tb.stats().delta(before)
    assert (d.megaflow_hits, d.mask_lookups, d.hint_hits) == (1, 5, 0)

    before = tb.stats()
    tb.run(udp())  # the hint names the fifth subtable: one lookup
    d = tb.stats().delta(before)
    assert (d.megaflow_hits, d.mask_lookups, d.hint_hits) == (1, 1, 1)

    target_mask = next(f.mask_id for f in tb.dp.dump_flows() if f.actions == [DpOutput(2)])
    assert tb.dp.mask_order()[-1] == target_mask
    assert tb.dp.rank_masks()[0] == target_mask
    tb.dp.flush_emc()
    # a new packet of the same megaflow with a different hash: no hint, but ranked first now
    before = tb.stats()
    tb.run(udp(dport=54))
    d = tb.stats().delta(before)
    assert (d.megaflow_hits, d.mask_lookups) == (1, 1)


def test_a_hinted_megaflow_is_checked_like_any_other(tb: Bench) -> None:
    # the hint keeps the megaflow the flow last hit (its index) and that megaflow's subtable: a hint whose megaflow
    # was deleted, or whose slot now holds another megaflow (of the same subtable or another one), never runs that
    # slot's actions for the packet
    tb.dp.set_emc_insert_inv_prob(0)
    by_port, by_src = mask_for("in_port", "tp_dst"), mask_for("in_port", "nw_src")
    a = tb.dp.put_flow(parse(udp(), 1), by_port, [DpOutput(2)])
    keep = parse(udp(dport=7), 1)  # keeps the tp_dst subtable alive while a's slot changes hands
    tb.dp.put_flows([(keep, by_port, [DpDrop()])] + [
        (parse(udp(src=f"10.1.{i >> 8}.{i & 255}"), 1), by_src, [DpDrop()]) for i in range(CONFIG.max_flows - 2)])
    assert tb.dp.n_flows == CONFIG.max_flows and tb.dp.n_masks == 2  # the next megaflow takes a freed slot
    tb.run(udp())
    before = tb.stats()
    assert tb.run(udp()).verdict == XDP_REDIRECT
    d = tb.stats().delta(before)
    assert (d.megaflow_hits, d.mask_lookups, d.hint_hits) == (1, 1, 1)

    def sent(frame: bytes) -> tuple[int, dpif.DpStats, dict[int, int]]:
        before, ports = tb.stats(), tb.port_stats()
        verdict = tb.run(frame).verdict
        return verdict, tb.stats().delta(before), {p: s.tx_packets - ports[p].tx_packets
                                                   for p, s in tb.port_stats().items()}

    assert tb.dp.del_flow(parse(udp(), 1), by_port)  # deleted, its slot not yet reused
    verdict, d, tx = sent(udp())
    assert (verdict, d.lost, d.megaflow_hits, d.mask_lookups) == (XDP_DROP, 1, 0, 2) and not any(tx.values())

    other = tb.dp.put_flow(parse(udp(dport=54), 1), by_port, [DpOutput(3)])  # a's slot, a's subtable
    assert other == a
    verdict, d, tx = sent(udp())
    assert (verdict, d.lost, d.megaflow_hits) == (XDP_DROP, 1, 0) and not any(tx.values())
    assert tb.dp.flow_stats(other)[0] == 0

    assert tb.dp.del_flow(parse(udp(dport=54), 1), by_port)
    mine = tb.dp.put_flow(parse(udp(), 1), by_src, [DpOutput(3)])  # a's slot, the other subtable
    assert mine == a
    verdict, d, tx = sent(udp())  # the hint's subtable misses: the search finds it in the other one
    assert (verdict, d.megaflow_hits, d.mask_lookups, d.hint_hits) == (XDP_REDIRECT, 1, 2, 0) and tx[3] == 1
    verdict, d, tx = sent(udp())  # and the hint names it now
    assert (verdict, d.megaflow_hits, d.mask_lookups, d.hint_hits) == (XDP_REDIRECT, 1, 1, 1) and tx[3] == 1
    assert tb.dp.flow_stats(mine)[0] == 2


def test_masks_are_bounded_and_a_full_mask_table_loses_nothing(tb: Bench) -> None:
    key = parse(udp(), 1)
    fields = ["in_port", "dl_dst", "dl_src", "dl_type", "nw_src", "nw_dst", "nw_proto", "tp_src", "tp_dst"]
    n = 0
    for bits in range(1, 1 << len(fields)):
        if n == CONFIG.max_masks:
            break
        tb.dp.put_flow(key, mask_for(*[f for i, f in enumerate(fields) if bits >> i & 1]), [DpOutput(2)])
        n += 1
    assert tb.dp.n_masks == CONFIG.max_masks
    with pytest.raises(MapFull, match="masks"):
        tb.dp.put_flow(key, mask_for("nw_tos"), [DpOutput(3)])
    assert tb.dp.n_flows == CONFIG.max_masks
    assert tb.run(udp()).verdict == XDP_REDIRECT


def test_a_full_flow_table_loses_nothing(tb: Bench) -> None:
    m = mask_for("in_port", "nw_src")
    for i in range(CONFIG.max_flows):
        tb.dp.put_flow(parse(udp(src=f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"), 1), m, [DpOutput(2)])
    with pytest.raises(MapFull, match="megaflow slots"):
        tb.dp.put_flow(parse(udp(src="11.0.0.0"), 1), m, [DpOutput(3)])
    assert tb.dp.n_flows == CONFIG.max_flows
    assert tb.run(udp(src="10.0.1.7")).verdict == XDP_REDIRECT
    assert tb.run(udp(src="11.0.0.0")).verdict == XDP_DROP  # not cached: a miss, counted lost
    for src in ("10.0.0.0", "10.0.0.1", "10.0.0.1"):
        tb.run(udp(src=src))   # the slots about to be freed have counted packets
    assert tb.dp.del_flow(parse(udp(src="10.0.0.0"), 1), m)
    idx = tb.dp.put_flow(parse(udp(src="11.0.0.0"), 1), m, [DpOutput(3)])  # a freed slot is reused
    assert tb.dp.flow_stats(idx)[:2] == (0, 0)   # its counters start again at zero
    assert tb.run(udp(src="11.0.0.0")).verdict == XDP_REDIRECT and tb.dp.flow_stats(idx)[0] == 1
    assert tb.dp.del_flows([(parse(udp(src="10.0.0.1"), 1), m)]) == [True]
    idx, = tb.dp.put_flows([(parse(udp(src="11.0.0.1"), 1), m, [DpOutput(3)])])   # and through a batch
    assert isinstance(idx, int) and tb.dp.flow_stats(idx)[:2] == (0, 0)


def test_bad_actions_change_nothing(tb: Bench) -> None:
    key = parse(udp(), 1)
    tb.dp.put_flow(key, mask_for("in_port"), [DpOutput(2)])
    with pytest.raises(ActionError):
        tb.dp.put_flow(key, mask_for("in_port"), [DpOutput(2), DpSetEthDst("02:00:00:00:00:09"), DpOutput(3)])
    with pytest.raises(ActionError):
        tb.dp.put_flow(key, mask_for("dl_type"), [DpOutput(70000)])
    assert [str(a) for f in tb.dp.dump_flows() for a in f.actions] == ["2"]
    assert tb.dp.n_masks == 1


def test_output_groups_are_shared_and_bounded(tb: Bench) -> None:
    m = mask_for("in_port", "tp_dst")
    tb.dp.put_flow(parse(udp(dport=1), 1), m, [DpOutput(2), DpOutput(3)])
    tb.dp.put_flow(parse(udp(dport=2), 1), m, [DpOutput(3), DpOutput(2)])
    assert tb.dp.map_usage()["dp_groups"][0] == 1
    sets = [[DpOutput(p), DpOutput(p + 1)] for p in range(4, 20)]
    installed = 0
    with pytest.raises(MapFull, match="groups"):
        for i, acts in enumerate(sets):
            tb.dp.put_flow(parse(udp(dport=100 + i), 1), m, acts)
            installed += 1
    assert installed == 7
    assert tb.run(udp(dport=1)).verdict == XDP_REDIRECT


def test_the_four_results_partition_every_packet(tb: Bench) -> None:
    rng = random.Random(7)
    tb.dp.set_emc_insert_inv_prob(3)
    tb.dp.put_flow(parse(udp(), 1), mask_for("in_port", "dl_type", "nw_proto"), [DpOutput(2)])
    tb.dp.put_flow(parse(bytes(Ether(**MAC) / IPv6() / TCP()), 2), mask_for("dl_type"), [DpDrop()])
    frames = [udp(dport=rng.randrange(1, 60000)) for _ in range(60)] + [udp()] * 30
    frames += [bytes(Ether(**MAC) / IPv6() / TCP(sport=rng.randrange(65536))) for _ in range(40)]
    frames += [bytes(Ether(**MAC) / ARP()) for _ in range(20)]
    frames += [rng.randbytes(rng.randrange(14, 100)) for _ in range(80)]
    before = tb.stats()
    # first the same flow 30 times on its megaflow's port: EMC inserts (1 in 3, by the kernel's random numbers)
    # then hits (with random ports alone, no hit at all happened in about one run of 30); after them the
    # random frames, whose EMC probes mostly miss, so the sampler may stop probing: still one result each
    for _ in range(30):
        tb.run(udp(), in_port=1)
    for f in frames:
        tb.run(f, in_port=rng.choice([1, 2, 3]))
    d = tb.stats().delta(before)
    assert d.packets == len(frames) + 30
    assert d.emc_hits > 0 and d.megaflow_hits > 0 and d.lost > 0


def bucket(tb: Bench, b: int) -> list[tuple[int, int]]:
    """The used ways of bucket b as the kernel has them: (tag, flow slot)."""
    v = dpif.MF_BUCKET.unpack(bytes(tb.dp.bpf["mf_buckets"][ctypes.c_uint32(b)]))
    n = dpif.MF_BUCKET_WAYS
    return sorted((v[j], v[n + j]) for j in range(n) if v[j])


@pytest.mark.parametrize("fields", [("in_port", "dl_dst", "nw_dst"), ("in_port", "ipv6_src", "nd_target"),
                                    tuple(FIELD_NAMES)])
def test_the_kernel_finds_a_megaflow_where_python_places_it(tb: Bench, fields: tuple[str, ...]) -> None:
    # the place hashes only the words the mask covers, even words in one lane and odd in the other
    # (mf_hash_masked, flowkey.mf_hash with mask_words): masks with odd words (dl_dst, nw_dst: words 1 and 3),
    # high ones (IPv6 addresses, the ND target: 7 to 12) and every word
    tb.dp.set_emc_insert_inv_prob(0)
    frame = bytes(Ether(**MAC) / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=7, dport=9))
    if "ipv6_src" not in fields:
        frame = udp(dport=9)
    m = mask_for(*fields)
    words = mask_words(bytes(m))
    assert words & 0b1010 if "dl_dst" in fields else words >> 7
    idx = tb.dp.put_flow(parse(frame, 1), m, [DpOutput(2)])
    [mid] = [f.mask_id for f in tb.dp.dump_flows()]
    b, tag = dpif.mf_place(dpif.mf_key_bytes(mid, parse(frame, 1).masked(m)), tb.dp.hash_seed,
                           tb.dp.config.n_buckets, words)
    assert bucket(tb, b) == [(tag, idx)]
    before = tb.stats()
    assert tb.run(frame).verdict == XDP_REDIRECT
    d = tb.stats().delta(before)
    assert (d.megaflow_hits, d.lost, d.emc_hits) == (1, 0, 0)


def test_a_megaflow_whose_hash_collides_is_refused_and_the_first_keeps_forwarding(
        tb: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    m = mask_for("in_port", "tp_dst")
    first, second = parse(udp(dport=1), 1), parse(udp(dport=2), 1)
    idx = tb.dp.put_flow(first, m, [DpOutput(2)])
    # a megaflow's place in mf_buckets is (bucket, tag) from a 64-bit hash; make the second's hash the first's
    real = dpif.mf_hash
    monkeypatch.setattr(dpif, "mf_hash", lambda masked, seed, words: real(bytes(first.masked(m)), seed, words))
    with pytest.raises(MapFull, match="collision"):
        tb.dp.put_flow(second, m, [DpOutput(3)])
    assert tb.dp.put_flows([(second, m, [DpOutput(3)])])[0].__class__ is MapFull
    assert tb.dp.n_flows == 1 and [f.key for f in tb.dp.dump_flows()] == [first.masked(m)]
    before = tb.stats()
    assert tb.run(udp(dport=1)).verdict == XDP_REDIRECT
    assert tb.run(udp(dport=2)).verdict == XDP_DROP  # a miss (no upcall socket here: counted lost)
    d = tb.stats().delta(before)
    assert (d.megaflow_hits, d.lost) == (1, 1)
    monkeypatch.undo()
    # the kernel found it where Python computes the C hash of the masked key to be
    [mid] = [f.mask_id for f in tb.dp.dump_flows()]
    b, tag = dpif.mf_place(dpif.mf_key_bytes(mid, first.masked(m)), tb.dp.hash_seed, tb.dp.config.n_buckets,
                           mask_words(bytes(m)))
    assert bucket(tb, b) == [(tag, idx)]
    assert tb.dp.del_flow(first, m) and tb.dp.n_flows == 0
    assert bucket(tb, b) == [] and tb.dp.reader.bucket_ways() == []


def test_a_bucket_holds_eight_megaflows_and_refuses_a_ninth(tb: Bench) -> None:
    # nine source addresses whose megaflows share one bucket of mf_buckets (found by the hash Python shares with C)
    m = mask_for("in_port", "nw_src")
    srcs = [0x0A000001 + i for i in range(1 << 20)]  # 10.0.0.1 and on

    def frame(src: int) -> bytes:
        return udp(src=str(ipaddress.IPv4Address(src)))

    tb.dp.put_flow(parse(frame(srcs[0]), 1), m, [DpOutput(2)])
    [mid] = [f.mask_id for f in tb.dp.dump_flows()]
    assert build(in_port=1, nw_src=srcs[0]).masked(m) == parse(frame(srcs[0]), 1).masked(m)

    def bucket_of(src: int) -> int:
        masked = build(in_port=1, nw_src=src).masked(m)
        return dpif.mf_place(dpif.mf_key_bytes(mid, masked), tb.dp.hash_seed, tb.dp.config.n_buckets,
                             mask_words(bytes(m)))[0]

    b = bucket_of(srcs[0])
    same = [srcs[0]]
    for src in srcs[1:]:
        if len(same) == 9:
            break
        if bucket_of(src) == b:
            same.append(src)
    assert len(same) == 9
    for src in same[1:8]:
        tb.dp.put_flow(parse(frame(src), 1), m, [DpOutput(2)])
    with pytest.raises(MapFull, match="full"):
        tb.dp.put_flow(parse(frame(same[8]), 1), m, [DpOutput(2)])
    assert len(bucket(tb, b)) == 8 and tb.dp.n_flows == 8 and tb.dp.reader.n_flows() == 8
    tb.dp.set_emc_insert_inv_prob(0)  # every packet below is a megaflow hit or a miss, none an EMC hit
    before = tb.stats()
    for src in same:
        assert tb.run(frame(src)).verdict == (XDP_REDIRECT if src != same[8] else XDP_DROP)
    d = tb.stats().delta(before)
    assert (d.megaflow_hits, d.lost) == (8, 1)  # each of the eight ways found, the ninth a miss
    # one leaves: the ninth goes in (a batch: the bucket is written once), in the way it left
    assert tb.dp.del_flow(parse(frame(same[3]), 1), m)
    assert isinstance(tb.dp.put_flows([(parse(frame(same[8]), 1), m, [DpOutput(2)])])[0], int)
    assert len(bucket(tb, b)) == 8
    before = tb.stats()
    assert tb.run(frame(same[8])).verdict == XDP_REDIRECT and tb.run(frame(same[3])).verdict == XDP_DROP
    assert tb.stats().delta(before).megaflow_hits == 1


def test_ingress_ports_whose_ifindexes_share_a_slot(tb: Bench) -> None:
    # dp_port_slots holds one port per ifindex % 1024 (the lowest ifindex); the other is found in dp_ports
    taken = {i & 1023 for i in tb.ifindex.values()}
    a, b = unique("xsq"), unique("xsr")
    base = next(x for x in range(300_000 + os.getpid() % 1000 * 2048, 2**30, 2048)
                if x & 1023 not in taken and sh(f"ip link add {a} index {x} type veth peer name {b} index {x + 1024}",
                                                check=False).returncode == 0)
    try:
        for d in (a, b):
            sh(f"sysctl -qw net.ipv6.conf.{d}.disable_ipv6=1")
            sh(f"ip link set {d} up")
        tb.dp.add_port(a, 4)
        tb.dp.add_port(b, 5)
        slot = tb.dp.bpf["dp_port_slots"][ctypes.c_uint32(base & 1023)]
        assert (slot.ifindex, slot.port_no) == (base, 4)
        tb.dp.put_flow(parse(udp(), 5), mask_for("in_port"), [DpOutput(2)])
        before = {n: tb.dp.port_stats(n).rx_packets for n in (4, 5)}
        assert progrun.run_xdp(tb.dp.emc_prog_fd, udp(), base + 1024).verdict == XDP_REDIRECT
        assert progrun.run_xdp(tb.dp.emc_prog_fd, udp(), base).verdict == XDP_DROP  # port 4: no megaflow, lost
        assert {n: tb.dp.port_stats(n).rx_packets - before[n] for n in (4, 5)} == {4: 1, 5: 1}
        tb.dp.del_port(4)  # the slot passes to port 5; port 4's ifindex is no port any more
        slot = tb.dp.bpf["dp_port_slots"][ctypes.c_uint32(base & 1023)]
        assert (slot.ifindex, slot.port_no) == (base + 1024, 5)
        d0 = tb.stats()
        assert progrun.run_xdp(tb.dp.emc_prog_fd, udp(), base + 1024).verdict == XDP_REDIRECT
        assert progrun.run_xdp(tb.dp.emc_prog_fd, udp(), base).verdict == XDP_DROP
        d = tb.stats().delta(d0)
        assert d.drops["unknown_ingress"] == 1 and d.megaflow_hits + d.emc_hits == 1
        assert d.lost == 1 and d.packets == 2  # counted in the scratch though the packet never got a port
        tb.dp.del_port(5)
        assert tb.dp.bpf["dp_port_slots"][ctypes.c_uint32(base & 1023)].ifindex == 0
    finally:
        for n in (4, 5):
            if n in tb.dp.ports:
                tb.dp.del_port(n)
        sh(f"ip link del {a}", check=False)


def test_pinned_maps_reopen_in_another_datapath(tb: Bench) -> None:
    key = parse(udp(), 1)
    tb.dp.put_flow(key, mask_for("in_port", "dl_dst"), [DpSetIpv4Dst("10.0.0.3"), DpOutput(2), DpOutput(3)])
    tb.dp.put_flow(key, mask_for("tp_dst"), [DpDrop()])
    tb.run(udp())
    again = Datapath(tb.dp.name, CONFIG)
    try:
        assert again.pin_dir == tb.dp.pin_dir
        mine = sorted((f.match(), str(f.actions), f.packets) for f in tb.dp.dump_flows())
        theirs = sorted((f.match(), str(f.actions), f.packets) for f in again.dump_flows())
        assert mine == theirs and len(mine) == 2
        assert again.n_masks == 2 and again.map_usage()["dp_groups"][0] == 1
        assert again.stats().packets == tb.stats().packets
    finally:
        again.close()  # no unpin: the first datapath keeps its maps
    assert tb.run(udp()).verdict == XDP_REDIRECT


def test_attaching_to_a_missing_interface_names_it(tb: Bench) -> None:
    with pytest.raises(DatapathError, match="no interface named 'nosuchif0'"):
        tb.dp.add_port("nosuchif0")


def test_generic_mode_and_clean_detach(tb: Bench, net: Net) -> None:
    a, _ = net.veth(quiet=True)
    port = tb.dp.add_port(a, 7, mode="generic")
    assert (port.mode, xdp_mode(a)) == ("generic", "generic")
    assert any(p.port_no == 7 and p.name == a for p in tb.dp.attached_ports())
    with pytest.raises(DatapathError, match="already a port"):
        tb.dp.add_port(a, 8)
    tb.dp.del_port(7)
    assert xdp_mode(a) == "none"
    assert all(p.port_no != 7 for p in tb.dp.attached_ports())
    with pytest.raises(DatapathError, match="bad XDP mode"):
        tb.dp.add_port(a, 7, mode="turbo")


def test_native_ports_detach_on_close(net: Net) -> None:
    a, _ = net.veth(quiet=True)
    dp = Datapath(f"xsclose{os.getpid()}", DatapathConfig(max_flows=1024))
    try:
        assert dp.add_port(a).mode == "native"
        assert xdp_mode(a) == "native"
    finally:
        dp.close(unpin=True)
    assert xdp_mode(a) == "none"
    assert not dp.pin_dir.exists()


def test_sources_without_the_maps_this_code_uses_are_a_clear_error_and_leave_no_pins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # another build's fast path (XDPSWITCH_XDP_DIR) whose maps this code does not know: here mf_buckets renamed
    src = tmp_path / "xdp"
    shutil.copytree(Path(xdp.__file__).parent, src, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("dp_maps.h", "megaflow.c"):
        (src / f).write_text((src / f).read_text().replace("mf_buckets", "mf_buckets_v2"))
    monkeypatch.setenv("XDPSWITCH_XDP_DIR", str(src))
    name = unique("xsmaps")
    with pytest.raises(DatapathError, match="does not have the maps this code uses"):
        Datapath(name, DatapathConfig(max_flows=1024))
    assert not (PIN_ROOT / name).exists()


def test_batched_stats_dump_agrees_with_single_reads(tb: Bench) -> None:
    """flow_stats_all (BPF_MAP_LOOKUP_BATCH, the revalidator's dump) reads what one-by-one reads read."""
    idxs = []
    for port in range(100, 140):
        frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP() / UDP(dport=port) / b"x")
        idxs.append(tb.dp.put_flow(parse(frame, 1), mask_for("in_port", "dl_type", "nw_proto", "tp_dst"), [DpDrop()]))
        for _ in range(port % 5):
            tb.run(frame)
    batched = tb.dp.reader.flow_stats_all(max(idxs) + 1, chunk=16)  # several batches
    full = tb.dp.flow_stats_all()  # what the revalidator reads
    assert {i: full[i] for i in idxs} == {i: batched[i] for i in idxs}
    assert {i: batched[i] for i in idxs} == {i: tb.dp.flow_stats(i) for i in idxs}
    assert [batched[i][0] for i in idxs] == [p % 5 for p in range(100, 140)]


def test_a_batch_of_puts_is_what_one_put_at_a_time_makes(tb: Bench) -> None:
    """put_flows (an upcall batch's installs, with batched map writes) leaves the datapath as put_flow one at
    a time would: the same megaflows and actions; a megaflow twice in one batch replaces itself; an item the
    fast path cannot run fails alone."""
    m = mask_for("in_port", "tp_dst")
    items = [(parse(udp(dport=1000 + i), 1), m, [DpOutput(2)]) for i in range(40)]
    items.insert(10, (parse(udp(dport=5000), 1), m, [DpOutput(2), DpSetEthDst("02:00:00:00:00:09")]))  # not in XDP
    items.append((parse(udp(dport=1003), 1), m, [DpOutput(3)]))  # the same megaflow as item 3: replaces it
    results = tb.dp.put_flows(items)
    assert isinstance(results[10], ActionError) and all(isinstance(r, int) for i, r in enumerate(results) if i != 10)
    flows = {f.key.tp_dst: [str(a) for a in f.actions] for f in tb.dp.dump_flows()}
    assert sorted(flows) == list(range(1000, 1040)) and tb.dp.n_flows == 40
    assert flows[1003] == ["3"] and flows[1004] == ["2"]
    assert tb.run(udp(dport=1004)).verdict == XDP_REDIRECT and tb.run(udp(dport=5000)).verdict == XDP_DROP
    assert all(tb.dp.del_flow(k, mk) for k, mk, _a in items[:10] + items[11:-1])
    assert tb.dp.n_flows == 0 and tb.dp.n_masks == 0
