"""
The Grafana dashboard in ``contrib/grafana/stomptw.json`` imports cleanly and
queries only what the broker exports.

Its structure is checked as Grafana's import needs it (valid JSON, a
``${DS_PROMETHEUS}`` data source input, unique panel ids, every panel with a
data source and a query). Then every PromQL expression (panel queries and
template variable queries) is checked against a REAL ``/metrics`` scrape of a
real broker started with the options that make every family appear (``--auth``
with a users file, the SQLite store for the disk alarm's gauges, the memory
alarm on by default), after real STOMP clients made some traffic so that the
per-destination series exist: every metric name, every label a query matches
on, groups by or shows in a legend, and every literal label value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
import treq
from clients import ClientPool, unique
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.threads import deferToThread

from stomptw.users import User, hash_password, write_users

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "contrib" / "grafana" / "stomptw.json"
LOOPBACK = "tcp:0:interface=127.0.0.1"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
PASSWORD = "grafana-test-pw"

#: Labels Prometheus adds to every series it scrapes; the broker does not.
TARGET_LABELS = {"job", "instance"}
#: Grafana's own variables, usable in any query.
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}

#: A PromQL string literal (double, single or back quotes).
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
#: A metric name of ours: ``stomptw_`` then the rest of the identifier, taken
#: whole (upper case and colons included) so that a misspelt name is seen
#: whole and reported rather than cut short.
METRIC = re.compile(r"(?<![A-Za-z0-9_:])stomptw_[A-Za-z0-9_:]*")
#: A label matcher inside ``{...}``.
MATCHER = re.compile(
    r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")\s*(,|(?=\}))'
)
#: ``by (...)`` / ``without (...)`` of an aggregation.
GROUPING = re.compile(r"\b(by|without)\s*\(([^)]*)\)")
#: A template variable: ``$name``, ``${name}`` or ``${name:format}``.
VARIABLE = re.compile(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)")
#: An aggregation that keeps only its ``by`` labels (topk and bottomk keep all).
AGGREGATION = re.compile(
    r"\b(?:sum|min|max|avg|group|stddev|stdvar|count|count_values|quantile)\s*"
    r"(?:(?:by|without)\s*\([^)]*\)\s*)?\("
)
#: ``label_values(selector, label)`` in a variable query.
LABEL_VALUES = re.compile(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)$", re.S)
#: Suffixes of the series of a histogram or summary family.
SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, those inside rows (collapsed rows hold theirs) included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """``(where, PromQL, legend format)`` for every panel query and variable query."""
    found = []
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel.get('title')!r} query {target.get('refId')}"
            found.append((where, target.get("expr", ""), target.get("legendFormat", "")))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found.append((f"variable {variable['name']!r}", text, ""))
    return found


def strip_strings(expr: str) -> str:
    """``expr`` with every string literal blanked out, at the same offsets."""
    return STRING.sub(lambda m: m.group()[0] + " " * (len(m.group()) - 2) + m.group()[-1], expr)


def metric_names(expr: str) -> list[str]:
    """The stomptw metric names an expression reads (none hide in string literals)."""
    return METRIC.findall(strip_strings(expr))


def selectors(expr: str) -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    """``(metric, [(label, op, value)])`` for every selector of a stomptw metric."""
    for match in METRIC.finditer(strip_strings(expr)):
        name = match.group()
        rest = expr[match.end() :]
        brace = re.match(r"\s*\{", rest)
        matchers: list[tuple[str, str, str]] = []
        if brace:
            pos = brace.end()
            while not re.match(r"\s*\}", rest[pos:]):
                m = MATCHER.match(rest, pos)
                assert m, f"cannot read the label matchers of {name} in {expr!r}"
                matchers.append((m.group(1), m.group(2), json.loads(m.group(3))))
                pos = m.end()
        yield name, matchers


def grouping_labels(expr: str) -> list[str]:
    labels = []
    for _, names in GROUPING.findall(strip_strings(expr)):
        labels += [n.strip() for n in names.split(",") if n.strip()]
    return labels


def balanced(expr: str) -> bool:
    stack = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in strip_strings(expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            if not stack or stack.pop() != pairs[char]:
                return False
    return not stack


def exported_series(text: str) -> dict[str, list[dict[str, str]]]:
    """
    A ``/metrics`` text as series name -> the label sets of its samples. Names
    are the samples' own, so a histogram's ``_bucket``, ``_sum`` and
    ``_count`` series are there as such, and a counter's ``_total``.
    """
    series: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(dict(sample.labels))
    return series


def problems(dashboard: dict, exported: dict[str, list[dict[str, str]]]) -> list[str]:
    """What in the dashboard's queries the broker's ``exported`` series do not have."""
    found = []
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    for where, expr, legend in queries(dashboard):
        names = metric_names(expr)
        if not names:
            found.append(f"{where}: no stomptw metric in {expr!r}")
        for literal in STRING.findall(expr):
            if "stomptw_" in literal:
                found.append(f"{where}: a metric name in a string literal {literal}")
        if not balanced(expr):
            found.append(f"{where}: unbalanced brackets in {expr!r}")
        for a, b in VARIABLE.findall(expr):
            if (a or b) not in variables | BUILTIN_VARIABLES:
                found.append(f"{where}: undefined variable ${a or b}")
        labels_here: set[str] = set(TARGET_LABELS)
        for name in names:
            if name not in exported:
                base = next((name[: -len(s)] for s in SERIES_SUFFIXES if name.endswith(s)), "")
                hint = ""
                if base in exported:
                    hint = f" ({base} is, but it is no histogram or summary)"
                elif base:
                    hint = f" (nor is a histogram or summary {base})"
                found.append(f"{where}: {name} is not exported by the broker{hint}")
                continue
            for labels in exported[name]:
                labels_here |= set(labels)
        for name, matchers in selectors(expr):
            series = exported.get(name)
            if series is None:
                continue  # reported above
            for label, op, value in matchers:
                if label in TARGET_LABELS:
                    continue
                values = {labels[label] for labels in series if label in labels}
                if not values:
                    found.append(f"{where}: {name} has no label {label!r}")
                elif "$" in value or op in ("!=", "!~"):
                    continue
                elif op == "=" and value not in values:
                    found.append(f"{where}: {name} has no {label}={value!r} (only {values})")
                elif op == "=~" and re.fullmatch(r"[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*", value):
                    for alternative in value.split("|"):
                        if alternative not in values:
                            found.append(f"{where}: {name} has no {label}={alternative!r}")
        grouped = grouping_labels(expr)
        label_values = LABEL_VALUES.match(expr.strip())
        if label_values:
            grouped.append(label_values.group(2))
        for label in grouped:
            if label not in labels_here:
                found.append(f"{where}: no metric in {expr!r} has the label {label!r}")
        shown = set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend))
        # After an aggregation only its grouping labels are left.
        bare = strip_strings(expr)
        aggregated = AGGREGATION.search(bare) and "without" not in bare
        visible = set(grouped) if aggregated else labels_here
        for label in sorted(shown - visible):
            found.append(f"{where}: the legend shows {{{{{label}}}}}, which the query drops")
    return found


# -- the dashboard as Grafana imports it ------------------------------------------------


def test_the_dashboard_is_an_importable_grafana_model():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36, "a current Grafana's JSON model"
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard.get("id") is None, "an exported model has no database id"
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    # Every ${DS_...} the model uses is one that the import asks for.
    text = DASHBOARD.read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{(DS_[A-Z_]+)\}", text)) == set(inputs)


def test_every_panel_has_a_unique_id_a_datasource_and_queries():
    dashboard = load_dashboard()
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    declared = {p["id"] for p in dashboard["__requires"] if p["type"] == "panel"}
    taken: dict[tuple[int, int], int] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"panels {taken[(x, y)]} and {panel['id']} overlap"
                taken[(x, y)] = panel["id"]
        if panel["type"] == "row":  # a heading, holding no query of its own
            assert "targets" not in panel, panel["title"]
            continue
        assert panel["type"] in declared, f"{panel['type']} missing from __requires"
        assert panel["title"] and panel.get("description"), panel["id"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == DATASOURCE, variable["name"]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert {"job", "instance", "destination"} <= set(names)


def test_the_query_check_finds_what_a_broker_does_not_export():
    """The check the next test asserts on, on a made-up exposition and dashboard."""
    exposition = "\n".join(
        [
            "# HELP stomptw_messages_total Messages.",
            "# TYPE stomptw_messages_total counter",
            'stomptw_messages_total{event="published"} 3',
            "# HELP stomptw_commit_seconds Commit time.",
            "# TYPE stomptw_commit_seconds histogram",
            'stomptw_commit_seconds_bucket{le="0.1"} 1',
            'stomptw_commit_seconds_bucket{le="+Inf"} 1',
            "stomptw_commit_seconds_sum 0.05",
            "stomptw_commit_seconds_count 1",
            "",
        ]
    )
    exported = exported_series(exposition)

    def check(expr: str, legend: str = "") -> list[str]:
        target = {"refId": "A", "expr": expr, "legendFormat": legend}
        dashboard = {
            "panels": [{"id": 1, "title": "t", "targets": [target]}],
            "templating": {"list": [{"name": "job", "type": "custom"}]},
        }
        return problems(dashboard, exported)

    good = [
        ('sum by (event) (rate(stomptw_messages_total{job=~"$job", event="published"}[5m]))', ""),
        ("histogram_quantile(0.9, sum by (le) (rate(stomptw_commit_seconds_bucket[5m])))", ""),
        ("rate(stomptw_commit_seconds_sum[$__rate_interval])", "{{instance}}"),
        ("sum by (event) (stomptw_messages_total)", "{{event}}"),
    ]
    for expr, legend in good:
        assert check(expr, legend) == [], expr
    bad = {
        "rate(stomptw_messages_totl[5m])": "stomptw_messages_totl is not exported",
        "rate(stomptw_Messages_total[5m])": "stomptw_Messages_total is not exported",
        "stomptw_commit_seconds_total": "stomptw_commit_seconds_total is not exported",
        "stomptw_messages_bucket": "(nor is a histogram or summary stomptw_messages)",
        "stomptw_messages_total_count": "(stomptw_messages_total is, but it is no histogram",
        'stomptw_messages_total{event="publish"}': "has no event='publish'",
        'stomptw_messages_total{event=~"published|acked"}': "has no event='acked'",
        'stomptw_messages_total{kind="queue"}': "has no label 'kind'",
        "sum by (destination) (stomptw_messages_total)": "has the label 'destination'",
        'sum(stomptw_messages_total{job=~"$jobs"})': "undefined variable $jobs",
        "rate(stomptw_messages_total[5m]": "unbalanced",
        'count({__name__="stomptw_messages_total"})': "in a string literal",
        "up": "no stomptw metric",
    }
    for expr, expected in bad.items():
        found = check(expr)
        assert any(expected in p for p in found), (expr, found)
    assert any("the query drops" in p for p in check("sum(stomptw_messages_total)", "{{event}}"))


# -- the dashboard against a real broker ------------------------------------------------


@pytest.fixture
def users_file(tmp_path: Path) -> str:
    path = tmp_path / "users.toml"
    write_users(str(path), [User("alice", hash_password(PASSWORD))])
    return str(path)


@pytest_twisted.ensureDeferred
async def test_every_query_reads_series_a_real_broker_exports(make_broker, tmp_path, users_file):
    running = await make_broker(
        admin_endpoints=[LOOPBACK],
        auth=[f"users:{users_file}"],
        store="sqlite",  # the store's metrics, and the disk alarm's gauges
        data_dir=str(tmp_path / "data"),
        # Both alarms on, so their gauges are there, but out of reach: a full
        # disk or a big test process must not hold the persistent SENDs below.
        disk_free_limit=1,
        memory_high_watermark="1TiB",
    )
    assert running.admin_port
    assert running.broker.memory_alarm is not None and running.broker.disk_alarm is not None
    queue = "/queue/" + unique("grafana")
    worked = "/queue/" + unique("grafana-work")
    topic = "/topic/" + unique("grafana")
    pool = ClientPool()

    def traffic() -> None:
        producer = pool.tcp(running.tcp_port, connect=False)
        producer.connect(username="alice", passcode=PASSWORD)
        for i in range(3):  # left in the queue: it has series of its own
            producer.send(queue, f"m{i}", receipt=True, headers={"persistent": "true"})
        worker = pool.ws(running.ws_port, running.ws_path, connect=False)
        worker.connect(username="alice", passcode=PASSWORD)
        worker.subscribe(worked, ack="client-individual")
        worker.subscribe(topic)
        producer.send(worked, "job", receipt=True)
        producer.send(topic, "news", receipt=True)
        job = worker.next_message()
        assert job.body == "job"
        worker.ack(job)
        assert worker.next_message().body == "news"

    try:
        await deferToThread(traffic)
        # Scraped while the clients are connected and subscribed.
        response = await treq.get(f"http://127.0.0.1:{running.admin_port}/metrics")
        assert response.code == 200
        text = await response.text()
    finally:
        await deferToThread(pool.__exit__, None, None, None)
    exported = exported_series(text)
    # The traffic shows, so the per-destination series below are real.
    queued = {s["destination"] for s in exported.get("stomptw_queue_messages", [])}
    assert queue in queued, sorted(queued)
    dashboard = load_dashboard()
    checked = {name for _, expr, _ in queries(dashboard) for name in metric_names(expr)}
    assert len(checked) >= 20, sorted(checked)
    found = problems(dashboard, exported)
    assert not found, "the dashboard queries what the broker does not export:\n" + "\n".join(found)
