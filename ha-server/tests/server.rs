//! The server builder against real sockets and directories: what a failed
//! start leaves behind, what `/healthz` and `/readyz` say through a node's
//! life, and that a dropped server keeps its data directory locked until
//! its node has stopped.

use std::path::Path;
use std::time::{Duration, Instant};

use ha_core::storage::{DataDir, DataDirError, StdFs};
use ha_core::types::NodeId;
use ha_core::{Replicated, replicated};
use ha_server::{ServeError, Server};
use serde::{Deserialize, Serialize};

/// A count.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Tally {
    n: u64,
}

#[replicated]
impl Tally {
    /// Adds one.
    pub fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

fn free_udp() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

fn certs(dir: &Path) {
    ha_quic::create_cluster_certs(dir, &[NodeId(1)]).unwrap();
}

fn single(dir: &Path, listen: &str) -> ha_server::ServerBuilder<Tally> {
    Server::<Tally>::builder()
        .id(1)
        .listen(listen)
        .peer(format!("1={listen}"))
        .data_dir(dir.join("data"))
        .tls_dir(dir.join("tls"))
}

async fn http(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (code, body)
}

#[tokio::test]
async fn a_start_refused_for_a_busy_port_or_missing_peers_leaves_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    certs(&tmp.path().join("tls"));
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let e = single(tmp.path(), &busy).start().await.err().unwrap();
    assert!(
        matches!(
            e,
            ServeError::Bind {
                option: "--listen",
                ..
            }
        ),
        "{e}"
    );
    assert!(!tmp.path().join("data").exists(), "nothing created");
    let e = Server::<Tally>::builder()
        .id(1)
        .listen(free_udp())
        .data_dir(tmp.path().join("data"))
        .tls_dir(tmp.path().join("tls"))
        .start()
        .await
        .err()
        .unwrap();
    assert!(e.to_string().starts_with("--peers: required"), "{e}");
    assert!(!tmp.path().join("data").exists(), "nothing created");
    // Certificates of another node: refused before the directory too.
    let e = single(tmp.path(), &free_udp())
        .id(2)
        .start()
        .await
        .err()
        .unwrap();
    assert!(e.to_string().starts_with("--tls-dir: "), "{e}");
    assert!(!tmp.path().join("data").exists(), "nothing created");
}

#[tokio::test]
async fn timing_options_are_checked_and_name_the_option() {
    let tmp = tempfile::tempdir().unwrap();
    let ms = Duration::from_millis;
    for (b, says) in [
        (
            single(tmp.path(), "127.0.0.1:1").heartbeat(ms(0)),
            "--heartbeat-ms: ",
        ),
        (
            single(tmp.path(), "127.0.0.1:1").election_timeout(ms(600), ms(300)),
            "--election-timeout-ms: ",
        ),
        (
            single(tmp.path(), "127.0.0.1:1").election_timeout(ms(40), ms(600)),
            "--election-timeout-ms: ",
        ),
        (
            single(tmp.path(), "127.0.0.1:1").heartbeat(Duration::MAX),
            "--heartbeat-ms: ",
        ),
        (single(tmp.path(), "127.0.0.1:1").id(0), "--id: "),
        (
            single(tmp.path(), "127.0.0.1:1").snapshot_every(0),
            "--snapshot-every: ",
        ),
        (single(tmp.path(), "not an address"), "--listen: "),
        (single(tmp.path(), "127.0.0.1:1").peer("x"), "--peers: "),
        (
            single(tmp.path(), "127.0.0.1:1").http_limits(ha_server::HttpLimits {
                max_connections: 0,
                ..Default::default()
            }),
            "--metrics: ",
        ),
    ] {
        let e = b.start().await.err().unwrap().to_string();
        assert!(e.starts_with(says), "{says}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[tokio::test]
async fn health_and_readiness_follow_the_node_from_start_to_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    certs(&tmp.path().join("tls"));
    let server = single(tmp.path(), &free_udp())
        .http("127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let addr = server.http_addr().expect("an HTTP endpoint");
    assert_eq!(http(addr, "/healthz").await, (200, "ok\n".into()));
    // A single node elects itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http(addr, "/readyz").await {
            (200, body) => {
                assert_eq!(body, "ready\n");
                break;
            }
            (503, body) => assert!(Instant::now() < deadline, "never ready: {body}"),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = http(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("ha_role{role=\"leader\"} 1"), "{body}");
    server.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the HTTP endpoint closed with the server"
    );
}

/// A current-thread runtime: the background shutdown a drop starts cannot
/// run before this test yields, so the lock is looked at while the node
/// still runs.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_server_keeps_its_directory_locked_until_its_node_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    certs(&tmp.path().join("tls"));
    let listen = free_udp();
    let server = single(tmp.path(), &listen).start().await.unwrap();
    let data = tmp.path().join("data");
    drop(server);
    let again = DataDir::open(&StdFs, &data, "any", NodeId(1));
    assert!(
        matches!(again, Err(DataDirError::Locked(_))),
        "the directory was released while its node ran: {again:?}"
    );
    // Once the node has stopped, the directory is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let server = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        match single(tmp.path(), &listen).start().await {
            Ok(s) => break s,
            Err(ServeError::DataDir(DataDirError::Locked(_))) => {
                assert!(Instant::now() < deadline, "never released");
            }
            Err(e) => panic!("{e}"),
        }
    };
    server.shutdown().await;
}
