//! The node's HTTP endpoint: `/metrics` (Prometheus text), `/healthz`
//! (the process is up), `/readyz` (the node can serve: see
//! [`readiness`]), and the live page at `/` with its `/api/state` (see
//! `page`), on hyper.
//!
//! Owns: routing, the readiness rule, and the listener's resource limits.
//! Invariants: at most [`HttpLimits::max_connections`] connections are
//! served at once (the rest wait in the kernel's backlog); each connection
//! answers one request and closes, within [`HttpLimits::io_timeout`] from
//! its accept (a silent or slow client is cut off and frees its slot); a
//! failed accept is logged and retried after
//! [`HttpLimits::accept_backoff`], never the end of the listener.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ha_core::node::{NodeHandle, NodeMetrics, NodeStatus};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::metrics::{CONTENT_TYPE, Metrics};

/// Connections served at once, by default. Beyond it, new connections wait
/// in the kernel's accept backlog until one finishes: a flood of clients
/// cannot use up the process's file descriptors (which the log also needs).
pub const MAX_CONNECTIONS: usize = 64;
/// Default time a connection has, from its accept, to send its request and
/// take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a connection has, from its accept, to send its request
/// head: short, so idle connections cannot keep the slots (and with them
/// the platform's probes) for long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Default pause after a failed accept (for example when out of file
/// descriptors) before trying again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Default largest gap between commit and applied index at which a node
/// still reports ready: four of the node's largest apply batches, so
/// ordinary load does not make readiness flap.
pub const READY_MAX_APPLY_LAG: u64 = 16_384;

/// The limits of the HTTP listener.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time from accept to the answer written.
    pub io_timeout: Duration,
    /// Time from accept to the request head read (at most `io_timeout`).
    pub header_timeout: Duration,
    /// Pause after a failed accept.
    pub accept_backoff: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: MAX_CONNECTIONS,
            io_timeout: IO_TIMEOUT,
            header_timeout: HEADER_TIMEOUT,
            accept_backoff: ACCEPT_BACKOFF,
        }
    }
}

impl HttpLimits {
    /// Refuses limits the listener cannot work with.
    pub fn validate(&self) -> Result<(), crate::ServeError> {
        let bad = |reason: String| crate::ServeError::invalid("--metrics", reason);
        if !(1..=65_536).contains(&self.max_connections) {
            return Err(bad(format!(
                "max_connections {} must be 1..=65536",
                self.max_connections
            )));
        }
        let hour = Duration::from_secs(3600);
        if self.io_timeout.is_zero() || self.io_timeout > hour {
            return Err(bad("io_timeout must be above 0 and at most an hour".into()));
        }
        if self.header_timeout.is_zero() || self.header_timeout > self.io_timeout {
            return Err(bad(
                "header_timeout must be above 0 and at most io_timeout".into()
            ));
        }
        if self.accept_backoff > Duration::from_secs(60) {
            return Err(bad("accept_backoff must be at most a minute".into()));
        }
        Ok(())
    }
}

/// The address a metrics option names: `HOST:PORT` as given, or loopback
/// (127.0.0.1) when only a port is given (`9100` or `:9100`), so metrics
/// are not exposed beyond the machine unless asked for.
pub fn listen_addr(s: &str) -> Result<SocketAddr, crate::ServeError> {
    let port = s.trim().strip_prefix(':').unwrap_or(s.trim());
    match port.parse::<u16>() {
        Ok(p) => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, p))),
        Err(_) => crate::peers::parse_addr("--metrics", s.trim()),
    }
}

/// Why a node is not ready to serve clients ([`readiness`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The node stopped.
    #[error("stopped: {0}")]
    Stopped(ha_core::node::StopReason),
    /// It repairs damaged storage from its peers (and does not vote).
    #[error("repairing damaged storage from its peers")]
    Repairing,
    /// The service is halted after a failed command (where and why).
    #[error("halted: {0}")]
    Halted(String),
    /// It is not a member of the configuration it knows.
    #[error("node {0} is not a member of the configuration")]
    NotMember(ha_core::types::NodeId),
    /// It knows no leader.
    #[error("no known leader")]
    NoLeader,
    /// It has applied too little of what it knows committed.
    #[error(
        "applied index {applied} is {} entries behind commit index {commit} (more than {max})",
        commit.0.saturating_sub(applied.0)
    )]
    Behind {
        /// Its applied index.
        applied: ha_core::types::LogIndex,
        /// Its commit index.
        commit: ha_core::types::LogIndex,
        /// The most it may be behind.
        max: u64,
    },
}

/// Whether a node can serve clients now, and if not, why. Ready means: the
/// node runs (not stopped, not repairing its storage, not halted after a
/// failed command), it is a member of the configuration it knows, it knows
/// a leader, and it has applied all but at most `max_apply_lag` of the
/// entries it knows committed.
pub fn readiness(s: &NodeStatus, m: &NodeMetrics, max_apply_lag: u64) -> Result<(), NotReady> {
    if let Some(why) = &s.stopped {
        return Err(NotReady::Stopped(why.clone()));
    }
    if s.repairing {
        return Err(NotReady::Repairing);
    }
    if let Some(h) = &s.halted {
        return Err(NotReady::Halted(h.clone()));
    }
    if !m.voters.contains(&s.id) && !m.learners.contains(&s.id) {
        return Err(NotReady::NotMember(s.id));
    }
    if s.leader.is_none() {
        return Err(NotReady::NoLeader);
    }
    if s.commit_index.0.saturating_sub(s.applied_index.0) > max_apply_lag {
        return Err(NotReady::Behind {
            applied: s.applied_index,
            commit: s.commit_index,
            max: max_apply_lag,
        });
    }
    Ok(())
}

/// What the endpoint answers from: nothing while the node starts (it is
/// alive, not ready), the node once it runs, nothing again once it stops.
pub(crate) struct Routes {
    node: std::sync::OnceLock<(NodeHandle, Metrics)>,
    watch: std::sync::OnceLock<crate::page::Watch>,
    stopping: std::sync::atomic::AtomicBool,
    max_apply_lag: u64,
}

impl Routes {
    /// Routes for a node still starting.
    pub(crate) fn new(max_apply_lag: u64) -> Routes {
        Routes {
            node: std::sync::OnceLock::new(),
            watch: std::sync::OnceLock::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            max_apply_lag,
        }
    }

    /// The node runs.
    pub(crate) fn node_started(
        &self,
        node: NodeHandle,
        transport: ha_quic::QuicTransport,
        watch: Option<crate::page::Watch>,
    ) {
        let metrics = Metrics::new(node.clone(), transport);
        let _ = self.node.set((node, metrics));
        if let Some(w) = watch {
            let _ = self.watch.set(w);
        }
    }

    /// The node is shutting down: no longer ready.
    pub(crate) fn stopping(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Answers `405` with the methods allowed.
fn not_allowed() -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "use GET\n".into());
    r.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static("GET, HEAD"),
    );
    r
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// Answers one request.
pub(crate) trait Answer: Send + Sync + 'static {
    /// The response to `method path`.
    fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>>;
}

impl Answer for Routes {
    fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return not_allowed();
        }
        let unavailable =
            |why: &str| text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n"));
        let stopping = self.stopping.load(std::sync::atomic::Ordering::Acquire);
        let node = self.node.get();
        match path {
            "/metrics" => match node {
                None => unavailable("starting"),
                Some((_, metrics)) => match metrics.render() {
                    Ok(body) => text(StatusCode::OK, CONTENT_TYPE, body),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("{e}\n")),
                },
            },
            "/healthz" => match node.map(|(n, _)| n.status().stopped) {
                None => text(StatusCode::OK, PLAIN, "starting\n".into()),
                Some(None) => text(StatusCode::OK, PLAIN, "ok\n".into()),
                Some(Some(why)) => unavailable(&format!("stopped: {why}")),
            },
            "/readyz" => match node {
                _ if stopping => unavailable("shutting down"),
                None => unavailable("starting"),
                Some((n, _)) => match readiness(&n.status(), &n.metrics(), self.max_apply_lag) {
                    Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".into()),
                    Err(why) => unavailable(&why.to_string()),
                },
            },
            "/" => text(
                StatusCode::OK,
                "text/html; charset=utf-8",
                crate::page::PAGE.into(),
            ),
            "/api/state" => match self.watch.get().map(|w| w.state_json()) {
                Some(json) if !json.is_empty() => {
                    text(StatusCode::OK, "application/json", json.to_string())
                }
                _ => unavailable("starting"),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                PLAIN,
                "try /, /api/state, /metrics, /healthz or /readyz\n".into(),
            ),
        }
    }
}

/// Where connections come from: a TCP listener, or a stand-in in tests.
pub(crate) trait Acceptor: Send + 'static {
    /// One connection.
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Conn>> + Send;
}

impl Acceptor for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Conn> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Answers connections from `acceptor` until the task is aborted, at most
/// `limits.max_connections` at a time.
pub(crate) async fn serve<A: Acceptor>(
    mut acceptor: A,
    routes: Arc<dyn Answer>,
    limits: HttpLimits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        // A slot first: beyond the cap, connections wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // The semaphore is never closed.
        };
        match acceptor.accept().await {
            Ok(conn) => {
                let routes = routes.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let r = routes.answer(req.method(), req.uri().path());
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.header_timeout)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(conn), service);
                    match tokio::time::timeout(limits.io_timeout, conn).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(error = %e, "http: connection failed"),
                        Err(_) => tracing::debug!("http: connection cut off at its deadline"),
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                drop(slot);
                tracing::warn!(error = %e, "http listener: accept failed; retrying");
                tokio::time::sleep(limits.accept_backoff).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    fn limits(max_connections: usize, io_ms: u64) -> HttpLimits {
        HttpLimits {
            max_connections,
            io_timeout: Duration::from_millis(io_ms),
            header_timeout: Duration::from_millis(io_ms),
            accept_backoff: Duration::from_millis(10),
        }
    }

    /// Answers every GET with a fixed body, counting how many at once.
    #[derive(Default)]
    struct Fixed {
        busy: AtomicUsize,
        peak: AtomicUsize,
        pause: Duration,
    }

    impl Answer for Fixed {
        fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
            let now = self.busy.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(self.pause);
            self.busy.fetch_sub(1, Ordering::SeqCst);
            text(StatusCode::OK, PLAIN, format!("{method} {path}\n"))
        }
    }

    async fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    fn ok(answer: &str) -> bool {
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("GET /metrics\n")
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_and_are_answered_later() {
        let (l, addr) = listener().await;
        tokio::spawn(serve(l, Arc::new(Fixed::default()), limits(4, 30_000)));
        // Four idle clients take every slot.
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = tokio::spawn(get(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a fifth connection was served");
        drop(idle);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("answered once slots free up")
            .unwrap()
            .unwrap();
        assert!(ok(&got), "{got}");
    }

    #[tokio::test]
    async fn a_burst_above_the_cap_is_answered_and_the_listener_keeps_going() {
        let (l, addr) = listener().await;
        let fixed = Arc::new(Fixed {
            pause: Duration::from_millis(2),
            ..Fixed::default()
        });
        tokio::spawn(serve(l, fixed.clone(), limits(8, 5_000)));
        let burst: Vec<_> = (0..200).map(|_| tokio::spawn(get(addr))).collect();
        let mut answered = 0;
        for b in burst {
            if let Ok(Ok(r)) = b.await
                && ok(&r)
            {
                answered += 1;
            }
        }
        assert_eq!(answered, 200, "every connection of the burst answered");
        assert!(
            fixed.peak.load(Ordering::SeqCst) <= 8,
            "at most the cap at once"
        );
        let after = get(addr).await.unwrap();
        assert!(ok(&after), "{after}");
    }

    #[tokio::test]
    async fn a_silent_client_is_cut_off_at_the_deadline_and_frees_its_slot() {
        let (l, addr) = listener().await;
        tokio::spawn(serve(l, Arc::new(Fixed::default()), limits(1, 200)));
        let _silent = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = tokio::time::timeout(Duration::from_secs(5), get(addr))
            .await
            .expect("served after the silent client's deadline")
            .unwrap();
        assert!(ok(&got), "{got}");
    }

    /// Fails its first accepts (as when out of file descriptors), then
    /// accepts for real.
    struct Flaky {
        inner: TcpListener,
        failures: Arc<AtomicUsize>,
    }

    impl Acceptor for Flaky {
        type Conn = TcpStream;
        async fn accept(&mut self) -> std::io::Result<TcpStream> {
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(std::io::Error::other("Too many open files (simulated)"));
            }
            self.inner.accept().await.map(|(s, _)| s)
        }
    }

    #[tokio::test]
    async fn accept_errors_do_not_stop_the_listener() {
        let (inner, addr) = listener().await;
        let failures = Arc::new(AtomicUsize::new(5));
        let flaky = Flaky {
            inner,
            failures: failures.clone(),
        };
        tokio::spawn(serve(flaky, Arc::new(Fixed::default()), limits(4, 5_000)));
        let got = tokio::time::timeout(Duration::from_secs(5), get(addr))
            .await
            .expect("answered after the accept errors")
            .unwrap();
        assert!(ok(&got), "{got}");
        assert_eq!(
            failures.load(Ordering::SeqCst),
            0,
            "every error was retried"
        );
    }

    #[tokio::test]
    async fn a_malformed_request_gets_an_error_and_the_listener_keeps_going() {
        let (l, addr) = listener().await;
        tokio::spawn(serve(l, Arc::new(Fixed::default()), limits(4, 5_000)));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x00\x01 not http at all\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(!out.contains(" 200 "), "{out}");
        let got = get(addr).await.unwrap();
        assert!(ok(&got), "{got}");
    }

    #[test]
    fn a_bare_port_binds_loopback() {
        let lo = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        assert_eq!(listen_addr("9100").unwrap(), lo(9100));
        assert_eq!(listen_addr(":9100").unwrap(), lo(9100));
        assert_eq!(listen_addr("127.0.0.1:9101").unwrap(), lo(9101));
        assert_eq!(
            listen_addr("0.0.0.0:9102").unwrap(),
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9102))
        );
        let e = listen_addr("nowhere").unwrap_err().to_string();
        assert!(e.starts_with("--metrics: "), "{e}");
    }

    fn status(leader: Option<u64>, commit: u64, applied: u64) -> (NodeStatus, NodeMetrics) {
        use ha_core::types::{LogIndex, NodeId, Term};
        let s = NodeStatus {
            id: NodeId(1),
            role: ha_core::raft::RoleKind::Follower,
            term: Term(3),
            leader: leader.map(NodeId),
            commit_index: LogIndex(commit),
            applied_index: LogIndex(applied),
            last_index: LogIndex(commit),
            snapshot_index: LogIndex(0),
            repairing: false,
            repair_found: None,
            halted: None,
            panic_policy: None,
            divergences: 0,
            stopped: None,
        };
        let m = NodeMetrics {
            elections_won: 0,
            proposals: 0,
            refused_no_space: 0,
            applied_entries: 0,
            snapshots: 0,
            snapshot_failures: 0,
            lease_reads: 0,
            leader_gap: Default::default(),
            leader_gap_max: std::time::Duration::ZERO,
            round_reads: 0,
            snapshot_index: LogIndex(0),
            log_bytes: 0,
            storage_quota_bytes: None,
            commit_latency: Default::default(),
            fsync_latency: Default::default(),
            snapshot_encode: Default::default(),
            availability: ha_core::metrics::AvailabilityReport {
                availability: 1.0,
                ..Default::default()
            },
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            learners: vec![],
            peers: vec![],
        };
        (s, m)
    }

    #[test]
    fn ready_means_a_member_with_a_leader_that_has_applied_nearly_all_it_knows_committed() {
        let (s, m) = status(Some(2), 100, 95);
        assert_eq!(readiness(&s, &m, 10), Ok(()));
        let (s, m) = status(None, 100, 100);
        assert_eq!(readiness(&s, &m, 10).unwrap_err(), NotReady::NoLeader);
        assert_eq!(NotReady::NoLeader.to_string(), "no known leader");
        let (s, m) = status(Some(2), 100, 80);
        let e = readiness(&s, &m, 10).unwrap_err().to_string();
        assert!(e.contains("20 entries behind"), "{e}");
        let (s, mut m) = status(Some(2), 100, 100);
        m.voters.retain(|v| v.0 != 1);
        assert!(
            readiness(&s, &m, 10)
                .unwrap_err()
                .to_string()
                .contains("not a member")
        );
        m.learners.push(ha_core::types::NodeId(1));
        assert_eq!(readiness(&s, &m, 10), Ok(()), "a learner serves reads");
        let (mut s, m) = status(Some(2), 100, 100);
        s.repairing = true;
        assert!(
            readiness(&s, &m, 10)
                .unwrap_err()
                .to_string()
                .contains("repairing")
        );
        s.repairing = false;
        s.halted = Some("at 7: boom".into());
        assert!(
            readiness(&s, &m, 10)
                .unwrap_err()
                .to_string()
                .starts_with("halted")
        );
        s.stopped = Some(ha_core::node::StopReason::Storage("disk full".into()));
        assert!(
            readiness(&s, &m, 10)
                .unwrap_err()
                .to_string()
                .starts_with("stopped")
        );
    }
}
