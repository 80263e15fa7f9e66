"""
``compare.py --check-generator``: does the load generator limit any figure?

Every case runs ``--rounds`` times with the compiled generator as it is and
as many times with twice its CPU weight (``nice -3``: the kernel's
scheduler weight goes from 1024 to 1991), the two alternating. On a machine
where the generator and the brokers share the CPUs, a generator short of CPU
would go faster with the larger share, and its figures would move. A figure
that moves by no more than its run-to-run noise (the spread of the runs as
they are) was not limited by the generator. The compiled generator also
reports its busiest thread's CPU share: a thread near a whole CPU would be
a bottleneck however the CPUs are shared.
"""

from __future__ import annotations

import statistics

#: The niceness that doubles the generator's CPU weight.
BOOST = -3

#: The smallest noise allowed for: two runs of the same thing differ this much.
NOISE_FLOOR = 0.05


def report(results: list[dict], figures: dict[str, tuple[str, bool]]) -> int:
    """
    Print, per case and broker, the median figure with the generator as it
    is and with twice its weight, the change, the noise and the verdict.
    ``figures`` maps a scenario to (its figure's key, higher is better).
    Return 0 when no figure moved beyond its noise, 1 otherwise.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["case"], r["broker"]), []).append(r)
    print(
        f"{'scenario':<34} {'broker':<9} {'as is':>10} {'x2 weight':>10} "
        f"{'change':>8} {'noise':>7} {'busiest':>8}  verdict"
    )
    failed = 0
    for (case, broker), runs in groups.items():
        sc = runs[0]["scenario"]
        if sc not in figures or sc == "connections":
            continue
        key, _ = figures[sc]
        base = [r[key] for r in runs if r.get("ok") and r["generator_nice"] == 0 and key in r]
        boosted = [r[key] for r in runs if r.get("ok") and r["generator_nice"] != 0 and key in r]
        share = max((r.get("gen_busiest_thread_share", 0.0) for r in runs), default=0.0)
        if not base or not boosted:
            dashes = " ".join(f"{'-':>{w}}" for w in (10, 10, 8, 7, 8))
            print(f"{case:<34} {broker:<9} {dashes}  failed runs")
            failed += 1
            continue
        med_base, med_boost = statistics.median(base), statistics.median(boosted)
        change = med_boost / med_base - 1 if med_base else float("nan")
        spread = (max(base) - min(base)) / med_base if med_base and len(base) > 1 else 0.0
        noise = max(spread, NOISE_FLOOR)
        ok = abs(change) <= noise and share < 0.9
        failed += not ok
        verdict = "ok" if ok else ("busy thread" if share >= 0.9 else "MOVED")
        print(
            f"{case:<34} {broker:<9} {med_base:>10.1f} {med_boost:>10.1f} "
            f"{change:>+8.1%} {noise:>7.1%} {share:>8.0%}  {verdict}"
        )
    print(
        "\nas is / x2 weight: medians of the figure (msgs/s, or ms for latency) with the "
        "generator as it is and with twice its CPU weight; change: of the second over the "
        "first; noise: the spread of the first (at least 5%); busiest: the generator's "
        "busiest thread, as a share of one CPU over the run (max). ok = the figure moved "
        "within its noise and no generator thread was near a whole CPU."
    )
    return 1 if failed else 0
