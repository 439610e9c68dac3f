//! The operations files, checked without running them (no Docker engine, cluster or Grafana
//! here): every PromQL expression of the dashboard names only metrics the binary exports (and
//! every exported metric has a panel); the YAML files parse and say what matters (compose
//! services, logical WAL, probes, non-root, the scrape of `/metrics`); the Dockerfile builds in
//! stages and runs as a non-root user; the systemd unit has its service keys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pubsubpull::metrics::{self, Kind};
use serde_json::Value;
use serde_norway::Value as Yaml;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// PromQL: the metric names of an expression.

/// PromQL functions (Prometheus 2.x and 3.x); a call of anything else is a typo.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "double_exponential_smoothing",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// Aggregation operators: followed by `(` or by `by`/`without` and a label list.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a label list in parentheses.
const LABEL_LIST_KEYWORDS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// Other words that are not metric names.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"];

/// The metric names `expr` selects, in order. Skips strings, label matchers (`{...}`), ranges and
/// subqueries (`[...]`), Grafana variables (`$x`, `${x}`), numbers and durations, and the label
/// lists of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`. Fails on a call of
/// an unknown function and on unbalanced brackets or strings.
fn metric_names(expr: &str) -> Result<Vec<String>, String> {
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    let mut at = 0;
    let ident_start = |b: u8| b.is_ascii_alphabetic() || b == b'_' || b == b':';
    let ident_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let skip_space = |mut at: usize| {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        at
    };
    // The index past the closing `close` of the group opened at `at`, strings skipped.
    let skip_group = |at: usize, close: u8| -> Result<usize, String> {
        let open = bytes[at];
        let mut depth = 0;
        let mut i = at;
        while i < bytes.len() {
            match bytes[i] {
                b'"' | b'\'' | b'`' => i = skip_string(bytes, i)?,
                b if b == open => {
                    depth += 1;
                    i += 1;
                }
                b if b == close => {
                    depth -= 1;
                    i += 1;
                    if depth == 0 {
                        return Ok(i);
                    }
                }
                _ => i += 1,
            }
        }
        Err(format!("unclosed {:?} at {at} in {expr}", open as char))
    };
    while at < bytes.len() {
        let b = bytes[at];
        match b {
            b'"' | b'\'' | b'`' => at = skip_string(bytes, at)?,
            b'{' => at = skip_group(at, b'}')?,
            b'[' => at = skip_group(at, b']')?,
            b'}' | b']' => return Err(format!("unbalanced {:?} at {at} in {expr}", b as char)),
            b'$' => {
                at += 1;
                if bytes.get(at) == Some(&b'{') {
                    at = skip_group(at, b'}')?;
                } else {
                    while at < bytes.len() && ident_char(bytes[at]) {
                        at += 1;
                    }
                }
            }
            b'0'..=b'9' | b'.' => {
                while at < bytes.len() && (ident_char(bytes[at]) || bytes[at] == b'.') {
                    at += 1;
                }
            }
            b if ident_start(b) => {
                let start = at;
                while at < bytes.len() && ident_char(bytes[at]) {
                    at += 1;
                }
                let word = &expr[start..at];
                let next = skip_space(at);
                let lower = word.to_ascii_lowercase();
                if LABEL_LIST_KEYWORDS.contains(&word) {
                    if bytes.get(next) == Some(&b'(') {
                        at = skip_group(next, b')')?;
                    }
                } else if AGGREGATIONS.contains(&word) || KEYWORDS.contains(&lower.as_str()) {
                } else if bytes.get(next) == Some(&b'(') {
                    if !FUNCTIONS.contains(&word) {
                        return Err(format!("unknown function {word} in {expr}"));
                    }
                } else {
                    names.push(word.to_owned());
                }
            }
            _ => at += 1,
        }
    }
    Ok(names)
}

/// The index past the string literal that starts at `at`.
fn skip_string(bytes: &[u8], at: usize) -> Result<usize, String> {
    let quote = bytes[at];
    let mut i = at + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote != b'`' => i += 2,
            b if b == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!("unclosed string at {at}"))
}

/// The metric a series name belongs to: a histogram's `_bucket`, `_sum` and `_count` series
/// belong to the histogram.
fn family<'a>(name: &'a str, exported: &BTreeMap<&str, Kind>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if exported.get(base) == Some(&Kind::Histogram) {
                return base;
            }
        }
    }
    name
}

#[test]
fn the_extractor_finds_metric_names_and_nothing_else() {
    let cases: &[(&str, &[&str])] = &[
        ("up", &["up"]),
        (
            r#"sum by (route, le) (rate(http_seconds_bucket{route!="/x{y}", a=~"$i"}[$__rate_interval]))"#,
            &["http_seconds_bucket"],
        ),
        ("histogram_quantile(0.99, sum without (instance) (rate(a_bucket[5m])))", &["a_bucket"]),
        ("a / on (instance) group_left(version) b", &["a", "b"]),
        ("a * ignoring(x) group_right b", &["a", "b"]),
        ("foo offset 5m + bar[5m:1m] - 1e3 * 0x1f", &["foo", "bar"]),
        ("max_over_time(x[1h]) > 0.5 and y == bool 1 or Inf unless NaN", &["x", "y"]),
        ("sum(rate(x{a='}'}[${__range}])) by (a)", &["x"]),
        ("topk(5, sum by (table, op) (increase(changes_total{t=\"a\\\"b\"}[1h])))", &["changes_total"]),
        ("count(ns:recording_rule:rate5m)", &["ns:recording_rule:rate5m"]),
        ("vector(1)", &[]),
    ];
    for (expr, expected) in cases {
        assert_eq!(metric_names(expr).unwrap(), *expected, "{expr}");
    }
    for bad in ["rat(x[5m])", "sum(x{a=\"b)", "x[5m", "x}", "histogram_quantil(0.5, x)"] {
        assert!(metric_names(bad).is_err(), "{bad}");
    }
}

/// Every `expr` of `value` (panel targets), with where it is.
fn exprs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("expr", Value::String(expr)) => out.push((at.to_owned(), expr.clone())),
                    _ => exprs(child, &format!("{at}.{key}"), out),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                exprs(item, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_exported_metrics_and_shows_them_all() {
    let dashboard: Value = serde_json::from_str(&read("dashboards/pubsubpull.json")).expect("valid JSON");
    let exported: BTreeMap<&str, Kind> =
        metrics::catalog().iter().map(|(name, kind)| (name.as_str(), *kind)).collect();

    let mut queries = Vec::new();
    exprs(&dashboard["panels"], "panels", &mut queries);
    // Template variables: `label_values(SELECTOR, label)` selects SELECTOR.
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let query = variable["definition"].as_str().expect("a query variable has a definition");
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector)
            .unwrap_or_else(|| panic!("unexpected variable query {query}"));
        queries.push((format!("variable {}", variable["name"]), selector.to_owned()));
    }
    assert!(queries.len() > 20, "{} queries", queries.len());

    let mut used = BTreeSet::new();
    for (at, expr) in &queries {
        let names = metric_names(expr).unwrap_or_else(|e| panic!("{at}: {e}"));
        assert!(!names.is_empty(), "{at}: no metric in {expr}");
        for name in names {
            let family = family(&name, &exported);
            assert!(exported.contains_key(family), "{at}: {name} is not exported (in {expr})");
            used.insert(family.to_owned());
        }
    }
    let unused: Vec<&&str> = exported.keys().filter(|name| !used.contains(**name)).collect();
    assert!(unused.is_empty(), "metrics without a panel: {unused:?}");

    // Every panel queries the templated datasource; ids are unique; the grid is 24 wide.
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_i64().unwrap()), "duplicate id {}", panel["id"]);
        let grid = &panel["gridPos"];
        assert!(grid["x"].as_i64().unwrap() + grid["w"].as_i64().unwrap() <= 24, "{}", panel["title"]);
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", panel["title"]);
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", panel["title"]);
        }
    }
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
    let datasource = variable("DS_PROMETHEUS").expect("a datasource variable");
    assert_eq!(
        (&datasource["type"], &datasource["query"]),
        (&Value::from("datasource"), &Value::from("prometheus"))
    );
    let subscription = variable("subscription").expect("a subscription variable");
    assert!(subscription["definition"].as_str().unwrap().contains("subscription)"));
    // Subscription panels follow the variable.
    for (at, expr) in &queries {
        if expr.contains("pubsubpull_subscription_") && !at.starts_with("variable") {
            assert!(expr.contains("subscription=~\"$subscription\""), "{at}: {expr}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deployment files.

/// Every YAML document of every file under `deploy/`, by path (relative to the repository).
fn yaml_documents() -> BTreeMap<String, Vec<Yaml>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&repo("deploy"), &mut paths);
    let mut files = BTreeMap::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.strip_prefix(repo("")).unwrap().display().to_string();
        let mut documents = Vec::new();
        for document in serde_norway::Deserializer::from_str(&text) {
            let mut value: Yaml =
                serde::Deserialize::deserialize(document).unwrap_or_else(|e| panic!("{name}: {e}"));
            value.apply_merge().unwrap_or_else(|e| panic!("{name}: {e}"));
            if !value.is_null() {
                documents.push(value);
            }
        }
        assert!(!documents.is_empty(), "{name} is empty");
        files.insert(name, documents);
    }
    files
}

fn str_of<'a>(value: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |value, key| value.get(*key))?.as_str()
}

#[test]
fn compose_runs_postgres_with_logical_wal_pubsubpull_prometheus_and_grafana() {
    let files = yaml_documents();
    let compose = &files["deploy/docker-compose.yml"][0];
    let services = &compose["services"];
    for service in ["postgres", "migrate", "track", "pubsubpull", "prometheus", "grafana"] {
        assert!(services.get(service).is_some(), "no {service} service");
    }
    let postgres = &services["postgres"];
    let command: Vec<&str> =
        postgres["command"].as_sequence().unwrap().iter().filter_map(|arg| arg.as_str()).collect();
    assert!(command.windows(2).any(|w| w == ["-c", "wal_level=logical"]), "{command:?}");
    assert_eq!(str_of(postgres, &["build", "context"]), Some(".."), "the image builds extension/");
    assert_eq!(str_of(postgres, &["build", "dockerfile"]), Some("deploy/postgres.Dockerfile"));
    let postgres_image = read("deploy/postgres.Dockerfile");
    assert!(postgres_image.contains("FROM postgres:15") && postgres_image.contains("postgresql-15-wal2json"));
    assert!(postgres_image.contains("COPY extension ") && postgres_image.contains("make -C /extension"));

    let pubsubpull = &services["pubsubpull"];
    assert_eq!(pubsubpull["command"][0].as_str(), Some("run"));
    assert_eq!(str_of(pubsubpull, &["environment", "PUBSUBPULL_LISTEN"]), Some("0.0.0.0:8080"));
    assert!(str_of(pubsubpull, &["environment", "DATABASE_URL"]).unwrap().contains("@postgres:5432/"));
    assert_eq!(
        str_of(pubsubpull, &["build", "dockerfile"]),
        Some("deploy/Dockerfile"),
        "merged from the anchor"
    );
    assert_eq!(services["migrate"]["command"][0].as_str(), Some("migrate"));
    assert_eq!(services["track"]["command"][0].as_str(), Some("track"));
    assert_eq!(
        str_of(pubsubpull, &["depends_on", "track", "condition"]),
        Some("service_completed_successfully")
    );

    // Prometheus scrapes pubsubpull's /metrics.
    let prometheus = &files["deploy/prometheus.yml"][0];
    let job = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|job| job["job_name"] == "pubsubpull")
        .expect("a pubsubpull job");
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    assert_eq!(job["static_configs"][0]["targets"][0].as_str(), Some("pubsubpull:8080"));

    // Grafana gets the datasource and the dashboards folder.
    let volumes: Vec<&str> =
        services["grafana"]["volumes"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(volumes.iter().any(|v| v.starts_with("../dashboards:")), "{volumes:?}");
    let datasource = &files["deploy/grafana/provisioning/datasources/prometheus.yml"][0]["datasources"][0];
    assert_eq!(
        (datasource["type"].as_str(), datasource["url"].as_str()),
        (Some("prometheus"), Some("http://prometheus:9090"))
    );
    let provider = &files["deploy/grafana/provisioning/dashboards/pubsubpull.yml"][0]["providers"][0];
    let mount = volumes.iter().find(|v| v.starts_with("../dashboards:")).unwrap().split(':').nth(1).unwrap();
    assert_eq!(
        str_of(provider, &["options", "path"]),
        Some(mount),
        "the provider reads the mounted dashboards"
    );
}

#[test]
fn kubernetes_manifests_probe_run_non_root_and_are_scraped() {
    let files = yaml_documents();
    let documents: Vec<(&String, &Yaml)> = files
        .iter()
        .filter(|(path, _)| path.starts_with("deploy/kubernetes/"))
        .flat_map(|(path, docs)| docs.iter().map(move |doc| (path, doc)))
        .collect();
    let of_kind = |kind: &str| -> Vec<&Yaml> {
        documents.iter().filter(|(_, doc)| doc["kind"] == kind).map(|(_, doc)| *doc).collect()
    };
    for kind in ["Deployment", "Service", "ServiceMonitor", "ConfigMap", "Secret", "Kustomization"] {
        assert_eq!(of_kind(kind).len(), 1, "one {kind}");
    }
    // The kustomization names every other file.
    let kustomization = of_kind("Kustomization")[0];
    let resources: BTreeSet<&str> =
        kustomization["resources"].as_sequence().unwrap().iter().filter_map(|r| r.as_str()).collect();
    for (path, _) in &documents {
        let file = path.strip_prefix("deploy/kubernetes/").unwrap();
        assert!(file == "kustomization.yaml" || resources.contains(file), "{file} not in kustomization");
    }

    let deployment = of_kind("Deployment")[0];
    // With a standby (never ready), only Recreate can roll out.
    if deployment["spec"]["replicas"].as_u64().unwrap_or(1) > 1 {
        assert_eq!(str_of(deployment, &["spec", "strategy", "type"]), Some("Recreate"));
    }
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert!(pod["securityContext"]["runAsUser"].as_u64().is_some_and(|uid| uid > 0));
    let container = &pod["containers"][0];
    assert_eq!(container["args"][0].as_str(), Some("run"));
    assert_eq!(str_of(container, &["livenessProbe", "httpGet", "path"]), Some("/healthz"));
    assert_eq!(str_of(container, &["readinessProbe", "httpGet", "path"]), Some("/readyz"));
    for c in [container, &pod["initContainers"][0]] {
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false));
        assert!(
            c["resources"]["requests"]["memory"].is_string()
                && c["resources"]["limits"]["memory"].is_string()
        );
    }
    assert_eq!(pod["initContainers"][0]["args"][0].as_str(), Some("migrate"));
    // A read-only root: /tmp (where big transactions spill) is a volume.
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    assert!(mounts.iter().any(|m| m["mountPath"] == "/tmp"));
    let from: BTreeSet<&str> = container["envFrom"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|source| source["configMapRef"]["name"].as_str().or(source["secretRef"]["name"].as_str()))
        .collect();
    assert_eq!(from, BTreeSet::from(["pubsubpull"]));

    let config = of_kind("ConfigMap")[0];
    assert_eq!(str_of(config, &["data", "PUBSUBPULL_LISTEN"]), Some("0.0.0.0:8080"));
    let secret = of_kind("Secret")[0];
    for key in ["DATABASE_URL", "PUBSUBPULL_API_TOKEN", "PUBSUBPULL_READ_TOKEN"] {
        assert!(str_of(secret, &["stringData", key]).is_some(), "Secret lacks {key}");
    }
    // The Service selects the pods and the ServiceMonitor the Service, on the port named http.
    let service = of_kind("Service")[0];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&labels[key.as_str().unwrap()], value);
    }
    assert_eq!(service["spec"]["ports"][0]["name"].as_str(), Some("http"));
    let monitor = of_kind("ServiceMonitor")[0];
    assert_eq!(monitor["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    for (key, value) in monitor["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&service["metadata"]["labels"][key.as_str().unwrap()], value);
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["port"].as_str(), Some("http"));
    assert_eq!(monitor["spec"]["endpoints"][0]["path"].as_str(), Some("/metrics"));
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_as_a_user() {
    let dockerfile = read("deploy/Dockerfile");
    let instructions: Vec<(String, &str)> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(' ').map(|(op, rest)| (op.to_ascii_uppercase(), rest.trim())))
        .collect();
    let all =
        |op: &str| -> Vec<&str> { instructions.iter().filter(|(o, _)| o == op).map(|(_, r)| *r).collect() };
    let stages = all("FROM");
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    assert!(stages[0].starts_with("rust:") && stages[0].contains(" AS builder"), "{stages:?}");
    assert!(all("COPY").iter().any(|c| c.starts_with("--from=builder")));
    let user = *all("USER").last().expect("a USER");
    let name = user.split(':').next().unwrap();
    assert!(!["root", "0"].contains(&name), "runs as {user}");
    assert_eq!(all("ENTRYPOINT"), ["[\"pubsubpull\"]"]);
    assert_eq!(all("CMD"), ["[\"run\"]"]);
    assert_eq!(all("EXPOSE"), ["8080"]);
    assert!(dockerfile.contains("PUBSUBPULL_LISTEN=0.0.0.0:8080"));
    // The dependency layer comes before the sources.
    let copies = all("COPY");
    let manifest = copies.iter().position(|c| c.starts_with("Cargo.toml")).expect("Cargo.toml copied");
    let sources = copies.iter().position(|c| c.starts_with("src ")).expect("src copied");
    assert!(manifest < sources);
    let ignored = read(".dockerignore");
    for path in ["target", ".pgtest", ".venv"] {
        assert!(ignored.lines().any(|line| line.trim() == path), ".dockerignore lacks {path}");
    }
}

#[test]
fn the_systemd_unit_restarts_stops_cleanly_and_is_confined() {
    let unit = read("deploy/systemd/pubsubpull.service");
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut section = String::new();
    for line in unit.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
            sections.entry(section.clone()).or_default().push((key.to_owned(), value.to_owned()));
        }
    }
    let service: BTreeMap<&str, &str> =
        sections["Service"].iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (key, value) in [
        ("EnvironmentFile", "/etc/pubsubpull/env"),
        ("ExecStart", "/usr/local/bin/pubsubpull run"),
        ("Restart", "always"),
        ("KillSignal", "SIGTERM"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(service.get(key), Some(&value), "[Service] {key}");
    }
    assert!(service.get("DynamicUser") == Some(&"yes") || service.contains_key("User"), "a dedicated user");
    assert!(service["TimeoutStopSec"].parse::<u32>().is_ok_and(|s| s > 5), "longer than the 5 s drain");
    assert_eq!(sections["Install"], [("WantedBy".to_owned(), "multi-user.target".to_owned())]);
}
