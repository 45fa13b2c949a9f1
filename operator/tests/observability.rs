//! The Grafana dashboard and the chart's alerts ask only for what dcache serves: every
//! PromQL expression parses, and every metric it selects (and every label it matches
//! on) is in what a live 3-node cluster, a node spoken to over the Redis protocol and
//! the operator expose on `/metrics`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dcache_client::local::{LocalCluster, LocalOptions};
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use support::{documents, helm, prometheus_rule, render_chart, repo_path};

/// Labels Prometheus attaches to every series from the target (the Prometheus
/// Operator's ServiceMonitor relabelling), which no exposition carries itself.
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "pod",
    "job",
    "instance",
    "service",
    "container",
    "endpoint",
];

/// Grafana's interval variables stand where PromQL wants a duration; a sample value
/// each lets the expression parse. Variables inside label values need nothing.
const GRAFANA_DURATIONS: &[(&str, &str)] = &[
    ("$__rate_interval", "1m"),
    ("$__interval", "1m"),
    ("$__range", "1h"),
];

/// The panels the dashboard must have.
const PANELS: &[&str] = &[
    "Throughput by operation",
    "Latency p50 / p99",
    "Hit ratio",
    "RESP commands by command",
    "RESP commands by result",
    "RESP latency p99 by command",
    "Open RESP connections",
    "Memory against budget",
    "Evictions",
    "Keys",
    "Partitions led per node",
    "Elections and terms",
    "Commit lag",
    "Rebalance progress",
    "Operator reconciles and errors",
];

/// The alerts the chart must carry.
const ALERTS: &[&str] = &[
    "DcachePartitionWithoutLeader",
    "DcacheNodeNotReady",
    "DcacheEvictionsHigh",
    "DcacheRebalanceStuck",
    "DcacheOperatorFailing",
    "DcacheOperatorDown",
];

/// The node's Redis protocol metrics (sample names and their labels) as the RESP front
/// door of issue 14 is to export them. They stand in only for a `dcache-node` built
/// before that door, which has no `--resp-listen`: the dashboard's RESP panels are then
/// checked against these agreed names. A node with the flag is spoken to over RESP
/// instead, and only what it really serves counts.
const RESP_METRICS_AGREED: &[(&str, &[&str])] = &[
    ("dcache_resp_commands_total", &["command", "result"]),
    (
        "dcache_resp_command_duration_seconds_bucket",
        &["command", "le"],
    ),
    ("dcache_resp_command_duration_seconds_sum", &["command"]),
    ("dcache_resp_command_duration_seconds_count", &["command"]),
    ("dcache_resp_connections", &[]),
];

/// A series selector: its metric name and the labels it matches on.
#[derive(Debug)]
struct Selector {
    name: String,
    labels: BTreeSet<String>,
}

struct Selectors(Vec<Result<Selector, String>>);

impl Selectors {
    fn add(&mut self, selector: &VectorSelector) {
        let mut labels = BTreeSet::new();
        let mut name = selector.name.clone();
        for matcher in &selector.matchers.matchers {
            if matcher.name == "__name__" {
                if matches!(matcher.op, MatchOp::Equal) {
                    name = Some(matcher.value.clone());
                } else {
                    self.0.push(Err(format!(
                        "{selector}: a __name__ other than `=` cannot be checked against what dcache serves"
                    )));
                    return;
                }
            } else {
                labels.insert(matcher.name.clone());
            }
        }
        if !selector.matchers.or_matchers.is_empty() {
            self.0
                .push(Err(format!("{selector}: `or` matchers are not used here")));
            return;
        }
        self.0.push(match name {
            Some(name) => Ok(Selector { name, labels }),
            None => Err(format!("{selector}: selects no metric by name")),
        });
    }
}

impl ExprVisitor for Selectors {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        match expr {
            Expr::VectorSelector(selector) => self.add(selector),
            Expr::MatrixSelector(matrix) => self.add(&matrix.vs),
            _ => {}
        }
        Ok(true)
    }
}

/// Every series selector of `expr`, after it parses as PromQL.
fn selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let mut query = expr.to_owned();
    for (variable, value) in GRAFANA_DURATIONS {
        query = query.replace(variable, value);
    }
    let ast = parser::parse(&query).map_err(|e| format!("does not parse: {e}"))?;
    let mut found = Selectors(Vec::new());
    let Ok(_) = walk_expr(&mut found, &ast);
    found.0.into_iter().collect()
}

/// Sample name → the label names its samples carry, from a text exposition. Sample
/// names, not family names: a histogram's series are `_bucket`, `_sum` and `_count`,
/// exactly what a query must select.
fn exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = samples.entry(line[..end].to_owned()).or_default();
        let Some(mut rest) = line[end..].strip_prefix('{') else {
            continue;
        };
        // label="value" pairs; values may hold escaped quotes, commas and braces.
        while let Some((name, after)) = rest.split_once("=\"") {
            labels.insert(name.trim_start_matches(',').trim().to_owned());
            let mut escaped = false;
            let close = after
                .char_indices()
                .find(|&(_, c)| {
                    let done = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    done
                })
                .map(|(i, _)| i)
                .expect("a closed label value");
            rest = &after[close + 1..];
            if rest.starts_with('}') {
                break;
            }
        }
    }
    samples
}

/// Every way `expr` asks for something `served` lacks.
fn unserved(expr: &str, served: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let selectors = match selectors(expr) {
        Ok(selectors) => selectors,
        Err(e) => return vec![e],
    };
    if selectors.is_empty() {
        return vec!["selects no metric at all".to_owned()];
    }
    let mut problems = Vec::new();
    for selector in selectors {
        let Some(labels) = served.get(&selector.name) else {
            problems.push(format!(
                "{} is served by neither dcache-node nor dcache-operator",
                selector.name
            ));
            continue;
        };
        for label in &selector.labels {
            if !labels.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                problems.push(format!("{} has no label {label}", selector.name));
            }
        }
    }
    problems
}

/// `(where, expression)` of every query in the dashboard: panel targets and the
/// selectors of `label_values(...)` variables.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("untitled");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("every target has an expr");
                out.push((format!("panel {title:?}"), expr.to_owned()));
            }
            panels(&panel["panels"], out);
        }
    }
    let mut queries = Vec::new();
    panels(&dashboard["panels"], &mut queries);
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"].as_str().unwrap();
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _label)| selector)
            .unwrap_or_else(|| {
                panic!("variable query {query} is not label_values(selector, label)")
            });
        let name = variable["name"].as_str().unwrap();
        queries.push((format!("variable {name}"), selector.to_owned()));
    }
    queries
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_path("charts/dcache-operator/dashboards/dcache.json"))
        .expect("the chart carries the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// `(alert, expression)` of every alert the chart renders when they are on.
fn alert_queries() -> Vec<(String, String)> {
    let rendered = render_chart(&helm(), &["prometheusRule.enabled=true"]);
    let documents = documents(&rendered);
    let document = documents
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("prometheusRule.enabled renders a PrometheusRule");
    let rule = prometheus_rule(document);
    let mut queries = Vec::new();
    for group in rule.spec.groups {
        for alert in group.rules {
            let severity = alert.labels.get("severity").map(String::as_str);
            assert!(
                matches!(severity, Some("warning" | "critical")),
                "{}: severity {severity:?}",
                alert.alert
            );
            for annotation in ["summary", "description"] {
                assert!(
                    alert
                        .annotations
                        .get(annotation)
                        .is_some_and(|a| !a.is_empty()),
                    "{} has no {annotation}",
                    alert.alert
                );
            }
            queries.push((alert.alert, alert.expr));
        }
    }
    queries
}

/// What a live 3-node cluster serves on `/metrics` (after sets, hits, misses and
/// deletes, so labelled families have series), merged with what the operator serves
/// after a reconcile and a failed one.
async fn served_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let data_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("observability-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut options = LocalOptions::new(3, &data_dir, Some(support::node_binary())).unwrap();
    options.partitions = 8;
    let cluster = LocalCluster::start(options)
        .await
        .expect("a 3-node cluster");
    let client = cluster.client();
    for i in 0..20 {
        let key = format!("key-{i}");
        client.set(&key, &i, None).await.unwrap();
        assert_eq!(client.get::<i32>(&key).await.unwrap(), Some(i));
        assert_eq!(
            client.get::<i32>(format!("missing-{i}")).await.unwrap(),
            None
        );
    }
    assert!(client.delete("key-0").await.unwrap());

    let http = reqwest::Client::new();
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut merge = |text: &str| {
        for (name, labels) in exposition(text) {
            served.entry(name).or_default().extend(labels);
        }
    };
    // The balancer's gauges come from the node leading the cluster group, the
    // request metrics from whichever node served: every node is scraped.
    for addr in cluster.api_addrs() {
        let response = http
            .get(format!("http://{addr}/metrics"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("a node serves /metrics");
        assert!(response.status().is_success());
        merge(&response.text().await.unwrap());
    }
    cluster.stop();
    let _ = std::fs::remove_dir_all(&data_dir);

    let registry = prometheus::Registry::new();
    let metrics = dcache_operator::metrics::Metrics::register(&registry).unwrap();
    drop(metrics.reconcile_started());
    metrics.reconcile_failed(&dcache_operator::Error::MissingField("uid"));
    merge(&dcache_operator::metrics::render(&registry));
    for (name, labels) in resp_metrics(&support::node_binary()).await {
        served.entry(name).or_default().extend(labels);
    }
    served
}

/// What a node serves once Redis clients used it: a standalone node listening for RESP,
/// sent a write, a hit, a miss, a delete and an unknown command on one connection,
/// scraped while that connection is open. Without `--resp-listen` in the node (built
/// before the RESP door), the agreed names instead ([`RESP_METRICS_AGREED`]).
async fn resp_metrics(binary: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let help = Command::new(binary)
        .arg("--help")
        .output()
        .expect("dcache-node --help runs");
    if !String::from_utf8_lossy(&help.stdout).contains("--resp-listen") {
        eprintln!(
            "dcache-node has no --resp-listen yet: RESP panels checked against the agreed metric names"
        );
        return RESP_METRICS_AGREED
            .iter()
            .map(|(name, labels)| {
                let labels = labels.iter().map(|l| (*l).to_owned()).collect();
                ((*name).to_owned(), labels)
            })
            .collect();
    }
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port()
    };
    let (api, resp) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let _node = KillOnDrop(
        Command::new(binary)
            .args(["--listen", &api, "--resp-listen", &resp])
            .args(["--log-format", "text"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dcache-node starts"),
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut connection = loop {
        let healthy = http
            .get(format!("http://{api}/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if healthy {
            if let Ok(connection) = TcpStream::connect(&resp) {
                break connection;
            }
        }
        assert!(
            Instant::now() < deadline,
            "a standalone node did not serve RESP on {resp}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    connection
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut replies = BufReader::new(connection.try_clone().unwrap());
    for command in [
        &["SET", "resp-key", "v"][..],
        &["GET", "resp-key"],
        &["GET", "resp-missing"],
        &["DEL", "resp-key"],
        &["NO-SUCH-COMMAND"],
    ] {
        connection.write_all(&resp_command(command)).unwrap();
        // Any reply will do (an error is counted too): only its end matters.
        read_resp_reply(&mut replies).unwrap_or_else(|e| panic!("{command:?}: {e}"));
    }
    let text = http
        .get(format!("http://{api}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the node serves /metrics")
        .text()
        .await
        .unwrap();
    exposition(&text)
        .into_iter()
        .filter(|(name, _)| name.starts_with("dcache_resp_"))
        .collect()
}

/// A node process, killed when the test is done with it or fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `args` as a RESP command: an array of bulk strings.
fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n{arg}\r\n", arg.len()).bytes());
    }
    out
}

/// Reads one whole RESP reply (of any type, nested ones included) and returns its
/// first line.
fn read_resp_reply(reader: &mut impl BufRead) -> std::io::Result<String> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(invalid("the connection closed"));
    }
    let length =
        || -> std::io::Result<i64> { line[1..].trim_end().parse().map_err(|_| invalid(&line)) };
    match line.as_bytes().first() {
        // Simple string, error, integer, null, boolean, double, big number.
        Some(b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(') => {}
        // Bulk string, bulk error, verbatim string: the length, then the bytes.
        Some(b'$' | b'!' | b'=') => {
            if let Ok(length) = usize::try_from(length()?) {
                let mut body = vec![0; length + 2];
                reader.read_exact(&mut body)?;
            }
        }
        // Array, set, push: that many replies; a map: twice that many.
        Some(kind @ (b'*' | b'~' | b'>' | b'%')) => {
            let items = length()?.max(0) * if *kind == b'%' { 2 } else { 1 };
            for _ in 0..items {
                read_resp_reply(reader)?;
            }
        }
        _ => return Err(invalid(&line)),
    }
    Ok(line)
}

#[test]
fn the_resp_reader_reads_whole_replies() {
    assert_eq!(
        resp_command(&["GET", "k"]),
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    );
    let stream: &[u8] = b"+OK\r\n$5\r\nhe\r\no\r\n$-1\r\n-MOVED 1 a:6379\r\n*2\r\n:1\r\n$1\r\nx\r\n%1\r\n+a\r\n:2\r\n+last\r\n";
    let mut reader = BufReader::new(stream);
    let mut first_lines = Vec::new();
    for _ in 0..7 {
        first_lines.push(read_resp_reply(&mut reader).unwrap());
    }
    assert_eq!(
        first_lines,
        [
            "+OK\r\n",
            "$5\r\n",
            "$-1\r\n",
            "-MOVED 1 a:6379\r\n",
            "*2\r\n",
            "%1\r\n",
            "+last\r\n"
        ]
    );
    assert!(read_resp_reply(&mut reader).is_err(), "nothing left");
    assert!(read_resp_reply(&mut BufReader::new(&b"?\r\n"[..])).is_err());
}

#[test]
fn the_checker_refuses_what_no_one_serves() {
    let served = exposition(
        "# TYPE a_seconds histogram\n\
         a_seconds_bucket{route=\"/x/{*key}\",quote=\"say \\\"hi\\\", then\",le=\"0.1\"} 1\n\
         a_seconds_count{route=\"/x/{*key}\",quote=\"q\"} 1\n\
         b_total 3\n",
    );
    assert_eq!(
        served["a_seconds_bucket"],
        BTreeSet::from(["route".to_owned(), "quote".to_owned(), "le".to_owned()])
    );
    let ok = "histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{route=\"/x/{*key}\", pod=~\"$pod\"}[$__rate_interval]))) + on() group_left sum(b_total)";
    assert_eq!(unserved(ok, &served), Vec::<String>::new());
    let problems = |expr: &str| unserved(expr, &served).join("; ");
    assert!(problems("rate(a_seconds[5m])").contains("a_seconds is served by neither"));
    assert!(problems("up{job=\"x\"} == 0").contains("up is served by neither"));
    assert!(problems("b_total{kind=\"x\"}").contains("b_total has no label kind"));
    assert!(problems("{__name__=~\"b.*\"}").contains("__name__"));
    assert!(problems("sum(rate(b_total[5m])").contains("does not parse"));
    assert!(problems("rate(b_total)").contains("does not parse"));
    assert!(problems("1 + 1").contains("selects no metric"));
    assert_eq!(
        unserved("{__name__=\"b_total\"}", &served),
        Vec::<String>::new()
    );
}

#[test]
fn the_dashboard_has_the_panels_and_a_prometheus_datasource_variable() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let datasource = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let mut titles = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut stack = vec![&dashboard["panels"]];
    while let Some(list) = stack.pop() {
        for panel in list.as_array().into_iter().flatten() {
            titles.insert(panel["title"].as_str().unwrap().to_owned());
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "a repeated panel id"
            );
            if panel["type"] != "row" {
                assert_eq!(
                    panel["datasource"]["uid"], "${datasource}",
                    "{}: queries the chosen data source",
                    panel["title"]
                );
                for target in panel["targets"].as_array().unwrap() {
                    assert_eq!(target["datasource"]["uid"], "${datasource}");
                }
            }
            stack.push(&panel["panels"]);
        }
    }
    for panel in PANELS {
        assert!(
            titles.contains(*panel),
            "the dashboard lacks the panel {panel}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_and_alert_query_names_only_what_dcache_serves() {
    let mut queries = dashboard_queries(&dashboard());
    let alerts = alert_queries();
    for alert in ALERTS {
        assert!(
            alerts.iter().any(|(name, _)| name == alert),
            "the chart lacks the alert {alert}"
        );
    }
    queries.extend(alerts);
    let served = served_metrics().await;
    assert!(served.contains_key("dcache_raft_term"), "{served:?}");
    assert!(
        served.contains_key("dcache_resp_commands_total"),
        "{served:?}"
    );
    assert!(served.contains_key("dcache_operator_reconciles_total"));
    let failures: Vec<String> = queries
        .iter()
        .flat_map(|(place, expr)| {
            unserved(expr, &served)
                .into_iter()
                .map(move |problem| format!("{place}: {problem}\n    {expr}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} queries ask for what dcache does not serve:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );
}
