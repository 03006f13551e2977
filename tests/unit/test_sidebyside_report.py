"""bench.sidebyside's report: the best rounds, the medians and the paired ratio (each round's bare redirect over the
target's), which the README and issue 13's figures quote."""

from bench.sidebyside import report


def run(ns: float, mpps: float = 1.0) -> dict[str, float]:
    return {"mpps": mpps, "ns_per_packet": ns, "delivered": 90, "sent": 100}


def test_best_median_and_paired_ratios() -> None:
    # round 2 is slow for both (the VM's drift): paired, it is an ordinary round; the best rounds pair round 1's
    # bare redirect with round 3's switch
    results = {"bare": {1: [run(200), run(300), run(220)]},
               "xdpswitch": {1: [run(260), run(330), run(240)]}}
    rows = {r["target"]: r for r in report(results, (1,))}
    sw = rows["xdpswitch"]
    assert sw["ns_per_packet"] == 240 and sw["bare_ns_vs_ns"] == round(200 / 240, 2)
    assert sw["ns_per_packet_median"] == 260 and sw["bare_ns_vs_ns_median"] == round(220 / 260, 2)
    assert sw["bare_ns_vs_ns_paired"] == round(sorted([200 / 260, 300 / 330, 220 / 240])[1], 2)
    assert rows["bare"]["bare_ns_vs_ns_paired"] == 1.0


def test_no_paired_ratio_when_the_rounds_do_not_line_up() -> None:
    # a target that failed after its first round has fewer rounds than the bare redirect: no pairs to take
    results = {"bare": {1: [run(200), run(210)]}, "xdpswitch": {1: [run(250)]}}
    sw = next(r for r in report(results, (1,)) if r["target"] == "xdpswitch")
    assert sw["bare_ns_vs_ns_paired"] is None and sw["bare_ns_vs_ns"] == 0.8
