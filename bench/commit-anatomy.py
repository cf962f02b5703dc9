#!/usr/bin/env python3
"""Where one commit's costs go, counted over a closed-loop put load on a
fresh 3-node ha-kv cluster: fsyncs per second and entries per fsync on
each node, UDP datagrams per commit, CPU and context switches per 1,000
commits on each node and in the load generator.

    bench/commit-anatomy.py BIN [CLIENTS] [OPS] [RUNS]

HA_SERVE_FLAGS adds flags to every `serve`; HA_SERVE_WORKERS sets the
nodes' tokio worker threads (TOKIO_WORKER_THREADS; default one per core).

Defaults: 64 clients, 60,000 puts of 128 bytes over 10,000 keys, 3 runs,
each on a fresh cluster (its own certificates, data directories and
ports, removed afterwards). Counters are read just before and just after
the load: the nodes' /metrics (fsyncs, log entries), /proc/PID/stat and
/proc/PID/task/*/status (CPU, context switches) and /proc/net/snmp (UDP
datagrams: machine-wide, so run it on an otherwise quiet machine; the
count includes the load generator's datagrams). Prints one line per run
and the medians last, as JSON.
"""
import json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request

BIN = sys.argv[1]
CLIENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 64
OPS = int(sys.argv[3]) if len(sys.argv) > 3 else 60000
RUNS = int(sys.argv[4]) if len(sys.argv) > 4 else 3
TICK = os.sysconf("SC_CLK_TCK")
# Extra `serve` flags, and the nodes' tokio worker threads (the load
# generator keeps the default).
SERVE_FLAGS = os.environ.get("HA_SERVE_FLAGS", "").split()
SERVE_ENV = dict(os.environ)
if os.environ.get("HA_SERVE_WORKERS"):
    SERVE_ENV["TOKIO_WORKER_THREADS"] = os.environ["HA_SERVE_WORKERS"]


def free_ports(n, tcp=False):
    held, ports = [], []
    while len(ports) < n:
        u = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        held.append(u)
        ports.append(u.getsockname()[1])
    for s in held:
        s.close()
    return ports


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(ha_[a-z_]+(?:\{[^}]*\})?) ([0-9.eE+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here.
    return (int(fields[11]) + int(fields[12])) / TICK


def context_switches(pid):
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return total


def udp_datagrams():
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Udp:")]
    head, vals = lines[0], lines[1]
    row = dict(zip(head[1:], map(int, vals[1:])))
    return row["OutDatagrams"]


def snapshot(procs, mports):
    return {
        "metrics": [metrics(p) for p in mports],
        "cpu": [cpu_seconds(p.pid) for p in procs],
        "cs": [context_switches(p.pid) for p in procs],
        "udp": udp_datagrams(),
    }


def one_run():
    d = tempfile.mkdtemp()
    procs = []
    try:
        subprocess.run([BIN, "certs", "--dir", f"{d}/tls", "--nodes", "1,2,3"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ports, mports = free_ports(3), free_ports(3, tcp=True)
        peers = ",".join(f"{i + 1}=127.0.0.1:{p}" for i, p in enumerate(ports))
        cluster = ["--cluster", ",".join(f"127.0.0.1:{p}" for p in ports), "--tls-dir", f"{d}/tls"]
        for i in range(3):
            log = open(f"{d}/log-{i + 1}", "w")
            procs.append(subprocess.Popen(
                [BIN, "serve", "--id", str(i + 1), "--listen", f"127.0.0.1:{ports[i]}",
                 "--peers", peers, "--data-dir", f"{d}/data-{i + 1}", "--tls-dir", f"{d}/tls",
                 "--metrics", f"127.0.0.1:{mports[i]}", *SERVE_FLAGS],
                stdout=subprocess.DEVNULL, stderr=log, env=SERVE_ENV))
        for _ in range(100):
            if subprocess.run([BIN, "put", "warm", "up", *cluster, "--timeout-ms", "1000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"the cluster in {d} never took a write")
        before = snapshot(procs, mports)
        t0 = time.monotonic()
        bench = subprocess.Popen(
            [BIN, "bench", "--clients", str(CLIENTS), "--ops", str(OPS), "--value-size", "128",
             "--keys", "10000", *cluster], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        out = bench.stdout.read().decode()
        _, status, usage = os.wait4(bench.pid, 0)
        wall = time.monotonic() - t0
        after = snapshot(procs, mports)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"the bench failed: {out}")
        summary = json.loads(out.strip().splitlines()[-1])
        # A run with failed operations is no measure of commits (as in
        # bench/compare-etcd.sh).
        if summary["errors"] != 0:
            raise SystemExit(f"the bench had failed operations: {summary}")
        commits = summary["ops"]
        leader = next(i for i, m in enumerate(after["metrics"]) if m.get('ha_role{role="leader"}') == 1.0)
        nodes = []
        for i in range(3):
            mb, ma = before["metrics"][i], after["metrics"][i]
            fsyncs = ma["ha_fsync_latency_seconds_count"] - mb["ha_fsync_latency_seconds_count"]
            entries = ma["ha_last_index"] - mb["ha_last_index"]
            nodes.append({
                "role": "leader" if i == leader else "follower",
                "fsyncs_per_s": round(fsyncs / wall),
                "entries_per_fsync": round(entries / fsyncs, 2) if fsyncs else None,
                "fsync_ms_mean": round(1000 * (ma["ha_fsync_latency_seconds_sum"]
                                               - mb["ha_fsync_latency_seconds_sum"]) / fsyncs, 3) if fsyncs else None,
                "cpu_ms_per_1000": round(1e6 * (after["cpu"][i] - before["cpu"][i]) / commits, 1),
                "switches_per_commit": round((after["cs"][i] - before["cs"][i]) / commits, 2),
            })
        gen_cpu = usage.ru_utime + usage.ru_stime
        return {
            "puts_per_s": round(commits / wall),
            "p50_ms": summary.get("p50_ms"),
            "datagrams_per_commit": round((after["udp"] - before["udp"]) / commits, 2),
            "leader": next(n for n in nodes if n["role"] == "leader"),
            "followers": [n for n in nodes if n["role"] == "follower"],
            "generator_cpu_ms_per_1000": round(1e6 * gen_cpu / commits, 1),
            "generator_switches_per_commit": round((usage.ru_nvcsw + usage.ru_nivcsw) / commits, 2),
        }
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


def median_of(runs, path):
    vals = []
    for r in runs:
        v = r
        for k in path:
            v = v[k]
        if v is not None:
            vals.append(v)
    return round(statistics.median(vals), 2) if vals else None


runs = []
for n in range(RUNS):
    r = one_run()
    print(json.dumps(r), flush=True)
    runs.append(r)
keys = [("puts_per_s",), ("p50_ms",), ("datagrams_per_commit",),
        ("leader", "fsyncs_per_s"), ("leader", "entries_per_fsync"), ("leader", "fsync_ms_mean"),
        ("leader", "cpu_ms_per_1000"), ("leader", "switches_per_commit"),
        ("followers", 0, "fsyncs_per_s"), ("followers", 0, "entries_per_fsync"),
        ("followers", 0, "cpu_ms_per_1000"), ("followers", 0, "switches_per_commit"),
        ("followers", 1, "cpu_ms_per_1000"),
        ("generator_cpu_ms_per_1000",), ("generator_switches_per_commit",)]
print(json.dumps({"median": {".".join(map(str, k)): median_of(runs, k) for k in keys},
                  "clients": CLIENTS, "ops": OPS, "runs": RUNS}))
