//! The operator commands: `certs`, `serve`, `status`, `panic-policy`,
//! `resume`, `transfer-leader`, and `member` (add, promote, remove, list).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use ha_core::metrics::AvailabilityReport;
use ha_core::protocol::{ClientRequest, ClientResponse, StatusView};
use ha_core::sm::PanicPolicy;
use ha_core::sm::Replicated;
use ha_core::types::{LogIndex, NodeId, Term};
use serde_json::json;

use super::{ClientArgs, Outcome, emit, program, usage_error};
use crate::Server;

/// The commands every service has.
#[derive(Subcommand, Debug)]
pub enum OpsCommand {
    /// Create a cluster CA (only if neither ca.pem nor ca.key exists) and
    /// node and client certificates (idempotent: existing files are kept).
    Certs(CertsArgs),
    /// Run one node in the foreground until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// One JSON status line per reachable node.
    Status {
        #[allow(missing_docs)] // The flattened options document themselves.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What the cluster does when a command fails (panics): `continue`
    /// (the default) answers it as failed and goes on; `halt` then refuses
    /// every command and query until `resume`. Replicated: every node
    /// switches at the same log entry.
    PanicPolicy {
        /// continue or halt.
        #[arg(value_enum)]
        policy: PolicyArg,
        #[allow(missing_docs)] // The flattened options document themselves.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a cluster halted after a failed command (`status` shows
    /// `halted` and where): the state stays as that command left it, and
    /// commands and queries are served again.
    Resume {
        /// The log index the cluster halted at.
        #[arg(long)]
        index: u64,
        #[allow(missing_docs)] // The flattened options document themselves.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Membership changes: each answers once the change is committed, with
    /// the configuration; one change at a time (another gets "busy").
    Member {
        #[allow(missing_docs)] // The subcommands document themselves.
        #[command(subcommand)]
        op: MemberOp,
    },
    /// Hand leadership to node ID, or (no ID) to the most up-to-date voter;
    /// answers with the new leader once it leads.
    TransferLeader {
        /// The voter to hand over to.
        id: Option<u64>,
        #[allow(missing_docs)] // The flattened options document themselves.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `member`'s subcommands.
#[derive(Subcommand, Debug)]
pub enum MemberOp {
    /// Add node ID (started with `serve --join`) listening at HOST:PORT as a
    /// learner, wait until it has caught up, then promote it to voter.
    Add {
        /// The new node's id.
        id: u64,
        /// Where it listens, HOST:PORT (HOST may be a DNS name).
        addr: String,
        /// Leave it a learner (it receives the log, never votes).
        #[arg(long)]
        learner: bool,
        #[allow(missing_docs)] // The flattened options document themselves.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make learner ID a voter once it has caught up.
    Promote {
        /// The learner's id.
        id: u64,
        #[allow(missing_docs)] // The flattened options document themselves.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove voter or learner ID (a leader hands leadership over first).
    Remove {
        /// The node's id.
        id: u64,
        #[allow(missing_docs)] // The flattened options document themselves.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The configuration committed on the leader, with each member's
    /// address and role.
    List {
        #[allow(missing_docs)] // The flattened options document themselves.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Options of `certs`.
#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Where to write them.
    #[arg(long)]
    dir: PathBuf,
    /// Node ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<u64>,
    /// More names for node certificates, ID=HOST,... (a DNS name or an IP
    /// address; an id may repeat): the hosts clients dial nodes by on
    /// other machines, which the nodes' certificates must carry.
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
}

/// Options of `serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// This node's id (from 1).
    #[arg(long)]
    id: u64,
    /// Where to listen, HOST:PORT.
    #[arg(long)]
    listen: String,
    /// The initial voters, ID=HOST:PORT,... (may include this node). Read
    /// only when the data dir is new; afterwards the stored voters are used,
    /// --peers may be left out, and a different --peers is refused.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Where the node keeps its log and snapshots.
    #[arg(long)]
    data_dir: PathBuf,
    /// Where the certificates are (from `certs`).
    #[arg(long)]
    tls_dir: PathBuf,
    /// Start as a node that is not a member yet and waits to be added
    /// (`member add`); takes no --peers.
    #[arg(long)]
    join: bool,
    /// Heartbeat interval in ms.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Election timeout range in ms, MIN-MAX.
    #[arg(long, default_value = "150-300")]
    election_timeout_ms: String,
    /// Take a snapshot (and compact the log) every N applied entries.
    #[arg(long, default_value_t = crate::server::DEFAULT_SNAPSHOT_EVERY)]
    snapshot_every: u64,
    /// Serve Prometheus metrics at /metrics, and /healthz and /readyz, on
    /// HOST:PORT (a bare PORT binds 127.0.0.1).
    #[arg(long)]
    metrics: Option<String>,
    /// Refuse client requests larger than N bytes (before they reach the
    /// log), like etcd's --max-request-bytes.
    #[arg(long, default_value_t = ha_quic::transport::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Refuse writes ("no space"; reads go on) while the log beyond the last
    /// snapshot holds more than N bytes, like etcd's --quota-backend-bytes.
    /// 0: no quota.
    #[arg(long, default_value_t = ha_core::node::DEFAULT_STORAGE_QUOTA_BYTES)]
    storage_quota_bytes: u64,
    /// Serve linearizable reads on the leader's lease where it holds (no
    /// heartbeat round per read). Safe while no two nodes' clocks differ in
    /// rate by more than --max-clock-drift-ppm and no clock stops (a
    /// suspended machine, a paused or migrated VM). Set it, and the same
    /// timing flags, on every node.
    #[arg(long)]
    lease_reads: bool,
    /// The clock-rate drift bound lease reads assume, in parts per million
    /// (1000..=500000; default 10000): the lease is the minimum election
    /// timeout less one tick, shortened by it. Only with --lease-reads.
    #[arg(long)]
    max_clock_drift_ppm: Option<u32>,
}

/// The clock-drift bound lease reads assume unless told: 1% (ten times
/// two NTP-slewed clocks' largest difference).
pub const DEFAULT_CLOCK_DRIFT_PPM: u32 = 10_000;

impl ServeArgs {
    /// The election timeout range; exits 2 when it is not `MIN-MAX`.
    fn election_timeout(&self) -> (Duration, Duration) {
        self.election_timeout_ms
            .split_once('-')
            .and_then(|(l, h)| Some((l.trim().parse::<u64>().ok()?, h.trim().parse::<u64>().ok()?)))
            .map(|(l, h)| (Duration::from_millis(l), Duration::from_millis(h)))
            .unwrap_or_else(|| usage_error("--election-timeout-ms: write a range like 150-300"))
    }
}

/// `panic-policy`'s argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// Answer a failed command as failed and go on.
    Continue,
    /// Stop applying after a failed command until `resume`.
    Halt,
}

impl OpsCommand {
    /// Runs the command for a service of `T`; returns the exit status.
    pub async fn run<T: Replicated>(self) -> i32 {
        match self {
            OpsCommand::Certs(a) => certs(a),
            OpsCommand::Serve(a) => serve::<T>(a).await,
            OpsCommand::Status { client } => status(&client).await,
            OpsCommand::PanicPolicy { policy, client } => {
                let p = match policy {
                    PolicyArg::Continue => ha_core::sm::PanicPolicy::Continue,
                    PolicyArg::Halt => ha_core::sm::PanicPolicy::Halt,
                };
                emit(match client.core_client::<T>().set_panic_policy(p).await {
                    Ok(()) => Outcome::Done(json!({"ok": true, "panic_policy": p.name()})),
                    Err(e) => Outcome::Failed(e),
                })
            }
            OpsCommand::Resume { index, client } => {
                emit(match client.core_client::<T>().resume(index).await {
                    Ok(at) => Outcome::Done(json!({"ok": true, "resumed_at": at})),
                    Err(e) => Outcome::Failed(e),
                })
            }
            OpsCommand::Member { op } => member::<T>(op).await,
            OpsCommand::TransferLeader { id, client } => {
                emit(match client.core_client::<T>().transfer_leader(id).await {
                    Ok(leader) => Outcome::Done(json!({"ok": true, "leader": leader})),
                    Err(e) => Outcome::Failed(e),
                })
            }
        }
    }
}

/// `member`: one JSON line with the configuration the leader committed.
async fn member<T: Replicated>(op: MemberOp) -> i32 {
    let r = match op {
        MemberOp::Add {
            id,
            addr,
            learner,
            client,
        } => {
            if id == 0 {
                usage_error("member add: node ids start at 1");
            }
            if let Err(why) = ha_core::raft::check_addr(&addr) {
                usage_error(format!("member add: {why}"));
            }
            client
                .core_client::<T>()
                .member_add(id, &addr, learner)
                .await
        }
        MemberOp::Promote { id, client } => client.core_client::<T>().member_promote(id).await,
        MemberOp::Remove { id, client } => client.core_client::<T>().member_remove(id).await,
        MemberOp::List { client } => client.core_client::<T>().members().await,
    };
    emit(match r {
        Ok(m) => Outcome::Done(members_json(&m)),
        Err(e) => Outcome::Failed(e),
    })
}

/// `{"ok":true,"members":[{"id":1,"addr":"HOST:PORT","role":"voter"},...],
/// "leader":ID}`.
fn members_json(m: &ha_core::Members) -> serde_json::Value {
    let members: Vec<_> = m
        .members
        .iter()
        .map(|x| json!({"id": x.id, "addr": x.addr, "role": x.role.name()}))
        .collect();
    json!({"ok": true, "members": members, "leader": m.leader})
}

fn certs(a: CertsArgs) -> i32 {
    let ids: Vec<_> = a.nodes.iter().map(|n| ha_core::types::NodeId(*n)).collect();
    if ids.iter().any(|i| i.0 == 0) {
        usage_error("--nodes: node ids start at 1");
    }
    let mut hosts = ha_quic::certs::NodeHosts::new();
    for h in &a.hosts {
        let Some((id, host)) = h.split_once('=') else {
            usage_error(format!("--hosts {h:?}: expected ID=HOST"));
        };
        let id = id
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|i| *i != 0)
            .unwrap_or_else(|| usage_error(format!("--hosts {h:?}: {id:?} is not a node id")));
        hosts
            .entry(ha_core::types::NodeId(id))
            .or_default()
            .push(host.trim().to_string());
    }
    match ha_quic::certs::create_cluster_certs_with_hosts(&a.dir, &ids, &hosts) {
        Ok(report) => {
            for w in &report.warnings {
                eprintln!("{}: warning: {w}", program());
            }
            for p in &report.written {
                eprintln!("wrote {}", p.display());
            }
            println!(
                "{}",
                json!({"ok": true, "dir": a.dir, "created": report.written})
            );
            0
        }
        Err(e) => usage_error(e),
    }
}

/// `serve`: runs the node until a signal; returns the exit status (2 for
/// any configuration mistake, with one line naming it; 1 when the node
/// stopped by itself).
async fn serve<T: Replicated>(a: ServeArgs) -> i32 {
    let (lo, hi) = a.election_timeout();
    let server = Server::<T>::builder()
        .program(program())
        .id(a.id)
        .listen(a.listen.clone())
        .peers(a.peers.iter().cloned())
        .join(a.join)
        .data_dir(a.data_dir.clone())
        .tls_dir(a.tls_dir.clone())
        .heartbeat(Duration::from_millis(a.heartbeat_ms))
        .election_timeout(lo, hi)
        .snapshot_every(a.snapshot_every)
        .max_request_bytes(a.max_request_bytes)
        .storage_quota_bytes(a.storage_quota_bytes)
        .lease_reads(match (a.lease_reads, a.max_clock_drift_ppm) {
            (true, ppm) => Some(ppm.unwrap_or(DEFAULT_CLOCK_DRIFT_PPM)),
            (false, None) => None,
            (false, Some(_)) => usage_error("--max-clock-drift-ppm: only with --lease-reads"),
        });
    let server = match &a.metrics {
        Some(m) => server.http(m.clone()),
        None => server,
    };
    let server = server.start().await.unwrap_or_else(|e| usage_error(e));
    eprintln!(
        "{}: node {} listening on {}",
        program(),
        a.id,
        server.local_addr()
    );
    match server.run_until_signal().await {
        Ok(crate::Stopped::Signal(hand_over)) => {
            match hand_over {
                crate::HandOver::NotLeader => {}
                crate::HandOver::To(to) => eprintln!(
                    "{}: node {} handed leadership over to node {to} before stopping",
                    program(),
                    a.id
                ),
                crate::HandOver::Failed(why) => eprintln!(
                    "{}: node {} could not hand leadership over before stopping: {why}",
                    program(),
                    a.id
                ),
            }
            eprintln!("{}: node {} stopped", program(), a.id);
            0
        }
        Ok(crate::Stopped::Node(why)) => {
            eprintln!("{}: node stopped: {why}", program());
            1
        }
        Err(e) => usage_error(format!("cannot watch signals: {e}")),
    }
}

/// One `status` line, with the contract's field names and order (the wire
/// type's `last_index` is the contract's `last_log_index`).
#[derive(serde::Serialize)]
struct StatusLine<'a> {
    id: NodeId,
    role: &'a str,
    term: Term,
    leader: Option<NodeId>,
    commit_index: LogIndex,
    applied_index: LogIndex,
    last_log_index: LogIndex,
    snapshot_index: LogIndex,
    voters: &'a [NodeId],
    learners: &'a [NodeId],
    availability: &'a AvailabilityReport,
    /// Present while the node repairs damaged storage from its peers.
    #[serde(skip_serializing_if = "Option::is_none")]
    repairing: Option<&'a str>,
    /// Present while the service is halted after a failed command.
    #[serde(skip_serializing_if = "Option::is_none")]
    halted: Option<&'a str>,
    /// What a failed command does: continue or halt.
    #[serde(skip_serializing_if = "Option::is_none")]
    panic_policy: Option<&'a str>,
    /// Present when the determinism check found a command that is not.
    #[serde(skip_serializing_if = "is_zero")]
    divergences: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The JSON line `status` prints for a node's status.
pub fn status_line(s: &StatusView) -> String {
    let n = &s.node;
    let line = StatusLine {
        id: n.id,
        role: s.role_name(),
        term: n.term,
        leader: n.leader,
        commit_index: n.commit_index,
        applied_index: n.applied_index,
        last_log_index: n.last_index,
        snapshot_index: n.snapshot_index,
        voters: &s.voters,
        learners: &s.learners,
        availability: &s.availability,
        repairing: n.repair_found.as_deref(),
        halted: n.halted.as_deref(),
        panic_policy: n.panic_policy.map(PanicPolicy::name),
        divergences: n.divergences,
    };
    serde_json::to_string(&line).expect("a status line encodes")
}

/// `status`: one JSON line per reachable node; the rest on stderr. Works
/// against a cluster of any replicated type.
async fn status(c: &ClientArgs) -> i32 {
    let identity = c.identity();
    let timeout = Duration::from_millis(c.timeout_ms);
    let mut reachable = 0;
    for addr in c.addrs() {
        let asked = async {
            let to = ha_quic::Resolver::system()
                .resolve(addr.as_str(), true)
                .await?;
            let q = ha_quic::QuicClient::connect(to, addr.host(), &identity)
                .await
                .map_err(|e| e.to_string())?;
            q.request(&ClientRequest::Status)
                .await
                .map_err(|e| e.to_string())
        };
        let me = program();
        match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(ClientResponse::Status(s))) => {
                reachable += 1;
                println!("{}", status_line(&s));
            }
            Ok(Ok(other)) => eprintln!("{me}: node at {addr} answered oddly: {other:?}"),
            Ok(Err(e)) => eprintln!("{me}: node at {addr} unreachable: {e}"),
            Err(_) => eprintln!("{me}: node at {addr} unreachable: no answer in {timeout:?}"),
        }
    }
    if reachable > 0 { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::node::NodeStatus;
    use ha_core::raft::RoleKind;
    use serde_json::Value;

    #[test]
    fn a_status_line_uses_the_contract_field_names() {
        let s = StatusView {
            node: NodeStatus {
                id: NodeId(1),
                role: RoleKind::PreCandidate,
                term: Term(7),
                leader: None,
                commit_index: LogIndex(120),
                applied_index: LogIndex(120),
                last_index: LogIndex(121),
                snapshot_index: LogIndex(100),
                repairing: false,
                repair_found: None,
                halted: None,
                panic_policy: Some(PanicPolicy::Continue),
                divergences: 0,
                stopped: None,
            },
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            learners: vec![],
            availability: AvailabilityReport::default(),
        };
        let line = status_line(&s);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["last_log_index"], 121, "{line}");
        assert_eq!(v["panic_policy"], "continue", "{line}");
        assert!(
            v.get("divergences").is_none(),
            "shown only when found: {line}"
        );
        assert!(v.get("last_index").is_none(), "{line}");
        assert_eq!(v["role"], "candidate");
        assert!(line.starts_with(r#"{"id":1,"role":"candidate","term":7,"leader":null,"#));
    }
}
