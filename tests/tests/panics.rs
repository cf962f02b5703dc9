//! A panicking command or query never takes a cluster down.
//!
//! The story: on a 3-node QUIC cluster one command that panicked for one
//! argument stopped all three nodes, and every restart replayed it and died
//! again; a panicking query killed the node it reached, the client retried
//! on the next, and the quorum was gone. Now a panic is caught: a command's
//! panic is its outcome, the same on every replica (and on replay), and a
//! query's is an error. Under `PanicPolicy::Halt` (replicated state, set
//! through the log) the service stops applying after the failing command
//! until an operator resumes it, across restarts and snapshots.

use std::time::{Duration, Instant};

use ha_core::Error;
use ha_core::sm::PanicPolicy;
use ha_quic::{LocalCluster, LocalOptions};
use ha_tests::fragile::Fragile;

/// Waits until every node applied the same index and none stopped.
async fn settle(cluster: &LocalCluster<Fragile>) -> Vec<ha_core::node::NodeStatus> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all: Vec<_> = cluster
            .node_ids()
            .into_iter()
            .filter_map(|id| cluster.status(id))
            .collect();
        for s in &all {
            assert_eq!(s.stopped, None, "node {} stopped", s.id.0);
        }
        let same = all
            .iter()
            .all(|s| s.applied_index == all[0].applied_index && s.applied_index == s.commit_index);
        if all.len() == 3 && same {
            return all;
        }
        assert!(Instant::now() < deadline, "nodes never settled: {all:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_command_is_answered_as_failed_and_the_cluster_keeps_serving() {
    let mut cluster = LocalCluster::<Fragile>::start(3)
        .await
        .expect("cluster starts");
    let c = cluster.client();
    assert_eq!(c.push(1).await.unwrap(), 1);
    match c.push(13).await {
        Err(Error::Failed(why)) => assert!(why.contains("unlucky number 13"), "{why}"),
        other => panic!("expected the command to fail with its panic, got {other:?}"),
    }
    // Every node is alive and applied the failed command alike.
    settle(&cluster).await;
    assert_eq!(
        c.push(2).await.unwrap(),
        3,
        "13 stays: it was pushed before the panic"
    );
    assert_eq!(c.count().await.unwrap(), 3);

    // A panicking query is an error naming the panic, on every node it
    // might reach; no node dies of it.
    match c.at(99).await {
        Err(Error::Query(why)) => assert!(why.contains("the query panicked"), "{why}"),
        other => panic!("expected a query error, got {other:?}"),
    }
    for id in cluster.node_ids() {
        let stale = cluster.stale_client_of(id).expect("running");
        assert!(stale.at(50).await.is_err());
        assert_eq!(stale.at(0).await.unwrap(), 1);
    }
    settle(&cluster).await;

    // Every node restarts and replays the failed command without dying.
    for id in cluster.node_ids() {
        cluster.kill(id).await;
    }
    for id in cluster.node_ids() {
        cluster.restart(id).await.expect("restarts");
    }
    let c = cluster.client();
    assert_eq!(c.push(3).await.unwrap(), 4);
    assert_eq!(c.at(1).await.unwrap(), 13);
    settle(&cluster).await;
    cluster.shutdown().await;
}

/// The index a halted status names ("... at log index N ...").
fn halted_index(text: &str) -> u64 {
    let at = text.find("log index ").expect("the status names the index") + "log index ".len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_halt_policy_nothing_moves_until_an_operator_resumes() {
    // Snapshots every few entries, so restarts below restore the halt from
    // a snapshot as well as replay it from the log.
    let opts = LocalOptions {
        snapshot_every_entries: Some(4),
        ..LocalOptions::default()
    };
    let mut cluster = LocalCluster::<Fragile>::start_with(3, opts)
        .await
        .expect("cluster starts");
    let c = cluster.client();
    assert_eq!(c.push(1).await.unwrap(), 1);
    // The policy is replicated state, set through the log.
    c.inner().set_panic_policy(PanicPolicy::Halt).await.unwrap();
    assert!(matches!(c.push(13).await, Err(Error::Failed(_))));
    // Halted: commands are not applied, queries refused, on every node.
    match c.push(2).await {
        Err(e @ Error::NotApplied(_)) => assert!(e.to_string().contains("halted"), "{e}"),
        other => panic!("expected not applied while halted, got {other:?}"),
    }
    assert!(matches!(c.count().await, Err(Error::Query(why)) if why.contains("halted")));
    let all = settle(&cluster).await;
    let texts: Vec<String> = all
        .iter()
        .map(|s| s.halted.clone().expect("halted"))
        .collect();
    let index = halted_index(&texts[0]);
    assert!(texts.iter().all(|t| halted_index(t) == index), "{texts:?}");
    assert!(
        all.iter()
            .all(|s| s.panic_policy == Some(PanicPolicy::Halt))
    );
    assert!(all.iter().all(|s| s.divergences == 0));

    // Halted survives restarts of every node, from a snapshot or the log.
    for _ in 0..6 {
        assert!(c.push(5).await.is_err());
    }
    settle(&cluster).await;
    for id in cluster.node_ids() {
        assert!(
            cluster.snapshot_index(id).0 > index,
            "node {id} snapshotted while halted"
        );
    }
    for id in cluster.node_ids() {
        cluster.kill(id).await;
    }
    for id in cluster.node_ids() {
        cluster.restart(id).await.expect("restarts");
    }
    let c = cluster.client();
    assert!(matches!(c.push(2).await, Err(Error::NotApplied(_))));
    let all = settle(&cluster).await;
    for s in &all {
        assert_eq!(s.halted.as_deref().map(halted_index), Some(index), "{s:?}");
    }

    // Resuming at another index is refused; at the right one it works.
    let wrong = c.inner().resume(index + 1).await;
    assert!(matches!(wrong, Err(Error::NotApplied(_))), "{wrong:?}");
    assert_eq!(c.inner().resume(index).await.unwrap(), index);
    // A retried resume of the same halt is answered as done.
    assert_eq!(c.inner().resume(index).await.unwrap(), index);
    // 2 was never applied; 13 was, before its panic.
    assert_eq!(c.count().await.unwrap(), 2);
    assert_eq!(c.push(4).await.unwrap(), 3);
    let all = settle(&cluster).await;
    assert!(all.iter().all(|s| s.halted.is_none()));
    cluster.shutdown().await;
}

/// One `fragile_node` process.
struct Process {
    child: std::process::Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(id: u64, root: &std::path::Path, cluster: &str) -> Process {
    // Appended: a restarted node's log follows its first run's.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join(format!("node-{id}.log")))
        .expect("log file");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fragile_node"))
        .arg(id.to_string())
        .arg(root.join(format!("data-{id}")))
        .arg(root.join("tls"))
        .arg(cluster)
        .stdin(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("fragile_node starts");
    Process { child }
}

/// Waits until every node's log holds the command's panic `times` times
/// (once per run that applied it).
async fn wait_for_panics(root: &std::path::Path, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen: Vec<usize> = (1..=3)
            .map(|id| {
                std::fs::read_to_string(root.join(format!("node-{id}.log")))
                    .unwrap_or_default()
                    .matches("unlucky number 13")
                    .count()
            })
            .collect();
        if seen.iter().all(|n| *n >= times) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "panics seen per node {seen:?}, want {times} each\n{}",
            logs(root)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every process is still running.
fn all_running(nodes: &mut [Process], root: &std::path::Path) {
    for (i, n) in nodes.iter_mut().enumerate() {
        assert!(
            n.child.try_wait().unwrap().is_none(),
            "node {} exited\n{}",
            i + 1,
            logs(root)
        );
    }
}

fn logs(root: &std::path::Path) -> String {
    (1..=3)
        .map(|id| {
            let text =
                std::fs::read_to_string(root.join(format!("node-{id}.log"))).unwrap_or_default();
            format!("--- node {id}:\n{text}")
        })
        .collect()
}

/// The same story on a cluster of three processes (`fragile_node`): the
/// panicking command is answered as failed, every process keeps running and
/// serving, and after all three are killed (-9) and restarted they replay
/// the failed command from their logs and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_command_on_a_three_process_cluster_kills_no_process() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    ha_quic::create_cluster_certs(
        &root.join("tls"),
        &[
            ha_core::types::NodeId(1),
            ha_core::types::NodeId(2),
            ha_core::types::NodeId(3),
        ],
    )
    .unwrap();
    // Three distinct free ports: the probes stay bound until all are drawn.
    let probes: Vec<std::net::UdpSocket> = (0..3)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    let addrs: Vec<std::net::SocketAddr> = probes.iter().map(|s| s.local_addr().unwrap()).collect();
    drop(probes);
    let cluster = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Process> = (1..=3).map(|id| spawn(id, root, &cluster)).collect();
    let identity = ha_quic::load_client_identity(&root.join("tls")).unwrap();
    let opts = ha_core::ClientOptions {
        timeout: Duration::from_secs(20),
        ..ha_core::ClientOptions::default()
    };
    let c = ha_quic::connect::<Fragile>(addrs.clone(), &identity, opts.clone()).unwrap();
    assert_eq!(c.push(1).await.unwrap(), 1, "{}", logs(root));
    match c.push(13).await {
        Err(Error::Failed(why)) => assert!(why.contains("unlucky number 13"), "{why}"),
        other => panic!("expected a failed command, got {other:?}\n{}", logs(root)),
    }
    assert_eq!(c.push(2).await.unwrap(), 3, "{}", logs(root));
    match c.at(99).await {
        Err(Error::Query(why)) => assert!(why.contains("the query panicked"), "{why}"),
        other => panic!("expected a query error, got {other:?}"),
    }
    // Every node applied it (its panic message is in its log) and lives.
    wait_for_panics(root, 1).await;
    all_running(&mut nodes, root);
    // Every process dies at once and comes back: each replays the failed
    // command from its log (no snapshot covers it), panics in it again,
    // caught, and nobody dies. The same client reconnects.
    nodes.clear();
    let mut nodes: Vec<Process> = (1..=3).map(|id| spawn(id, root, &cluster)).collect();
    assert_eq!(c.push(3).await.unwrap(), 4, "{}", logs(root));
    assert_eq!(c.at(1).await.unwrap(), 13);
    wait_for_panics(root, 2).await;
    all_running(&mut nodes, root);
}
