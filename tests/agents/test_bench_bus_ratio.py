"""``emrshare bench bus``'s channel/signed figure: rounds alternate which mode goes
first, and the figure is the median of the rounds' own ratios (a fake scenario with
known costs stands in for the runs)."""

import trio

from agents.bench import bus as bench


def test_rounds_alternate_the_first_mode_and_the_figure_is_the_median_of_round_ratios(monkeypatch):
    calls = []
    # per round: (channel CPU us, signed CPU us); wall doubles it, as on a loaded machine
    costs = iter([(60, 180), (200, 210), (50, 160), (70, 200), (65, 130), (80, 240)])  # in call order

    async def fake(mode, size, pattern, count):
        calls.append(mode)
        if len(calls) % 2 == 1:  # the first run of a round draws the round's costs
            fake.current = next(costs)
        channel, signed = fake.current
        cost = channel if mode == "channel" else signed
        return {"us_per_op": 2.0 * cost, "cpu_us_per_op": float(cost)}

    monkeypatch.setattr(bench, "_scenario", fake)
    rounds = trio.run(bench._interleaved, 5, 10)
    assert calls == ["channel", "signed", "signed", "channel", "channel", "signed", "signed", "channel",
                     "channel", "signed"]
    assert [r["first"] for r in rounds] == ["channel", "signed", "channel", "signed", "channel"]
    assert [r["cpu_ratio"] for r in rounds] == [3.0, 1.05, 3.2, round(200 / 70, 3), 2.0]
    summary = bench.ratio_summary(rounds)
    assert summary["cpu_ratio"] == round(200 / 70, 2)  # the median round's, not a ratio of bests
    assert summary["ratio"] == summary["cpu_ratio"]
    assert summary["channel_cpu_us"] == 65.0 and summary["signed_cpu_us"] == 180.0
