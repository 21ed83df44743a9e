//! fhirhose-metrics: a small in-process metrics registry, rendered in the Prometheus text
//! exposition format (version 0.0.4) and as a JSON snapshot for run summaries.
//!
//! Every metric fhirhose records is declared once, in [`catalogue`], as a `static`
//! [`Family`]: a name, a help text, its label names and (for histograms) its buckets. The
//! crates that do the work (`fhirhose-ingest`, `fhirhose-sinks`, the binary) record into
//! these statics; nothing registers at run time, so the exposition always lists the same
//! families in the same order.
//!
//! Invariants:
//! * Names follow the Prometheus conventions: `fhirhose_` prefix, `_total` for counters,
//!   `_seconds` / `_bytes` base units, histograms expose `_bucket`, `_sum` and `_count`.
//! * Every family's first label is `source` (the tenant or EHR), so error budgets can be
//!   tracked per source. Components that do not know their source record under
//!   [`default_source`], which the command sets once at start (one process, one source).
//! * Label values are ids, types, reasons, statuses and table names: never resource
//!   content, names, identifiers, tokens or URLs. Values are cut to
//!   [`MAX_LABEL_VALUE_CHARS`] characters, and a family holds at most
//!   [`MAX_SERIES_PER_FAMILY`] series (further label combinations are folded into one
//!   series whose labels are all `other`), so a misbehaving server cannot grow memory.
//! * Recording takes one short mutex per family; callers on hot paths (per resource)
//!   aggregate first and record per file or per block.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, RwLock};

use serde::Serialize;

pub mod catalogue;

pub use catalogue::ALL;

/// Longest label value kept (longer values are cut).
pub const MAX_LABEL_VALUE_CHARS: usize = 64;
/// Most series per family; beyond it new label combinations are folded into `other`.
pub const MAX_SERIES_PER_FAMILY: usize = 2_000;

/// What a family measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A monotonically increasing count.
    Counter,
    /// A distribution of observations over fixed buckets.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Histogram => "histogram",
        }
    }
}

#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Histogram {
        /// Per bucket (not cumulative), plus one for `+Inf`.
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

/// One metric family: a name, help, label names and its series.
#[derive(Debug)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    series: Mutex<BTreeMap<Vec<String>, Value>>,
}

impl Family {
    /// A counter family.
    pub const fn counter(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            help,
            kind: Kind::Counter,
            labels,
            buckets: &[],
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// A histogram family with upper bucket bounds `buckets` (ascending; `+Inf` implied).
    pub const fn histogram(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        Self {
            name,
            help,
            kind: Kind::Histogram,
            labels,
            buckets,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// The metric name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The help text.
    pub fn help(&self) -> &'static str {
        self.help
    }

    /// Counter or histogram.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Label names, in order.
    pub fn label_names(&self) -> &'static [&'static str] {
        self.labels
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Vec<String>, Value>> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Label values in order: missing ones are empty, extra ones dropped, long ones cut.
    fn key(&self, values: &[&str]) -> Vec<String> {
        (0..self.labels.len())
            .map(|i| {
                let v = values.get(i).copied().unwrap_or("");
                v.chars().take(MAX_LABEL_VALUE_CHARS).collect()
            })
            .collect()
    }

    fn with_series(&self, values: &[&str], f: impl FnOnce(&mut Value)) {
        debug_assert_eq!(
            values.len(),
            self.labels.len(),
            "{}: label values do not match label names",
            self.name
        );
        let mut key = self.key(values);
        let mut map = self.lock();
        if !map.contains_key(&key) && map.len() >= MAX_SERIES_PER_FAMILY {
            key = vec!["other".to_owned(); self.labels.len()];
        }
        let v = map.entry(key).or_insert_with(|| match self.kind {
            Kind::Counter => Value::Counter(0),
            Kind::Histogram => Value::Histogram {
                counts: vec![0; self.buckets.len() + 1],
                sum: 0.0,
                count: 0,
            },
        });
        f(v);
    }

    /// Adds `n` to a counter series.
    pub fn add(&self, values: &[&str], n: u64) {
        if self.kind != Kind::Counter {
            return;
        }
        self.with_series(values, |v| {
            if let Value::Counter(c) = v {
                *c = c.saturating_add(n);
            }
        });
    }

    /// Adds one to a counter series.
    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// Records one observation in a histogram series (NaN and negative values count as 0).
    pub fn observe(&self, values: &[&str], x: f64) {
        if self.kind != Kind::Histogram {
            return;
        }
        let x = if x.is_finite() && x > 0.0 { x } else { 0.0 };
        let idx = self
            .buckets
            .iter()
            .position(|b| x <= *b)
            .unwrap_or(self.buckets.len());
        self.with_series(values, |v| {
            if let Value::Histogram { counts, sum, count } = v {
                counts[idx] += 1;
                *sum += x;
                *count += 1;
            }
        });
    }

    /// A counter's value, or a histogram's observation count, for these label values
    /// (0 when the series does not exist).
    pub fn get(&self, values: &[&str]) -> u64 {
        match self.lock().get(&self.key(values)) {
            Some(Value::Counter(c)) => *c,
            Some(Value::Histogram { count, .. }) => *count,
            None => 0,
        }
    }

    /// The sum over every series whose `source` label is `source` (counter values or
    /// histogram counts).
    pub fn total_for_source(&self, source: &str) -> u64 {
        self.lock()
            .iter()
            .filter(|(k, _)| k.first().map(String::as_str) == Some(source))
            .map(|(_, v)| match v {
                Value::Counter(c) => *c,
                Value::Histogram { count, .. } => *count,
            })
            .sum()
    }

    fn render(&self, out: &mut String) {
        let map = self.lock();
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
        for (key, v) in map.iter() {
            match v {
                Value::Counter(c) => {
                    let _ = writeln!(out, "{}{} {c}", self.name, labels(self.labels, key, None));
                }
                Value::Histogram { counts, sum, count } => {
                    let mut cumulative = 0u64;
                    for (i, n) in counts.iter().enumerate() {
                        cumulative += n;
                        let le = self
                            .buckets
                            .get(i)
                            .map_or_else(|| "+Inf".to_owned(), |b| fmt_f64(*b));
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {cumulative}",
                            self.name,
                            labels(self.labels, key, Some(&le))
                        );
                    }
                    let l = labels(self.labels, key, None);
                    let _ = writeln!(out, "{}_sum{l} {}", self.name, fmt_f64(*sum));
                    let _ = writeln!(out, "{}_count{l} {count}", self.name);
                }
            }
        }
    }

    fn snapshot(&self) -> Vec<SeriesSnapshot> {
        self.lock()
            .iter()
            .map(|(key, v)| SeriesSnapshot {
                labels: self
                    .labels
                    .iter()
                    .zip(key)
                    .map(|(n, v)| ((*n).to_owned(), v.clone()))
                    .collect(),
                value: match v {
                    Value::Counter(c) => Some(*c),
                    Value::Histogram { .. } => None,
                },
                count: match v {
                    Value::Histogram { count, .. } => Some(*count),
                    Value::Counter(_) => None,
                },
                sum: match v {
                    Value::Histogram { sum, .. } => Some(*sum),
                    Value::Counter(_) => None,
                },
            })
            .collect()
    }
}

fn fmt_f64(x: f64) -> String {
    if x.is_infinite() {
        (if x > 0.0 { "+Inf" } else { "-Inf" }).to_owned()
    } else {
        // `{}` prints integers without a fraction ("1") and keeps full precision otherwise.
        format!("{x}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape_value(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// One series in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesSnapshot {
    /// Label name → value.
    pub labels: BTreeMap<String, String>,
    /// A counter's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// A histogram's observation count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// A histogram's sum of observations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum: Option<f64>,
}

/// Every non-empty family by name (for `--summary-json`).
pub type Snapshot = BTreeMap<String, Vec<SeriesSnapshot>>;

/// The Prometheus text exposition (format 0.0.4) of every family in [`ALL`].
pub fn render() -> String {
    let mut out = String::with_capacity(8 * 1024);
    for f in ALL {
        f.render(&mut out);
    }
    out
}

/// The `Content-Type` of [`render`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every series recorded so far, by family name; families without series are left out.
pub fn snapshot() -> Snapshot {
    ALL.iter()
        .map(|f| (f.name.to_owned(), f.snapshot()))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

static DEFAULT_SOURCE: RwLock<Option<String>> = RwLock::new(None);

/// Sets the `source` label used by components that do not know their source (the HTTP
/// transport, the authorizer, the Kafka producer). Commands set it once, at start.
pub fn set_default_source(source: &str) {
    *DEFAULT_SOURCE.write().unwrap_or_else(|e| e.into_inner()) = Some(source.to_owned());
}

/// The `source` label set by [`set_default_source`], or `default`.
pub fn default_source() -> String {
    DEFAULT_SOURCE
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    static C: Family = Family::counter(
        "t_requests_total",
        "Requests.\nSecond line.",
        &["source", "outcome"],
    );
    static H: Family = Family::histogram("t_latency_seconds", "Latency.", &["source"], &[0.1, 1.0]);

    #[test]
    fn counters_and_histograms_render_in_text_format() {
        C.inc(&["a", "ok"]);
        C.add(&["a", "ok"], 2);
        C.inc(&["b\"x\\", "fail"]);
        H.observe(&["a"], 0.0625);
        H.observe(&["a"], 0.5);
        H.observe(&["a"], 5.0);
        assert_eq!(C.get(&["a", "ok"]), 3);
        assert_eq!(H.get(&["a"]), 3);
        let mut out = String::new();
        C.render(&mut out);
        H.render(&mut out);
        let expected = "# HELP t_requests_total Requests.\\nSecond line.
# TYPE t_requests_total counter
t_requests_total{source=\"a\",outcome=\"ok\"} 3
t_requests_total{source=\"b\\\"x\\\\\",outcome=\"fail\"} 1
# HELP t_latency_seconds Latency.
# TYPE t_latency_seconds histogram
t_latency_seconds_bucket{source=\"a\",le=\"0.1\"} 1
t_latency_seconds_bucket{source=\"a\",le=\"1\"} 2
t_latency_seconds_bucket{source=\"a\",le=\"+Inf\"} 3
t_latency_seconds_sum{source=\"a\"} 5.5625
t_latency_seconds_count{source=\"a\"} 3
";
        assert_eq!(out, expected);
        assert_eq!(C.total_for_source("a"), 3);
    }

    #[test]
    fn series_are_bounded_and_values_cut() {
        static F: Family = Family::counter("t_bounded_total", "b", &["source", "k"]);
        for i in 0..MAX_SERIES_PER_FAMILY + 10 {
            F.inc(&["s", &i.to_string()]);
        }
        assert_eq!(F.lock().len(), MAX_SERIES_PER_FAMILY + 1);
        assert_eq!(F.get(&["other", "other"]), 10);
        let long = "x".repeat(500);
        static G: Family = Family::counter("t_long_total", "l", &["source"]);
        G.inc(&[&long]);
        let key = G.lock().keys().next().unwrap().clone();
        assert_eq!(key[0].len(), MAX_LABEL_VALUE_CHARS);
    }

    #[test]
    fn catalogue_follows_the_conventions() {
        let mut names = std::collections::HashSet::new();
        for f in ALL {
            assert!(names.insert(f.name), "{} declared twice", f.name);
            assert!(f.name.starts_with("fhirhose_"), "{}", f.name);
            assert_eq!(f.labels.first(), Some(&"source"), "{}", f.name);
            match f.kind {
                Kind::Counter => assert!(f.name.ends_with("_total"), "{}", f.name),
                Kind::Histogram => {
                    assert!(f.name.ends_with("_seconds"), "{}", f.name);
                    assert!(f.buckets.windows(2).all(|w| w[0] < w[1]), "{}", f.name);
                }
            }
            assert!(!f.help.is_empty());
        }
    }

    #[test]
    fn snapshot_serializes_series_with_labels() {
        static S: Family = Family::counter("t_snap_total", "s", &["source", "table"]);
        S.add(&["src", "patient"], 7);
        let snap = S.snapshot();
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json[0]["labels"]["table"], "patient");
        assert_eq!(json[0]["value"], 7);
        assert!(json[0].get("count").is_none());
    }
}
