//! Operator mistakes exit 2 with one clear line: bad flags, a restart with
//! other peers, and certificate runs that must never replace the CA.

use super::*;

pub(super) fn serve_args(dir: &Path, tls: &Path, listen: &str) -> Vec<String> {
    vec![
        "serve".into(),
        "--id".into(),
        "1".into(),
        "--listen".into(),
        listen.into(),
        "--peers".into(),
        format!("1={listen}"),
        "--data-dir".into(),
        dir.display().to_string(),
        "--tls-dir".into(),
        tls.display().to_string(),
    ]
}

pub(super) fn fails_with_one_line(args: &[String], expect: &str) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{args:?}: {err}");
    assert!(err.contains(expect), "{args:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn operator_mistakes_exit_2_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let other_tls = dir.path().join("other-tls");
    for d in [&tls, &other_tls] {
        let out = Command::new(BIN)
            .args(["certs", "--nodes", "1"])
            .arg("--dir")
            .arg(d)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    // Bad address.
    fails_with_one_line(&serve_args(&data, &tls, "not-an-address"), "--listen");
    // Unreadable certificates.
    fails_with_one_line(
        &serve_args(&data, &dir.path().join("nope"), &listen),
        "--tls-dir",
    );
    // Port in use.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    fails_with_one_line(&serve_args(&data, &tls, &busy), "cannot listen");
    // Bad peer list and ids.
    let mut a = serve_args(&data, &tls, &listen);
    a[6] = "x=127.0.0.1:1".into();
    fails_with_one_line(&a, "--peers");
    // A clock-drift bound lease reads cannot stand on.
    let mut a = serve_args(&data, &tls, &listen);
    a.extend(["--lease-reads", "--max-clock-drift-ppm", "1"].map(String::from));
    fails_with_one_line(&a, "--max-clock-drift-ppm");
    // A drift bound without lease reads would be a setting that does nothing.
    let mut a = serve_args(&data, &tls, &listen);
    a.extend(["--max-clock-drift-ppm", "5000"].map(String::from));
    fails_with_one_line(&a, "only with --lease-reads");
    // A data directory of another cluster: first use it with one CA, then
    // start with another.
    let mut first = Command::new(BIN)
        .args(serve_args(&data, &tls, &listen))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    first.kill().unwrap();
    first.wait().unwrap();
    fails_with_one_line(
        &serve_args(&data, &other_tls, &listen),
        "belongs to cluster",
    );
    // --join takes no --peers, and a directory of a voter is not started
    // as a newcomer (it would forget it voted).
    let mut j = serve_args(&data, &tls, &listen);
    j.push("--join".into());
    fails_with_one_line(&j, "takes no --peers");
    let mut j: Vec<String> = serve_args(&data, &tls, &listen)
        .into_iter()
        .filter(|a| a != "--peers" && !a.starts_with("1="))
        .collect();
    j.push("--join".into());
    fails_with_one_line(&j, "start it without --join");
    // An initialized data directory that lost its log (and with it the
    // node's term and vote) is refused, naming the path, not started afresh.
    let wal = data.join("wal");
    assert!(wal.is_dir());
    std::fs::remove_dir_all(&wal).unwrap();
    fails_with_one_line(
        &serve_args(&data, &tls, &listen),
        &format!("write-ahead log directory {} is missing", wal.display()),
    );
    assert!(!wal.exists(), "nothing recreated");
    // A client without certificates.
    let out = Command::new(BIN)
        .args(["get", "k", "--cluster", &listen, "--tls-dir"])
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    // Usage errors from the parser.
    let out = Command::new(BIN)
        .args(["put", "only-a-key"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
}

#[test]
fn a_restart_with_other_peers_exits_2_naming_the_stored_voters() {
    let mut c = start();
    c.wait_for_leader();
    let stored = c.peers_arg();
    // Node 1 restarted with only itself as voter would elect itself and
    // acknowledge writes alone: refused, naming the stored voters.
    c.kill9(1);
    let alone = format!("1=127.0.0.1:{}", c.ports[0]);
    let out = c.serve_cmd(1, Some(&alone)).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!("started with voters {stored}")) && err.contains("--peers"),
        "{err}"
    );
    // More voters than stored: refused too.
    let more = format!("{stored},4=127.0.0.1:{}", free_udp_port());
    let out = c.serve_cmd(1, Some(&more)).output().unwrap();
    assert_eq!(code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    // Without --peers the stored voters are used; the node rejoins.
    c.start_node_with(1, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = c.status();
        if let Some(one) = st.iter().find(|s| s["id"] == 1) {
            assert_eq!(one["voters"], serde_json::json!([1, 2, 3]));
            if one["leader"].is_u64() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "node 1 did not rejoin: {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = c.client(&["put", "after", "restart"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
    // A new data directory needs --peers.
    let out = Command::new(BIN)
        .args(["serve", "--id", "1", "--listen"])
        .arg(format!("127.0.0.1:{}", free_udp_port()))
        .arg("--data-dir")
        .arg(c.dir.path().join("data-new"))
        .arg("--tls-dir")
        .arg(c.tls())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{err}");
    assert!(err.contains("--peers: required"), "{err}");
}

pub(super) fn certs(dir: &Path, nodes: &str) -> Output {
    Command::new(BIN)
        .args(["certs", "--nodes", nodes, "--dir"])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn certs_never_replace_the_cluster_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    assert_eq!(code(&certs(&tls, "1,2")), 0);
    let ca_pem = std::fs::read(tls.join("ca.pem")).unwrap();
    let ca_key = std::fs::read(tls.join("ca.key")).unwrap();
    // The CA key kept offline, as advised: nothing to issue is fine.
    std::fs::remove_file(tls.join("ca.key")).unwrap();
    let out = certs(&tls, "1,2");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    // A new node needs the CA key back; no new CA is made.
    let out = certs(&tls, "1,2,3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("bring ca.key back"), "{err}");
    assert!(!tls.join("ca.key").exists() && !tls.join("node-3.pem").exists());
    assert_eq!(std::fs::read(tls.join("ca.pem")).unwrap(), ca_pem);
    // Only the key: refused as well.
    std::fs::write(tls.join("ca.key"), &ca_key).unwrap();
    std::fs::remove_file(tls.join("ca.pem")).unwrap();
    let out = certs(&tls, "1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("restore ca.pem"), "{err}");
    // Both back: node 3 is issued by the same CA, with a private key.
    std::fs::write(tls.join("ca.pem"), &ca_pem).unwrap();
    assert_eq!(code(&certs(&tls, "3")), 0);
    assert_eq!(std::fs::read(tls.join("ca.pem")).unwrap(), ca_pem);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = tls.join("node-3.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A key others may read is warned about.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = certs(&tls, "3");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code(&out), 0, "{err}");
        assert!(
            err.contains("warning") && err.contains("node-3.key"),
            "{err}"
        );
    }
}

/// `certs --hosts` puts names and addresses in node certificates; a
/// malformed flag, a bad host, a host for a node not created, or a host
/// an existing certificate lacks exits 2 with one line, writing nothing.
#[test]
fn certs_hosts_are_checked_and_never_replace_a_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    let run = |nodes: &str, hosts: &str| {
        Command::new(BIN)
            .args(["certs", "--nodes", nodes, "--hosts", hosts, "--dir"])
            .arg(&tls)
            .output()
            .unwrap()
    };
    let out = run("1,2", "1=db-1.example.com,1=10.0.0.5,2=db-2.example.com");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let cert = ha_quic::load_node_identity(&tls, ha_core::types::NodeId(1))
        .unwrap()
        .cert;
    for name in ["db-1.example.com", "10.0.0.5", "node-1", "localhost"] {
        assert!(ha_quic::tls::cert_names(&cert, name), "{name}");
    }
    assert!(!ha_quic::tls::cert_names(&cert, "db-2.example.com"));
    for (nodes, hosts, says) in [
        ("1,2", "1", "expected ID=HOST"),
        ("1,2", "x=db.example.com", "not a node id"),
        ("1,2", "3=db-3.example.com", "not among the nodes"),
        ("1,2", "1=db_1.example.com", "not a DNS name"),
        ("1,2", "1=0.0.0.0", "unspecified"),
        (
            "1,2,3",
            "1=db-1-new.example.com",
            "does not name db-1-new.example.com",
        ),
    ] {
        let out = run(nodes, hosts);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code(&out), 2, "{hosts}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(says), "{hosts}: {err}");
    }
    assert!(!tls.join("node-3.pem").exists(), "nothing written");
}
