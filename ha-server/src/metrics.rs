//! A node's numbers in the Prometheus text format (version 0.0.4), rendered
//! by `prometheus-client` at each scrape.
//!
//! Owns: which metrics exist, their names, help texts and labels. The node
//! keeps the numbers ([`NodeHandle::status`], [`NodeHandle::metrics`], the
//! transport's counters); this module only reads them, so a scrape never
//! blocks the node and never changes what it does.
//!
//! Metrics (all prefixed `ha_`):
//! - `term`, `role{role=..}`, `commit_index`, `applied_index`, `last_index`
//! - `elections_won_total`, `proposals_total`, `applied_entries_total`,
//!   `refused_no_space_total`
//! - `commit_latency_seconds` (histogram: proposal to answer, as leader),
//!   `fsync_latency_seconds` (histogram: one batch appended and synced),
//!   `snapshot_encode_seconds` (histogram: one snapshot of the state
//!   machine encoded, while apply waits)
//! - `snapshots_total`, `snapshot_failures_total`, `snapshot_index`
//! - `log_bytes`, `storage_quota_bytes` (0: none)
//! - `leader_gap_seconds` (histogram, as a follower: gaps between two
//!   messages from the same leader), `leader_gap_max_seconds`
//! - `lease_reads_total`, `round_reads_total` (linearizable reads served by
//!   the leader's lease, and by a ReadIndex round)
//! - `peer_replication_lag_entries{peer=..}`, `peer_rtt_seconds{peer=..}`
//! - `leaderless_ms`, `failovers_total`, `mttr_ms`, `mtbf_ms`,
//!   `availability` (MTBF / (MTBF + MTTR)), `downtime_planned_ms`,
//!   `downtime_unplanned_ms`, `handoffs_total`, `uptime_ms`,
//!   `maintainability` (downtime / uptime), `downtime_handover_ms` (this
//!   node's own hand-overs), over the node's runs
//! - `transport_dropped_total`, `transport_superseded_total`,
//!   `transport_protocol_errors_total`, `transport_failed_handshakes_total`,
//!   `transport_retries_total`, `transport_refused_connections_total`,
//!   `node_stopped`
//! - `repairing` (1 while the node repairs damaged storage from its peers),
//!   `repairing_info{found=..}` (while it does: what it found, cut to
//!   [`MAX_FOUND_CHARS`] characters)
//! - `halted` (1 while the service is halted after a failed command under
//!   the `halt` panic policy), `determinism_divergences_total` (commands
//!   the debug-build replay check found not deterministic on this node)

use std::fmt;
use std::sync::atomic::Ordering;

use ha_core::metrics::{BUCKETS_MICROS, HistogramSnapshot};
use ha_core::node::{NodeHandle, NodeMetrics, NodeStatus};
use ha_core::raft::RoleKind;
use ha_core::types::NodeId;
use ha_quic::QuicTransport;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Longest `found` label of `ha_repairing_info`, in characters.
pub const MAX_FOUND_CHARS: usize = 512;

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Reads a node and its transport at each scrape.
struct NodeCollector {
    node: NodeHandle,
    transport: QuicTransport,
}

impl fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeCollector")
    }
}

/// A histogram of fixed buckets, as the node keeps it, in seconds.
#[derive(Debug)]
struct Seconds(HistogramSnapshot);

impl EncodeMetric for Seconds {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let bounds = BUCKETS_MICROS
            .iter()
            .map(|b| *b as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds.zip(self.0.counts.iter().copied()).collect();
        let count = self.0.counts.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(
            self.0.sum_micros as f64 / 1e6,
            count,
            &buckets,
            None,
        )
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// One gauge with one label, a sample per `(label value, value)`.
fn labelled(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (String, f64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, v) in samples {
        let labels = [(label.to_string(), value)];
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: HistogramSnapshot,
) -> fmt::Result {
    Seconds(h).encode(e.encode_descriptor(name, help, None, MetricType::Histogram)?)
}

/// The transport's numbers, read at a scrape.
#[derive(Clone, Debug, Default)]
struct TransportNumbers {
    dropped: u64,
    superseded: u64,
    protocol_errors: u64,
    failed_handshakes: u64,
    retries_sent: u64,
    refused_connections: u64,
    rtts: Vec<(NodeId, Duration)>,
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let st = self.transport.stats();
        let t = TransportNumbers {
            dropped: st.dropped_full.load(Ordering::Relaxed),
            superseded: st.dropped_superseded.load(Ordering::Relaxed),
            protocol_errors: st.protocol_errors.load(Ordering::Relaxed),
            failed_handshakes: st.failed_handshakes.load(Ordering::Relaxed),
            retries_sent: st.retries_sent.load(Ordering::Relaxed),
            refused_connections: st.refused_connections.load(Ordering::Relaxed),
            rtts: self.transport.peer_rtts(),
        };
        encode_node(&mut e, &self.node.status(), self.node.metrics(), t)
    }
}

/// Every metric of one node.
fn encode_node(
    e: &mut DescriptorEncoder,
    s: &NodeStatus,
    m: NodeMetrics,
    t: TransportNumbers,
) -> fmt::Result {
    let a = &m.availability;
    let flag = |b: bool| f64::from(u8::from(b));
    labelled(
        e,
        "role",
        "The node's role (1 for the one it has).",
        "role",
        [
            ("leader", RoleKind::Leader),
            ("follower", RoleKind::Follower),
            ("candidate", RoleKind::Candidate),
            ("precandidate", RoleKind::PreCandidate),
        ]
        .map(|(n, r)| (n.to_string(), flag(s.role == r))),
    )?;
    let gauges: [(&str, &str, f64); 20] = [
        ("term", "Current term.", s.term.0 as f64),
        (
            "commit_index",
            "Highest committed index.",
            s.commit_index.0 as f64,
        ),
        (
            "applied_index",
            "Highest applied index.",
            s.applied_index.0 as f64,
        ),
        ("last_index", "Last log index.", s.last_index.0 as f64),
        (
            "snapshot_index",
            "Last index the newest snapshot covers.",
            m.snapshot_index.0 as f64,
        ),
        (
            "leader_gap_max_seconds",
            "As a follower: the longest gap between two messages from the same leader since start.",
            m.leader_gap_max.as_secs_f64(),
        ),
        (
            "leaderless_ms",
            "Time without a writable leader (planned and unplanned), over the node's runs.",
            a.leaderless_ms as f64,
        ),
        (
            "downtime_planned_ms",
            "Downtime from planned hand-offs (transfer, graceful shutdown, membership change), over the node's runs.",
            a.planned_ms as f64,
        ),
        (
            "downtime_unplanned_ms",
            "Downtime from lost leaders, over the node's runs.",
            a.unplanned_ms as f64,
        ),
        (
            "uptime_ms",
            "Time the node ran with the cluster writable, over the node's runs.",
            a.uptime_ms as f64,
        ),
        ("maintainability", "Downtime / uptime.", a.maintainability),
        (
            "downtime_handover_ms",
            "Planned downtime of this node's own hand-overs, as the leader that handed over (summed over the nodes: the cluster's), over the node's runs.",
            a.handover_ms as f64,
        ),
        (
            "log_bytes",
            "Bytes of log entries held since the last snapshot (what the storage quota counts).",
            m.log_bytes as f64,
        ),
        (
            "storage_quota_bytes",
            "The storage quota (0: none); writes are refused at it until a snapshot.",
            m.storage_quota_bytes.unwrap_or(0) as f64,
        ),
        (
            "mttr_ms",
            "Mean time to recover a leader.",
            a.mttr_ms as f64,
        ),
        (
            "mtbf_ms",
            "Mean time between leader losses.",
            a.mtbf_ms as f64,
        ),
        ("availability", "MTBF / (MTBF + MTTR).", a.availability),
        (
            "node_stopped",
            "1 if the node stopped (storage failure).",
            flag(s.stopped.is_some()),
        ),
        (
            "halted",
            "1 while the service is halted after a failed command.",
            flag(s.halted.is_some()),
        ),
        (
            "repairing",
            "1 while the node repairs damaged storage from its peers.",
            flag(s.repair_found.is_some()),
        ),
    ];
    for (name, help, v) in gauges {
        gauge(e, name, help, v)?;
    }
    if let Some(found) = &s.repair_found {
        labelled(
            e,
            "repairing_info",
            "What the node found damaged (while it repairs).",
            "found",
            [(found.chars().take(MAX_FOUND_CHARS).collect(), 1.0)],
        )?;
    }
    encode_counters(e, s, &m, &t)?;
    encode_peers_and_latency(e, m, t)
}

/// The node's counters and the transport's.
fn encode_counters(
    e: &mut DescriptorEncoder,
    s: &NodeStatus,
    m: &NodeMetrics,
    t: &TransportNumbers,
) -> fmt::Result {
    let a = &m.availability;
    let counters: [(&str, &str, u64); 17] = [
        (
            "handoffs",
            "Planned periods without a writable leader (hand-offs, including failed ones), over the node's runs.",
            a.handoffs,
        ),
        (
            "elections_won",
            "Times this node became leader.",
            m.elections_won,
        ),
        ("proposals", "Proposals accepted as leader.", m.proposals),
        (
            "refused_no_space",
            "Commands refused over the storage quota.",
            m.refused_no_space,
        ),
        ("applied_entries", "Entries applied.", m.applied_entries),
        (
            "failovers",
            "Leader losses followed by a new leader.",
            a.failovers,
        ),
        ("snapshots", "Snapshots taken.", m.snapshots),
        (
            "snapshot_failures",
            "Snapshots that failed, encoding or writing (retried after a backoff).",
            m.snapshot_failures,
        ),
        (
            "lease_reads",
            "Linearizable reads served by the leader's lease.",
            m.lease_reads,
        ),
        (
            "round_reads",
            "Linearizable reads confirmed by a ReadIndex round.",
            m.round_reads,
        ),
        (
            "determinism_divergences",
            "Commands found not deterministic here.",
            s.divergences,
        ),
        (
            "transport_dropped",
            "Messages dropped because a peer's send queue was full.",
            t.dropped,
        ),
        (
            "transport_superseded",
            "Messages dropped from a peer's stream that a newer stream of that peer replaced.",
            t.superseded,
        ),
        (
            "transport_protocol_errors",
            "Connections closed for breaking the protocol.",
            t.protocol_errors,
        ),
        (
            "transport_failed_handshakes",
            "Connection attempts whose TLS handshake failed (no or a foreign certificate).",
            t.failed_handshakes,
        ),
        (
            "transport_retries",
            "Connection attempts answered with a QUIC Retry (address validation while handshake slots ran short).",
            t.retries_sent,
        ),
        (
            "transport_refused_connections",
            "Connection attempts refused by a connection or handshake cap.",
            t.refused_connections,
        ),
    ];
    for (name, help, v) in counters {
        counter(e, name, help, v)?;
    }
    Ok(())
}

/// Per-peer gauges and the latency histograms.
fn encode_peers_and_latency(
    e: &mut DescriptorEncoder,
    m: NodeMetrics,
    t: TransportNumbers,
) -> fmt::Result {
    labelled(
        e,
        "peer_replication_lag_entries",
        "Entries a follower is behind (leader only).",
        "peer",
        m.peers.iter().map(|p| (p.id.0.to_string(), p.lag as f64)),
    )?;
    labelled(
        e,
        "peer_rtt_seconds",
        "Round-trip time to a peer (QUIC estimate).",
        "peer",
        t.rtts
            .iter()
            .map(|(p, rtt)| (p.0.to_string(), rtt.as_secs_f64())),
    )?;
    histogram(
        e,
        "commit_latency_seconds",
        "From a proposal's arrival to its answer, on the leader.",
        m.commit_latency,
    )?;
    histogram(
        e,
        "fsync_latency_seconds",
        "Appending and syncing one batch.",
        m.fsync_latency,
    )?;
    histogram(
        e,
        "leader_gap_seconds",
        "As a follower: gaps between two messages from the same leader (heartbeats bound them).",
        m.leader_gap,
    )?;
    histogram(
        e,
        "snapshot_encode_seconds",
        "Encoding one snapshot of the state machine, failed ones too (apply and reads wait; consensus goes on).",
        m.snapshot_encode,
    )
}

/// The metrics of one node: a registry whose collector reads the node at
/// each scrape.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Metrics of `node` and its `transport`.
    pub fn new(node: NodeHandle, transport: QuicTransport) -> Metrics {
        let mut registry = Registry::with_prefix("ha");
        registry.register_collector(Box::new(NodeCollector { node, transport }));
        Metrics { registry }
    }

    /// Every metric, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::metrics::{AvailabilityReport, Histogram};
    use ha_core::node::PeerProgress;
    use ha_core::types::{LogIndex, Term};

    /// Fixed numbers, for rendering without a node.
    #[derive(Debug)]
    struct Fixed {
        status: NodeStatus,
        metrics: NodeMetrics,
        transport: TransportNumbers,
    }

    impl Collector for Fixed {
        fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
            encode_node(
                &mut e,
                &self.status,
                self.metrics.clone(),
                self.transport.clone(),
            )
        }
    }

    fn render(found: Option<&str>) -> String {
        let fsync = Histogram::default();
        fsync.observe(Duration::from_micros(80));
        fsync.observe(Duration::from_micros(3_000));
        fsync.observe(Duration::from_secs(3));
        let fixed = Fixed {
            status: NodeStatus {
                id: NodeId(1),
                role: RoleKind::Leader,
                term: Term(7),
                leader: Some(NodeId(1)),
                commit_index: LogIndex(120),
                applied_index: LogIndex(119),
                last_index: LogIndex(121),
                snapshot_index: LogIndex(100),
                repairing: found.is_some(),
                repair_found: found.map(str::to_string),
                halted: None,
                panic_policy: None,
                divergences: 0,
                stopped: None,
            },
            metrics: NodeMetrics {
                elections_won: 2,
                proposals: 300,
                refused_no_space: 0,
                applied_entries: 119,
                snapshots: 1,
                snapshot_failures: 0,
                lease_reads: 0,
                leader_gap: Default::default(),
                leader_gap_max: std::time::Duration::ZERO,
                round_reads: 0,
                snapshot_index: LogIndex(100),
                log_bytes: 1_000,
                storage_quota_bytes: Some(4_000),
                commit_latency: HistogramSnapshot::default(),
                fsync_latency: fsync.snapshot(),
                snapshot_encode: HistogramSnapshot::default(),
                availability: AvailabilityReport {
                    leaderless_ms: 412,
                    failovers: 2,
                    mttr_ms: 206,
                    mtbf_ms: 95_000,
                    availability: 0.9978,
                    planned_ms: 30,
                    unplanned_ms: 382,
                    handoffs: 1,
                    uptime_ms: 190_000,
                    maintainability: 0.0021,
                    handover_ms: 12,
                },
                voters: vec![NodeId(1), NodeId(2), NodeId(3)],
                learners: vec![],
                peers: vec![PeerProgress {
                    id: NodeId(2),
                    match_index: LogIndex(118),
                    lag: 3,
                }],
            },
            transport: TransportNumbers {
                dropped: 4,
                rtts: vec![(NodeId(2), Duration::from_micros(250))],
                ..TransportNumbers::default()
            },
        };
        let mut registry = Registry::with_prefix("ha");
        registry.register_collector(Box::new(fixed));
        Metrics { registry }.render().unwrap()
    }

    #[test]
    fn every_metric_is_rendered_in_the_text_format() {
        let o = render(None);
        for line in [
            "ha_term 7.0",
            "ha_role{role=\"leader\"} 1.0",
            "ha_role{role=\"follower\"} 0.0",
            "ha_commit_index 120.0",
            "ha_applied_index 119.0",
            "ha_availability 0.9978",
            "ha_failovers_total 2",
            "ha_handoffs_total 1",
            "ha_downtime_planned_ms 30.0",
            "ha_downtime_unplanned_ms 382.0",
            "ha_uptime_ms 190000.0",
            "ha_maintainability 0.0021",
            "ha_downtime_handover_ms 12.0",
            "ha_log_bytes 1000.0",
            "ha_storage_quota_bytes 4000.0",
            "ha_elections_won_total 2",
            "ha_transport_dropped_total 4",
            "ha_peer_replication_lag_entries{peer=\"2\"} 3.0",
            "ha_peer_rtt_seconds{peer=\"2\"} 0.00025",
            "ha_repairing 0.0",
            "ha_halted 0.0",
            "# TYPE ha_fsync_latency_seconds histogram",
            "ha_fsync_latency_seconds_bucket{le=\"0.0001\"} 1",
            "ha_fsync_latency_seconds_bucket{le=\"0.005\"} 2",
            "ha_fsync_latency_seconds_bucket{le=\"1\"} 2",
            "ha_fsync_latency_seconds_bucket{le=\"+Inf\"} 3",
            "ha_fsync_latency_seconds_count 3",
        ] {
            assert!(o.lines().any(|l| l == line), "no line {line:?} in\n{o}");
        }
        assert!(!o.contains("ha_repairing_info"), "{o}");
    }

    /// Every `ha_*` name in `text`.
    fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("ha_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            // Not the tail of a longer word (e.g. `sha_`).
            let before = rest[..at].chars().last();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                names.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
        names
    }

    /// The Grafana dashboard and the alert rules in `deploy/` name only
    /// metrics a node renders: renaming one breaks this test, not an
    /// operator's dashboard.
    #[test]
    fn the_dashboard_and_alerts_name_only_rendered_metrics() {
        let rendered = render(Some("x"));
        let known: std::collections::BTreeSet<String> = rendered
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect();
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
        let dashboard =
            std::fs::read_to_string(format!("{deploy}/grafana/ha-dashboard.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
        let panels = json["panels"].as_array().expect("panels");
        assert!(panels.len() >= 10, "{} panels", panels.len());
        let mut ids = std::collections::BTreeSet::new();
        for p in panels {
            assert!(ids.insert(p["id"].as_u64().expect("an id")), "duplicate id");
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "a panel without a query: {p}");
        }
        for title in [
            "Replication lag",
            "fsync latency",
            "Commit latency",
            "planned and unplanned",
        ] {
            assert!(
                panels
                    .iter()
                    .any(|p| p["title"].as_str().unwrap().contains(title)),
                "no panel on {title}"
            );
        }
        let alerts = std::fs::read_to_string(format!("{deploy}/prometheus/alerts.yml")).unwrap();
        for (file, text) in [("dashboard", &dashboard), ("alerts", &alerts)] {
            let names = metric_names(text);
            assert!(names.len() >= 5, "{file}: {names:?}");
            for n in names {
                assert!(
                    known.contains(&n),
                    "{file} names {n}, which no node renders"
                );
            }
        }
    }

    /// The alert rules pass Prometheus' own checker and their unit tests
    /// (`promtool`, from Debian's `prometheus` package; `scripts/test`
    /// installs it).
    #[test]
    fn the_alert_rules_pass_promtool() {
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
        for args in [
            ["check", "rules", "alerts.yml"],
            ["test", "rules", "alerts_test.yml"],
        ] {
            let out = std::process::Command::new("promtool")
                .args(args)
                .current_dir(deploy)
                .output()
                .unwrap_or_else(|e| {
                    panic!(
                        "promtool is needed to check the alert rules ({e}): run scripts/test, \
                         which installs Debian's prometheus package, or `apt-get install prometheus`"
                    )
                });
            assert!(
                out.status.success(),
                "promtool {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn what_a_repair_found_is_an_escaped_label_cut_to_its_cap() {
        let o = render(Some("wal \"x\\y\"\nat 5"));
        assert!(o.lines().any(|l| l == "ha_repairing 1.0"), "{o}");
        assert!(
            o.contains(r#"ha_repairing_info{found="wal \"x\\y\"\nat 5"} 1.0"#),
            "{o}"
        );
        let o = render(Some(&"d".repeat(10_000)));
        let info = o
            .lines()
            .find(|l| l.starts_with("ha_repairing_info"))
            .unwrap();
        let label = info.split('"').nth(1).expect("a quoted label");
        assert_eq!(label, "d".repeat(MAX_FOUND_CHARS));
    }
}
