"""
The benchmark scripts run end to end, in miniature.

Speed is not asserted here (see benchmarks/README.md for the figures): these
tests only check that the documented commands still work against the
repository's broker, that every scenario reports its figures, and that the
load generator's exactly-once checks pass. Other brokers (RabbitMQ,
ActiveMQ) are not started: they are slow to start and may be absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TWISTD = str(Path(sys.executable).with_name("twistd"))


def run_script(*args: str, timeout: float = 240, codes=(0,)) -> tuple[str, list[dict]]:
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode in codes, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    records = [json.loads(line[5:]) for line in lines if line.startswith("JSON ")]
    return proc.stdout, records


def _needs_cargo() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import compiledgen

    if not compiledgen.available():
        pytest.skip("the compiled generator needs Rust's cargo (https://rustup.rs)")


@pytest.mark.parametrize("generator", ["python", "stompgen"])
def test_compare_runs_every_scenario_against_stomptw(generator):
    if generator == "stompgen":
        _needs_cargo()
    out, records = run_script(
        "benchmarks/compare.py",
        "--generator",
        generator,
        "--brokers",
        "stomptw",
        "--twistd",
        TWISTD,
        "--rounds",
        "1",
        "--messages",
        "300",
        "--sizes",
        "100,4096",
        "--subscribers",
        "3",
        "--latency-seconds",
        "0.5",
        "--connections",
        "30",
        "--conn-workers",
        "2",
    )
    runs = [r for r in records if "case" in r]
    assert {r["scenario"] for r in runs} == {
        "queue",
        "topic",
        "individual",
        "persistent",
        "backlog",
        "latency",
        "connections",
    }
    # 2 transports x (4 queue + 2 topic + 2 individual + 2 persistent + 2 backlog
    # + 2 latency + 1 connections)
    assert len(runs) == 30
    assert all(r["ok"] and r["broker"] == "stomptw" for r in runs), runs
    # The workers' CPU is summed to the microsecond: not lost to 10 ms ticks in runs this short.
    assert all(r["gen_cpu_s"] > 0 for r in runs), runs
    by_case = {r["case"]: r for r in runs}
    assert by_case["queue 4->4 ws 4096B"]["lost"] == 0
    assert by_case["topic 1->3 tcp 100B"]["received"] == 900
    # Every persistent SEND was receipted; a backlog is stored before it drains.
    for transport in ("tcp", "ws"):
        live = by_case[f"persistent 1->1 {transport} 4096B"]
        assert live["receipts"] == 300 and live["received"] == 300
        stored = by_case[f"persistent backlog {transport} 100B"]
        assert stored["receipts"] == 300 and stored["received"] == 300
        assert stored["stored_per_s"] > 0 and stored["drain_per_s"] > 0
        assert stored["receipt_seconds"] < stored["seconds"]
    for transport in ("tcp", "ws"):
        idle = by_case[f"idle {transport} connections x30"]
        assert idle["failures"] == 0 and idle["opened"] == 30
    assert "queue 1->1 tcp 100B" in out and "per broker (medians over rounds)" in out
    assert f"generator: {generator}" in out
    # Latency rows: p99, p99.9 and the maximum.
    rows = [
        line.split("100B")[1].split()[:2]
        for line in out.splitlines()
        if line.startswith("latency 10k/s tcp 100B")
    ]
    assert rows == [["p99", "ms"], ["p99.9", "ms"], ["max", "ms"]], out
    if generator == "stompgen":
        # The compiled generator reports each thread's CPU beside its total.
        assert all(r["gen_threads"] for r in runs if r["scenario"] != "connections"), runs
        assert "busiest generator thread" in out


def test_latency_realtime_runs_the_generator_threads_sched_fifo():
    _needs_cargo()
    if os.geteuid() != 0:
        pytest.skip("SCHED_FIFO needs root (or CAP_SYS_NICE)")
    out, records = run_script(
        "benchmarks/compare.py",
        "--generator",
        "stompgen",
        "--latency-realtime",
        "--brokers",
        "stomptw",
        "--twistd",
        TWISTD,
        "--rounds",
        "1",
        "--scenarios",
        "latency",
        "--transports",
        "tcp",
        "--latency-seconds",
        "0.5",
    )
    runs = [r for r in records if "case" in r]
    assert [r["rate"] for r in runs] == [1000, 10000], runs
    assert all(r["ok"] and not r["error"] for r in runs), runs


def test_check_generator_compares_each_figure_with_twice_the_weight():
    _needs_cargo()
    out, records = run_script(
        "benchmarks/compare.py",
        "--generator",
        "stompgen",
        "--check-generator",
        "--brokers",
        "stomptw",
        "--twistd",
        TWISTD,
        "--rounds",
        "2",
        "--messages",
        "2000",
        "--sizes",
        "100",
        "--scenarios",
        "queue,topic",
        "--transports",
        "tcp",
        "--subscribers",
        "3",
        codes=(0, 1),  # 1: some figure moved, which runs this short may well do
    )
    runs = [r for r in records if "case" in r]
    # Each case and round: once as it is, once with twice the CPU weight.
    assert sorted(r["generator_nice"] for r in runs) == [-3] * 6 + [0] * 6, runs
    rows = [line for line in out.splitlines() if line.startswith(("queue ", "topic "))]
    assert len(rows) == 3, out
    # At this scale the verdict is noise; what matters is that each row has one.
    assert all(row.rstrip().endswith(("ok", "MOVED", "busy thread")) for row in rows), out


def test_compare_says_when_a_broker_is_not_installed(tmp_path):
    out, records = run_script(
        "benchmarks/compare.py",
        "--brokers",
        "stomptw,rabbitmq",
        "--rabbitmq-server",
        str(tmp_path / "no-such-rabbitmq-server"),
        "--twistd",
        TWISTD,
        "--rounds",
        "1",
        "--messages",
        "100",
        "--sizes",
        "100",
        "--scenarios",
        "queue",
        "--transports",
        "tcp",
    )
    assert "rabbitmq UNAVAILABLE" in out
    assert [r["broker"] for r in records if "case" in r] == ["stomptw", "stomptw"]


@pytest.mark.parametrize("scenario", ["memory/np/individual", "sqlite-full/p-each/auto"])
def test_persistence_benchmark_runs(scenario):
    out, records = run_script(
        "benchmarks/persistence.py",
        "--twistd",
        TWISTD,
        "--messages",
        "300",
        "--sizes",
        "100",
        "--scenarios",
        scenario,
    )
    (run,) = [r for r in records if "scenario" in r]
    assert run["ok"] and run["messages"] == 300, run


def test_persistence_stalled_consumer_runs():
    out, records = run_script(
        "benchmarks/persistence.py",
        "--twistd",
        TWISTD,
        "--scenarios",
        "stalled",
        "--stall-mb",
        "20",
    )
    (run,) = [r for r in records if r.get("scenario") == "stalled"]
    # 20 MB is under the default 64 MiB queue limit: all of it is accepted.
    assert run["accepted_mb"] == 20.0 and not run["throttled"], run
    assert run["peak_rss_mib"] >= run["baseline_rss_mib"] > 0, run
    assert "stalled (round 1, --store memory): offered 20 MB" in out


def test_heartbeats_holds_beating_sessions_and_reports_each_checkout():
    out, _ = run_script(
        "benchmarks/heartbeats.py",
        "--twistd",
        TWISTD,
        "--connections",
        "40",
        "--workers",
        "2",
        "--interval-ms",
        "200",
        "--connect-seconds",
        "3",
        "--seconds",
        "2",
        "--code",
        str(REPO),
    )
    header, row = out.splitlines()[-2:]
    assert header.split()[:3] == ["code", "conns", "cpu"]
    fields = row.split()
    assert fields[1] == "40"  # every session opened
    beats_in, beats_out, gap, closed = (float(x) for x in fields[5:9])
    assert beats_in > 0 and beats_out > 0  # beats flowed both ways
    assert closed == 0  # the broker timed nobody out


def test_logins_benchmark_runs_bursts_against_a_users_file():
    out, _ = run_script(
        "benchmarks/logins.py",
        "--twistd",
        TWISTD,
        "--rounds",
        "1",
        "--seconds",
        "3",
        "--clients",
        "5",
        "--every",
        "1",
        "--rate",
        "200",
        "--json",
    )
    rows = json.loads(out[out.index("[") :])
    quiet, busy = rows
    assert quiet["bursts"] == 0 and busy["bursts"] >= 1, rows
    assert quiet["lost"] == busy["lost"] == 0, rows
    assert busy["logins_per_s"] > 0 and busy["burst_s"] > 0, rows
    assert "median p99: quiet" in out


def test_auth_cost_benchmark_reports_each_mode():
    out, _ = run_script("benchmarks/auth_cost.py", "--rounds", "1", "--messages", "2000")
    for mode in ("anonymous", "login", "permissions"):
        assert any(line.startswith(mode) and " ns " in line for line in out.splitlines()), out


def test_streams_benchmark_reports_publish_replay_and_catch_up():
    out, _ = run_script(
        "benchmarks/streams.py",
        "--messages",
        "3000",
        "--behind",
        "1000",
        "--stores",
        "memory",
        "--twistd",
        TWISTD,
    )
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [row[1] for row in rows] == ["publish", "replay", "catch-up"], out
    publish, replay, catch_up = rows
    assert publish[2] == replay[2] == "3000", out  # every message read back
    assert int(catch_up[-5]) >= 1000, out


def test_app_publish_benchmark_reports_the_api_and_a_stomp_producer():
    out, _ = run_script("benchmarks/app_publish.py", "--messages", "500", "--subscribers", "4")
    rows = out.splitlines()[1:]
    assert rows[0].startswith("application API") and rows[1].startswith("STOMP over TCP"), out
    for row in rows:
        assert " 500       2000 " in row, out  # 500 messages, 4 subscribers: all delivered


def test_live_fuzz_benchmark_keeps_the_broker_serving():
    out, _ = run_script(
        "benchmarks/live_fuzz.py",
        "--frames",
        "3000",
        "--good",
        "300",
        "--seconds",
        "60",
        "--max-rss-growth",
        "100",
        "--settle",
        "1",
        "--twistd",
        TWISTD,
    )
    assert "well-behaved: 300/300 delivered, 0 duplicate(s), 0 lost" in out, out
    assert "broker alive: True; fresh client served: True; tracebacks in log: 0" in out, out


def test_log_bytes_benchmark_reports_bytes_per_connection():
    out, _ = run_script("benchmarks/log_bytes.py", "--connections", "50", "--twistd", TWISTD)
    assert out.startswith("defaults: 50 connections in ") and "bytes per connection" in out, out


def test_soak_benchmark_holds_websocket_sessions_and_loses_nothing():
    # A few seconds of the 10-minute soak: the mechanics, not the figures (a
    # slope over 5 s is noise, hence the loose --max-rss-slope).
    out, records = run_script(
        "benchmarks/soak.py",
        "--twistd",
        TWISTD,
        "--connections",
        "40",
        "--workers",
        "2",
        "--seconds",
        "5",
        "--rate",
        "50",
        "--subscribers",
        "2",
        "--heartbeat-ms",
        "2000",
        "--sample-every",
        "2",
        "--drain-seconds",
        "10",
        "--max-rss-slope",
        "1000",
    )
    (soak,) = records
    assert soak["ok"] and soak["opened"] == 40, out[-2000:]
    assert soak["disconnects"] == 0 and soak["heartbeat_timeouts_broker_metrics"] == 0
    assert soak["queue_lost"] == soak["queue_duplicates"] == soak["queue_left"] == 0
    assert soak["topic_lost"] == 0


def test_paging_benchmark_drains_a_backlog_in_order():
    out, _ = run_script(
        "benchmarks/paging.py", "--mib", "8", "--window", "100", "--restart", "--twistd", TWISTD
    )
    assert '"lost": 0' in out and '"out_of_order": 0' in out and out.rstrip().endswith("PASS"), out


def test_ws_compression_benchmark_compares_bytes_and_cpu():
    out, _ = run_script(
        "benchmarks/ws_compression.py",
        "--messages",
        "300",
        "--subscribers",
        "3",
        "--twistd",
        TWISTD,
    )
    rows = [json.loads(line) for line in out.splitlines()]
    off, on = rows[0], rows[1]
    assert (off["compression"], off["negotiated"]) == ("off", False), out
    assert (on["compression"], on["negotiated"]) == ("on", True), out
    assert off["deliveries"] == on["deliveries"] == 900, out
    # Every subscriber got and inflated the same STOMP bytes, in fewer wire bytes.
    assert on["stomp_bytes_per_delivery"] == off["stomp_bytes_per_delivery"], out
    assert on["wire_bytes_per_delivery"] < off["wire_bytes_per_delivery"] / 2, out
    designs = {row["design"] for row in rows[2:]}
    assert "shared, no context (stomptw)" in designs, out


def test_cluster_benchmark_runs_one_node_and_the_cluster_side_by_side():
    _needs_cargo()
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    out, records = run_script(
        "benchmarks/cluster.py",
        "--messages",
        "300",
        "--rounds",
        "1",
        "--latency-seconds",
        "0.5",
        "--twistd",
        TWISTD,
    )
    setups = {"single", "cluster-1", "cluster-2"}
    assert {r["setup"] for r in records} == setups, out
    assert len(records) == 4 * len(setups), out
    for r in records:
        assert r.get("ok", True) and r["lost"] == 0 and not r.get("duplicates"), r
    for r in records:
        # Redis's CPU is counted for the cluster's rows only (a few runs of
        # 300 messages may use less than a clock tick of it).
        assert (r["redis_cpu_s"] >= 0) if r["setup"] != "single" else r["redis_cpu_s"] == 0, r
    assert "vs single" in out and "redis ms/1k" in out, out


def test_compiled_benchmark_measures_a_compiled_copy_beside_the_pure_code():
    pytest.importorskip("Cython", reason="benchmarks/compiled.py needs Cython (pip install Cython)")
    if shutil.which("cc") is None:
        pytest.skip("benchmarks/compiled.py needs a C compiler")
    out, _ = run_script(
        "benchmarks/compiled.py", "--modules", "frame", "--runs", "1", "--micro-only"
    )
    pure, compiled = (line for line in out.splitlines() if line.startswith("run 1 "))
    assert "pure" in pure and pure.endswith("stomptw/frame.py)"), pure
    assert "compiled" in compiled and compiled.endswith(".so)"), compiled
    for line in (pure, compiled):
        assert float(line.split("parse")[1].split()[0]) > 0


@pytest.mark.parametrize("transport", ["ws", "tcp"])
def test_idle_memory_lists_the_heap_per_session_by_site(transport):
    out, _ = run_script(
        "benchmarks/idle_memory.py", "--sessions", "20", "--transport", transport, "--top", "5"
    )
    total, *sites = out.splitlines()
    assert total.startswith(f"{transport}: ") and "KiB of heap per session over 20" in total
    assert float(total.split()[1]) > 0
    assert len(sites) == 5 and all(" B " in line for line in sites)
