"""
The Prometheus rendering (:mod:`stomptw.metrics`) on its own: every family
with its HELP and TYPE, what traffic does to the counters, the bound on
per-destination series, and label values escaped. Parsed back with
prometheus_client's parser. What the admin API serves at ``/metrics`` over
HTTP is in test_admin.py.
"""

from __future__ import annotations

from clients import metric_samples

from stomptw import __version__
from stomptw.broker import Broker
from stomptw.metrics import render_metrics
from stomptw.testing import BrokerOnClock


def value(found, name: str, **labels) -> float:
    return found[name][tuple(sorted(labels.items()))]


def test_an_idle_broker_renders_every_family_with_help_and_type():
    text = render_metrics(Broker())
    assert text.endswith("\n")
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(names) == len(set(names))
    for name in names:
        assert f"# HELP {name} " in text
    found = metric_samples(text)
    assert value(found, "stomptw_info", version=__version__) == 1
    assert value(found, "stomptw_connections", transport="tcp") == 0
    assert value(found, "stomptw_messages_total", event="published") == 0
    assert value(found, "stomptw_destinations", kind="queue") == 0
    assert "stomptw_queue_messages" not in found  # a family without samples
    assert "# TYPE stomptw_queue_messages gauge" in text
    assert value(found, "stomptw_destinations_omitted") == 0


def test_traffic_moves_the_counters():
    env = BrokerOnClock()
    consumer = env.connect()
    consumer.send("SUBSCRIBE", destination="/queue/work", id="1", ack="client-individual")
    producer = env.connect()
    for body in (b"a", b"b"):
        producer.send("SEND", body, destination="/queue/work")
    producer.send("FLY")  # unknown: counted as OTHER, then ERROR
    found = metric_samples(render_metrics(env.broker))
    assert value(found, "stomptw_connections", transport="test") == 2
    assert value(found, "stomptw_frames_received_total", command="CONNECT") == 2
    assert value(found, "stomptw_frames_received_total", command="SEND") == 2
    assert value(found, "stomptw_frames_received_total", command="OTHER") == 1
    assert value(found, "stomptw_frames_sent_total", command="MESSAGE") == 2
    assert value(found, "stomptw_frames_sent_total", command="ERROR") == 1
    assert value(found, "stomptw_messages_total", event="published") == 2
    assert value(found, "stomptw_messages_total", event="delivered") == 2
    assert value(found, "stomptw_messages_queued") == 2
    assert value(found, "stomptw_queue_messages", destination="/queue/work") == 2
    assert (
        value(found, "stomptw_destination_consumers", destination="/queue/work", kind="queue") == 1
    )
    assert value(found, "stomptw_bytes_received_total") > 0
    assert value(found, "stomptw_bytes_sent_total") > 0


def test_only_the_largest_destinations_get_series_of_their_own():
    broker = Broker()
    for i in range(5):
        for _ in range(i + 1):
            broker.send(f"/queue/q{i}", {}, b"x")
    found = metric_samples(render_metrics(broker, max_destinations=2))
    assert found["stomptw_queue_messages"] == {
        (("destination", "/queue/q4"),): 5,
        (("destination", "/queue/q3"),): 4,
    }
    assert len(found["stomptw_queue_bytes"]) == 2
    assert value(found, "stomptw_destinations_omitted") == 3
    # The totals still count every destination.
    assert value(found, "stomptw_destinations", kind="queue") == 5
    assert value(found, "stomptw_messages_queued") == 15


def test_label_values_are_escaped():
    broker = Broker()
    name = '/queue/a "b" \\ c\nd'
    broker.send(name, {}, b"x")
    text = render_metrics(broker)
    assert 'destination="/queue/a \\"b\\" \\\\ c\\nd"' in text
    assert value(metric_samples(text), "stomptw_queue_messages", destination=name) == 1
