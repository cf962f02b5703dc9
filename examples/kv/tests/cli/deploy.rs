//! What of `deploy/` runs on this machine: the StatefulSet's entry point
//! (`deploy/k8s/start.sh`) and DNS names as member addresses (`localhost`,
//! resolved through the system's resolver, stands in for a pod's name).

use super::*;

/// Runs `start.sh` as pod `hostname` with a stand-in `ha-kv` on the PATH
/// that records its arguments, and an empty data directory; returns the
/// exit status and the arguments.
fn start_script(hostname: &str) -> (i32, Vec<String>) {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let (status, mut args) = start_script_with(hostname, &[("HA_DATA", dir.as_str())]);
    // The data directory is the temporary one: name it as the default.
    for a in args.iter_mut() {
        if *a == dir {
            *a = "/data".into();
        }
    }
    (status, args)
}

/// [`start_script`] with more environment.
fn start_script_with(hostname: &str, env: &[(&str, &str)]) -> (i32, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("args");
    let fake = dir.path().join("ha-kv");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n", out.display()),
    )
    .unwrap();
    let chmod = Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    assert!(chmod.success());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/start.sh");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let status = Command::new("sh")
        .arg(&script)
        .arg("--heartbeat-ms")
        .arg("100")
        .env("HOSTNAME", hostname)
        .env("PATH", path)
        .env("HA_DOMAIN", "ha-kv.prod.svc.cluster.local")
        .env_remove("HA_INITIAL_VOTERS")
        .env_remove("HA_CLUSTER_STATE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let args = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    (code(&status), args)
}

#[test]
fn the_statefulset_entry_point_names_the_first_voters_and_joins_the_rest() {
    let (status, args) = start_script("ha-kv-1");
    assert_eq!(status, 0);
    let d = "ha-kv.prod.svc.cluster.local:7000";
    let want = [
        "serve",
        "--id",
        "2",
        "--listen",
        "0.0.0.0:7000",
        "--peers",
        &format!("1=ha-kv-0.{d},2=ha-kv-1.{d},3=ha-kv-2.{d}"),
        "--data-dir",
        "/data",
        "--tls-dir",
        "/tls",
        "--metrics",
        "0.0.0.0:9000",
        "--heartbeat-ms",
        "100",
    ];
    assert_eq!(args, want);
    // A pod beyond the first voters joins and waits for `member add`.
    let (status, args) = start_script("ha-kv-4");
    assert_eq!(status, 0);
    assert_eq!(
        &args[..5],
        ["serve", "--id", "5", "--listen", "0.0.0.0:7000"]
    );
    assert_eq!(args[5], "--join");
    assert!(!args.contains(&"--peers".to_string()));
    // A hostname without an ordinal, or settings that are not numbers or
    // states, are refused before anything runs.
    for (host, env) in [
        ("ha-kv", vec![]),
        ("ha-kv-0", vec![("HA_INITIAL_VOTERS", "three")]),
        ("ha-kv-0", vec![("HA_INITIAL_VOTERS", "0")]),
        ("ha-kv-0", vec![("HA_CLUSTER_STATE", "old")]),
    ] {
        let (status, args) = start_script_with(host, &env);
        assert_eq!(status, 2, "{host} {env:?}");
        assert!(args.is_empty());
    }
    // Once the cluster exists, a first voter whose volume was lost joins
    // rather than bootstrap an empty cluster under its old id. A node with
    // a stored configuration (bootstrapped or joined) gets neither flag:
    // it recovers what it stored, and a restart of a node that joined is
    // not refused for a --peers it never had.
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    for state in ["new", "existing"] {
        let env = [("HA_CLUSTER_STATE", state), ("HA_DATA", dir.as_str())];
        let (status, args) = start_script_with("ha-kv-0", &env);
        assert_eq!(status, 0);
        let joins = args.contains(&"--join".to_string());
        assert_eq!(joins, state == "existing", "{state}: {args:?}");
        assert_eq!(args.contains(&"--peers".to_string()), !joins, "{args:?}");
    }
    std::fs::write(data.path().join("cluster"), "joining\n").unwrap();
    for host in ["ha-kv-0", "ha-kv-4"] {
        let env = [("HA_CLUSTER_STATE", "existing"), ("HA_DATA", dir.as_str())];
        let (status, args) = start_script_with(host, &env);
        assert_eq!(status, 0);
        assert!(
            !args.iter().any(|a| a == "--join" || a == "--peers"),
            "{host}: {args:?}"
        );
    }
}

#[test]
fn members_named_by_dns_names_find_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let out = Command::new(BIN)
        .args(["certs", "--nodes", "1,2,3,4", "--dir"])
        .arg(&tls)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut c = Cluster::unstarted(dir, &[]);
    let by_name = |c: &Cluster, id: usize| format!("localhost:{}", c.ports[id - 1]);
    let peers: Vec<String> = (1..=3)
        .map(|id| format!("{id}={}", by_name(&c, id)))
        .collect();
    for id in 1..=3 {
        c.start_node_with(id, Some(&peers.join(",")));
    }
    c.wait_for_leader();
    c.add_slots(1);
    c.start_joining(4);
    let out = c.client(&[
        "member",
        "add",
        "4",
        &by_name(&c, 4),
        "--timeout-ms",
        "30000",
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
    // Recorded as given, and working: the new voter takes part in commits
    // (four voters: with node 1 stopped, a write needs all of 2, 3 and 4).
    let v = json_line(&out);
    assert!(
        v["members"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"id": 4, "addr": by_name(&c, 4), "role": "voter"})),
        "{v}"
    );
    c.sigterm(1);
    let out = c.client(&["put", "k", "v", "--timeout-ms", "20000"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
    // A client given only a follower, by name, is redirected to the
    // leader by the name the configuration gives it (checked against the
    // leader's certificate, which names `localhost`).
    let leader = c.wait_for_leader();
    let follower = (2..=4).find(|id| *id != leader).unwrap();
    let out = Command::new(BIN)
        .args(["get", "k", "--timeout-ms", "20000", "--cluster"])
        .arg(by_name(&c, follower))
        .arg("--tls-dir")
        .arg(c.tls())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json_line(&out)["value"], "v");
}
