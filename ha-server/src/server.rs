//! [`Server`]: one node of any replicated type, started from its options.
//!
//! Owns: the order of a node's start (check options, load certificates,
//! open and lock the data directory, settle the voters, bind sockets, start
//! the node, then serve HTTP) and of its stop (stop the node, close the
//! endpoint, stop HTTP, release the data directory last).
//!
//! Invariants: nothing in the data directory is read or written before
//! every option has been checked and the certificates loaded; the
//! directory is released only after the node stopped writing.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ha_core::metrics::DowntimeHistory;
use ha_core::node::{NodeHandle, NodeOptions, StopReason};
use ha_core::sm::Replicated;
use ha_core::storage::{DataDir, StdFs, WalOptions};
use ha_core::types::NodeId;
use ha_quic::{QuicConfig, QuicNode, QuicTransport};

use crate::ServeError;
use crate::http::{HttpLimits, READY_MAX_APPLY_LAG, Routes};
use crate::peers;

/// Options of a [`Server`]; start one with [`ServerBuilder::start`].
///
/// Required: [`id`](ServerBuilder::id), [`listen`](ServerBuilder::listen),
/// [`data_dir`](ServerBuilder::data_dir), [`tls_dir`](ServerBuilder::tls_dir),
/// and on a node's first start its [`peers`](ServerBuilder::peer) (or
/// [`join`](ServerBuilder::join), for a node to be added to a running
/// cluster). The rest has LAN defaults.
#[must_use]
pub struct ServerBuilder<T> {
    id: u64,
    listen: Option<String>,
    peers: Vec<String>,
    join: bool,
    data_dir: Option<PathBuf>,
    tls_dir: Option<PathBuf>,
    heartbeat: Duration,
    election_timeout: (Duration, Duration),
    snapshot_every: u64,
    http: Option<String>,
    http_limits: HttpLimits,
    ready_max_apply_lag: u64,
    max_request_bytes: usize,
    storage_quota_bytes: u64,
    lease_reads: Option<u32>,
    program: String,
    _type: PhantomData<fn() -> T>,
}

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(50);
/// Default election timeout range: three to six heartbeats. With the
/// node's 10 ms tick a follower notices a dead leader 150–300 ms after it
/// last heard from it, and the first of two followers about 200 ms after.
pub const DEFAULT_ELECTION_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(150), Duration::from_millis(300));
/// Default number of applied entries between snapshots.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;

impl<T: Replicated> ServerBuilder<T> {
    fn new() -> ServerBuilder<T> {
        ServerBuilder {
            id: 0,
            listen: None,
            peers: Vec::new(),
            join: false,
            data_dir: None,
            tls_dir: None,
            heartbeat: DEFAULT_HEARTBEAT,
            election_timeout: DEFAULT_ELECTION_TIMEOUT,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            http: None,
            http_limits: HttpLimits::default(),
            ready_max_apply_lag: READY_MAX_APPLY_LAG,
            max_request_bytes: ha_quic::transport::DEFAULT_MAX_REQUEST_BYTES,
            storage_quota_bytes: ha_core::node::DEFAULT_STORAGE_QUOTA_BYTES,
            lease_reads: None,
            program: crate::cli::program(),
            _type: PhantomData,
        }
    }

    /// This node's id (from 1).
    pub fn id(mut self, id: u64) -> Self {
        self.id = id;
        self
    }

    /// Where to listen for peers and clients, `HOST:PORT` (port 0: any free
    /// port; see [`Server::local_addr`]).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// One initial voter, `ID=HOST:PORT` (may name this node). Read only
    /// when the data directory is new; afterwards the stored voters are
    /// used and a different list is refused.
    pub fn peer(mut self, peer: impl Into<String>) -> Self {
        self.peers.push(peer.into());
        self
    }

    /// Initial voters, each `ID=HOST:PORT` (see [`ServerBuilder::peer`]).
    pub fn peers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, peers: I) -> Self {
        self.peers.extend(peers.into_iter().map(Into::into));
        self
    }

    /// Starts a node that is not a member yet and waits to be added
    /// (`member add`): on its first start it stores that it is in no
    /// configuration, and the leader that adds it brings the configuration
    /// (and where every member listens). Takes no peers. A directory that
    /// already belongs to a member of a cluster is refused.
    pub fn join(mut self, join: bool) -> Self {
        self.join = join;
        self
    }

    /// Where the node keeps its log and snapshots.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Where the cluster's certificates are (`ca.pem`, `node-ID.pem`,
    /// `node-ID.key`).
    pub fn tls_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.tls_dir = Some(dir.into());
        self
    }

    /// Heartbeat interval (default 50 ms).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Election timeout range (default 150–300 ms); both bounds must be
    /// above the heartbeat and rising.
    pub fn election_timeout(mut self, min: Duration, max: Duration) -> Self {
        self.election_timeout = (min, max);
        self
    }

    /// Serve linearizable reads on the leader's lease (dissertation
    /// §6.4.1) where it holds, saving a heartbeat round per read, given
    /// clocks whose rates differ by at most `max_clock_drift_ppm` parts per
    /// million and that never stop (a suspended machine or a paused or
    /// migrated virtual machine stops them: no lease reads there); `None`
    /// (the default): every read takes a round. The lease lasts the minimum
    /// election timeout less one tick, shortened by the drift bound; set
    /// the same, with the same timing, on every node.
    pub fn lease_reads(mut self, max_clock_drift_ppm: Option<u32>) -> Self {
        self.lease_reads = max_clock_drift_ppm;
        self
    }

    /// Take a snapshot (and compact the log) every `n` applied entries
    /// (default 10,000).
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_every = n;
        self
    }

    /// Serve `/metrics`, `/healthz` and `/readyz` over HTTP on `HOST:PORT`
    /// (a bare port binds 127.0.0.1).
    pub fn http(mut self, addr: impl Into<String>) -> Self {
        self.http = Some(addr.into());
        self
    }

    /// Limits of the HTTP listener.
    pub fn http_limits(mut self, limits: HttpLimits) -> Self {
        self.http_limits = limits;
        self
    }

    /// `/readyz` fails while the node's applied index is more than `n`
    /// entries behind its commit index (default 1,000).
    pub fn ready_max_apply_lag(mut self, n: u64) -> Self {
        self.ready_max_apply_lag = n;
        self
    }

    /// Refuse client requests larger than `n` bytes before they reach the
    /// log.
    pub fn max_request_bytes(mut self, n: usize) -> Self {
        self.max_request_bytes = n;
        self
    }

    /// Refuse writes while the log beyond the last snapshot holds more than
    /// `n` bytes (0: no quota).
    pub fn storage_quota_bytes(mut self, n: u64) -> Self {
        self.storage_quota_bytes = n;
        self
    }

    /// The program to name in hints (`ha-kv certs ...`); by default the
    /// running program's name.
    pub fn program(mut self, name: impl Into<String>) -> Self {
        self.program = name.into();
        self
    }

    /// Node timing: the tick, and the heartbeat and election timeout range
    /// in ticks. The tick divides all three (whole milliseconds), so every
    /// setting is kept exactly, and is at most [`MAX_TICK_MS`]: two
    /// followers' election timers then rarely fire in the same tick (a
    /// split vote costs a second round), and a voter's leader lease ends
    /// within a tick of a candidate's timeout (a lease that outlives it by
    /// a coarse tick refuses the pre-vote and costs a second round too).
    fn timing(&self) -> Result<Timing, ServeError> {
        let ms = |d: Duration, option: &'static str| {
            u64::try_from(d.as_millis())
                .ok()
                .filter(|m| *m <= MAX_TIMING_MS)
                .ok_or_else(|| ServeError::invalid(option, format!("at most {MAX_TIMING_MS} ms")))
        };
        let hb = ms(self.heartbeat, "--heartbeat-ms")?;
        let lo = ms(self.election_timeout.0, "--election-timeout-ms")?;
        let hi = ms(self.election_timeout.1, "--election-timeout-ms")?;
        if hb == 0 {
            return Err(ServeError::invalid("--heartbeat-ms", "must be at least 1"));
        }
        if lo <= hb || hi <= lo {
            return Err(ServeError::invalid(
                "--election-timeout-ms",
                format!("{lo}-{hi} must be a rising range above --heartbeat-ms {hb}"),
            ));
        }
        let tick = gcd(gcd(hb, gcd(lo, hi)), MAX_TICK_MS);
        Ok(Timing {
            tick: Duration::from_millis(tick),
            heartbeat_ticks: hb / tick,
            election_min_ticks: lo / tick,
            election_max_ticks: hi / tick,
        })
    }

    /// Every option that can be checked without touching anything.
    fn check(&self) -> Result<Checked, ServeError> {
        if self.id == 0 {
            return Err(ServeError::invalid("--id", "node ids start at 1"));
        }
        if self.snapshot_every == 0 {
            return Err(ServeError::invalid(
                "--snapshot-every",
                "must be at least 1",
            ));
        }
        let limits = ha_quic::transport::QuicLimits {
            max_request_bytes: self.max_request_bytes,
            ..Default::default()
        };
        if let Err(e) = limits.validate(0) {
            return Err(ServeError::invalid("--max-request-bytes", e.to_string()));
        }
        self.http_limits.validate()?;
        let timing = self.timing()?;
        if let Some(ppm) = self.lease_reads {
            let lease = ha_core::raft::LeaseConfig {
                tick_nanos: u64::try_from(timing.tick.as_nanos()).unwrap_or(u64::MAX),
                max_clock_drift_ppm: ppm,
            };
            // The node's own rules, before anything is touched.
            lease
                .check(timing.election_min_ticks, true)
                .map_err(|e| ServeError::invalid("--lease-reads, --max-clock-drift-ppm", e))?;
        }
        let listen_text = self
            .listen
            .clone()
            .ok_or_else(|| ServeError::invalid("--listen", "required: HOST:PORT"))?;
        let listen = peers::parse_addr("--listen", &listen_text)?;
        let mut given = BTreeMap::new();
        for p in &self.peers {
            peers::insert_peer(&mut given, peers::parse_peer(p)?)?;
        }
        let data_dir = self
            .data_dir
            .clone()
            .ok_or_else(|| ServeError::invalid("--data-dir", "required"))?;
        let tls_dir = self
            .tls_dir
            .clone()
            .ok_or_else(|| ServeError::invalid("--tls-dir", "required"))?;
        // A new directory is created only with voters to store in it: a
        // start without them must not leave a directory stamped with this
        // node and cluster behind.
        if self.join && !given.is_empty() {
            return Err(ServeError::invalid(
                "--join",
                "a node that joins takes no --peers: the leader that adds it brings the \
                 configuration",
            ));
        }
        if given.is_empty()
            && !self.join
            && !ha_core::storage::datadir::initialized(&StdFs, &data_dir)
        {
            return Err(ServeError::invalid(
                "--peers",
                format!(
                    "required on a node's first start (data directory {} holds no cluster \
                     configuration yet), unless the node joins a running cluster (--join)",
                    data_dir.display()
                ),
            ));
        }
        let http = self
            .http
            .as_deref()
            .map(crate::http::listen_addr)
            .transpose()?;
        Ok(Checked {
            timing,
            listen_text,
            listen,
            given,
            data_dir,
            tls_dir,
            http,
        })
    }

    /// Checks every option and loads the certificates, binds the sockets
    /// (and starts answering HTTP: `/healthz` at once, `/readyz` once the
    /// node is up), then opens the data directory and starts the node from
    /// it. Recovery (reading the log, restoring the newest snapshot) runs
    /// off the async threads. Must run inside a tokio runtime.
    pub async fn start(self) -> Result<Server<T>, ServeError> {
        let c = self.check()?;
        let me = NodeId(self.id);
        let identity = ha_quic::load_node_identity(&c.tls_dir, me).map_err(|source| {
            ServeError::Certificates {
                dir: c.tls_dir.clone(),
                node: self.id,
                program: self.program.clone(),
                source,
            }
        })?;
        let socket = std::net::UdpSocket::bind(c.listen).map_err(|source| ServeError::Bind {
            option: "--listen",
            addr: c.listen,
            source,
        })?;
        let http = match c.http {
            Some(addr) => {
                let bind = |source| ServeError::Bind {
                    option: "--metrics",
                    addr,
                    source,
                };
                let l = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
                let bound = l.local_addr().map_err(bind)?;
                let routes = Arc::new(Routes::new(self.ready_max_apply_lag));
                let task = tokio::spawn(crate::http::serve(l, routes.clone(), self.http_limits));
                Some(Http {
                    task,
                    addr: bound,
                    routes,
                })
            }
            None => None,
        };
        let snapshot_every = self.snapshot_every;
        let lease_reads = self.lease_reads;
        let quota = self.storage_quota_bytes;
        let max_request_bytes = self.max_request_bytes;
        let join = self.join;
        // The page's poller asks every member for its status as a client
        // of the cluster, with this node's certificate.
        let watch_client = match &http {
            Some(_) => match ha_quic::QuicClientTransport::new(&identity) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!("the live page cannot ask the members: {e}");
                    None
                }
            },
            None => None,
        };
        let data_dir = c.data_dir.clone();
        type Started = (QuicNode, DowntimeHistory, BTreeMap<NodeId, String>);
        let started = tokio::task::spawn_blocking(move || -> Result<Started, ServeError> {
            let dir = DataDir::open_for::<T, _>(&StdFs, &c.data_dir, &identity.cluster_id(), me)?;
            // Read under the directory's lock: no other process saves it.
            let history = crate::downtime::load(&c.data_dir);
            // The stored voters (after storing the given ones on a first
            // start); none for a node that joined.
            let voters = if join {
                peers::joining(&dir)?
            } else {
                peers::voters(&dir, me, &c.listen_text, &c.given)?
            };
            let peer_addrs = peers::resolve_peers(&voters, me);
            let mut members = voters.clone();
            members.entry(me).or_insert_with(|| c.listen_text.clone());
            let mut opts = NodeOptions::new(me, voters.keys().copied());
            // The bootstrap configuration records where its voters listen
            // (each address as stored; one that is not HOST:PORT is left
            // out rather than refused: the transport has it from above).
            opts.membership.addrs = voters
                .iter()
                .filter(|(_, a)| ha_core::raft::check_addr(a).is_ok())
                .map(|(id, a)| (*id, a.clone()))
                .collect();
            opts.joining = voters.is_empty();
            opts.tick = c.timing.tick;
            opts.raft.heartbeat_interval_ticks = c.timing.heartbeat_ticks;
            opts.raft.election_timeout_min_ticks = c.timing.election_min_ticks;
            opts.raft.election_timeout_max_ticks = c.timing.election_max_ticks;
            if let Some(ppm) = lease_reads {
                opts = opts.with_lease_reads(ppm);
                let lease = opts.raft.lease.expect("just set");
                tracing::info!(
                    node = %me,
                    lease_ms = lease.lease_nanos(c.timing.election_min_ticks) as f64 / 1e6,
                    max_clock_drift_ppm = ppm,
                    "lease reads on"
                );
                if 2 * c.timing.heartbeat_ticks + 1 >= c.timing.election_min_ticks {
                    tracing::warn!(node = %me, "the heartbeat interval is more than half the lease: many reads will take a round anyway (a heartbeat of a third of the minimum election timeout keeps the lease)");
                }
            }
            opts.snapshot_every_entries = Some(snapshot_every);
            opts.storage_quota_bytes = (quota > 0).then_some(quota);
            let mut quic = QuicConfig::new(me, c.listen, peer_addrs, identity);
            quic.limits.max_request_bytes = max_request_bytes;
            let node = QuicNode::start_replicated::<T>(
                opts,
                quic,
                Some(socket),
                dir,
                WalOptions::default(),
            )?;
            Ok((node, history, members))
        })
        .await;
        let (node, members) = match started {
            Ok(Ok((node, history, members))) => {
                node.handle().carry_downtime(history);
                (node, members)
            }
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(ServeError::invalid(
                    "--data-dir",
                    format!("starting the node failed: {e}"),
                ));
            }
        };
        if let Some(h) = &http {
            let watch = watch_client
                .map(|client| crate::page::Watch::start(node.handle().clone(), members, client));
            h.routes
                .node_started(node.handle().clone(), node.transport(), watch);
        }
        let (stop_saving, stop) = tokio::sync::oneshot::channel();
        let saver = tokio::spawn(save_downtime(node.handle().clone(), data_dir, stop));
        Ok(Server {
            node: Some(node),
            http,
            downtime: Some((saver, stop_saving)),
            _type: PhantomData,
        })
    }
}

/// Saves the node's downtime totals every [`crate::downtime::SAVE_EVERY`]
/// until `stop` says so or is dropped; then saves them once more (so the
/// last save is of the stopped node's totals, and no earlier one is still
/// under way).
async fn save_downtime(
    node: NodeHandle,
    dir: PathBuf,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut last_error = None;
    let mut every = tokio::time::interval(crate::downtime::SAVE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = every.tick() => {}
        }
        crate::downtime::save_logged(dir.clone(), node.downtime_history(), &mut last_error).await;
    }
    crate::downtime::save_logged(dir, node.downtime_history(), &mut last_error).await;
}

/// Node timing (see [`ServerBuilder::timing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Timing {
    tick: Duration,
    heartbeat_ticks: u64,
    election_min_ticks: u64,
    election_max_ticks: u64,
}

/// The longest node tick: election timers and leases are kept to 10 ms.
const MAX_TICK_MS: u64 = 10;

/// Longest heartbeat or election timeout accepted: one day.
const MAX_TIMING_MS: u64 = 24 * 60 * 60 * 1000;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// What [`ServerBuilder::check`] found.
struct Checked {
    timing: Timing,
    listen_text: String,
    listen: SocketAddr,
    given: BTreeMap<NodeId, String>,
    data_dir: PathBuf,
    tls_dir: PathBuf,
    http: Option<SocketAddr>,
}

/// The HTTP endpoint of a server.
struct Http {
    task: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
    routes: Arc<Routes>,
}

/// Why [`Server::run_until_signal`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// SIGINT or SIGTERM arrived; the node was shut down cleanly, after
    /// handing leadership over if it led.
    Signal(HandOver),
    /// The node stopped by itself (for example its storage failed), for
    /// this reason.
    Node(StopReason),
}

/// What a stopping node did about its leadership ([`Server::hand_over`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandOver {
    /// It did not lead: nothing to hand over.
    NotLeader,
    /// This node handed leadership to that one, which leads now.
    To(NodeId),
    /// The hand-over failed (why); the cluster elects a leader after an
    /// election timeout, as after a crash.
    Failed(String),
}

/// A running node of type `T`: its QUIC endpoint for peers and clients,
/// its data directory, and its HTTP endpoint when one was asked for.
pub struct Server<T> {
    node: Option<QuicNode>,
    http: Option<Http>,
    /// The task saving the downtime totals, and what stops it.
    downtime: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Replicated> Server<T> {
    /// Options for a server of `T`.
    pub fn builder() -> ServerBuilder<T> {
        ServerBuilder::new()
    }

    fn node(&self) -> &QuicNode {
        self.node
            .as_ref()
            .expect("a server's node is there until it is dropped")
    }

    /// The node (status, metrics, proposals in process).
    pub fn handle(&self) -> &NodeHandle {
        self.node().handle()
    }

    /// The endpoint's transport (connection state, counters).
    pub fn transport(&self) -> QuicTransport {
        self.node().transport()
    }

    /// Where peers and clients reach the node.
    pub fn local_addr(&self) -> SocketAddr {
        self.node().local_addr()
    }

    /// Where the HTTP endpoint listens, when there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.addr)
    }

    /// Runs until SIGINT or SIGTERM, or until the node stops by itself;
    /// then shuts down. On a signal, a leader first hands leadership to the
    /// most up-to-date voter ([`Server::hand_over`]), so a planned restart
    /// costs the cluster no election timeout. Fails only when the signals
    /// cannot be watched.
    pub async fn run_until_signal(self) -> Result<Stopped, std::io::Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut status = self.handle().watch_status();
        let stopped = tokio::select! {
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
            r = status.wait_for(|s| s.stopped.is_some()) => Some(match r {
                Ok(s) => s.stopped.clone().unwrap_or(StopReason::Shutdown),
                Err(_) => StopReason::Failed("the node task ended without saying why".into()),
            }),
        };
        let why = match stopped {
            Some(reason) => Stopped::Node(reason),
            None => {
                if let Some(h) = &self.http {
                    // Probes see the node going while it hands over.
                    h.routes.stopping();
                }
                Stopped::Signal(self.hand_over().await)
            }
        };
        self.shutdown().await;
        Ok(why)
    }

    /// If this node leads, hands leadership to the most up-to-date voter
    /// and waits until that node leads (at most two election timeouts; the
    /// node gives up sooner if the target cannot win), then, at most a
    /// second more, until this node sees an entry of the new leader's term
    /// committed (the hand-off's end in its accounting). A node that does not
    /// lead, or a transfer that fails, is logged and left as it is: the
    /// cluster then elects a leader after an election timeout, as after a
    /// crash.
    pub async fn hand_over(&self) -> HandOver {
        let node = self.handle();
        if node.status().role != ha_core::raft::RoleKind::Leader {
            return HandOver::NotLeader;
        }
        let limit = Duration::from_secs(10);
        match tokio::time::timeout(limit, node.transfer_leadership(None)).await {
            Ok(Ok(to)) => {
                // Until the new leader's first entry is committed (a round
                // or two): this node's accounting then sees the hand-off
                // end, and its held writes have gone to the new leader.
                node.wait_writable(Duration::from_secs(1)).await;
                HandOver::To(to)
            }
            Ok(Err(ha_core::node::NodeError::NotLeader { .. })) => HandOver::NotLeader,
            Ok(Err(e)) => HandOver::Failed(e.to_string()),
            Err(_) => HandOver::Failed(format!("no new leader within {limit:?}")),
        }
    }

    /// Stops the HTTP endpoint first (probes then see the node go), then
    /// the node and its QUIC endpoint; the data directory is released once
    /// the node stopped writing.
    pub async fn shutdown(mut self) {
        if let Some(h) = self.http.take() {
            h.routes.stopping();
            h.task.abort();
            let _ = h.task.await;
        }
        if let Some(node) = self.node.take() {
            node.shutdown().await;
            if let Some((saver, stop)) = self.downtime.take() {
                // The totals up to the stop, saved while the directory is
                // still locked.
                let _ = stop.send(());
                let _ = saver.await;
            }
            // The node holds the data directory's lock until it is dropped,
            // after its writers stopped.
            drop(node);
        }
    }
}

/// A server dropped without [`Server::shutdown`] stops its HTTP endpoint;
/// its node is shut down in the background and keeps the data directory
/// locked until it has stopped (see `QuicNode`'s `Drop`).
impl<T> Drop for Server<T> {
    fn drop(&mut self) {
        if let Some(h) = self.http.take() {
            h.routes.stopping();
            h.task.abort();
        }
        if let Some((saver, _)) = self.downtime.take() {
            saver.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, serde::Serialize, serde::Deserialize, ha_core::Replicated)]
    struct One {
        n: u64,
    }

    #[ha_core::replicated]
    impl One {
        pub fn get(&self) -> u64 {
            self.n
        }
    }

    fn timing(hb: u64, lo: u64, hi: u64) -> Timing {
        let ms = Duration::from_millis;
        Server::<One>::builder()
            .heartbeat(ms(hb))
            .election_timeout(ms(lo), ms(hi))
            .timing()
            .unwrap()
    }

    #[test]
    fn the_tick_keeps_every_setting_exactly() {
        let t = |tick, heartbeat_ticks, election_min_ticks, election_max_ticks| Timing {
            tick: Duration::from_millis(tick),
            heartbeat_ticks,
            election_min_ticks,
            election_max_ticks,
        };
        assert_eq!(timing(50, 150, 300), t(10, 5, 15, 30));
        assert_eq!(timing(50, 300, 600), t(10, 5, 30, 60));
        // An election range finer than the heartbeat keeps its randomness.
        assert_eq!(timing(200, 300, 600), t(10, 20, 30, 60));
        assert_eq!(timing(7, 300, 601), t(1, 7, 300, 601));
        assert_eq!(timing(4, 6, 8), t(2, 2, 3, 4));
    }
}
