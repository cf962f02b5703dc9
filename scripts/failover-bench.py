#!/usr/bin/env python3
"""Time from stopping the leader of a 3-node ha-kv cluster to the first
successful write: planned (SIGTERM: the leader hands leadership over, then
exits) against unplanned (SIGKILL: the others wait out an election timeout).

    scripts/failover-bench.py BIN [RUNS]

One cluster on loopback (its own certificates, data directories and ports,
removed afterwards); RUNS rounds (default 10), each stopping the leader once
by SIGTERM and once by SIGKILL (alternating which goes first), restarting it
and waiting for all three nodes before the next. A write is one `BIN put`
process (a fresh client each try, 250 ms per call), sent through each node
in its own loop so that which node a client happens to try first is not
what is measured; every figure includes one client's start-up and
handshake: `floor_ms` is the same write against a healthy cluster.

Then RUNS rounds of the same SIGKILL as a long-lived client sees it: an
`ha-kv bench` of 4 clients (default timeouts) is running when the leader
is killed, and its `max_ms` (the longest any one write waited, retries
included) is the failover it saw. Prints one line per stop and a JSON
summary of medians (milliseconds) last.
"""
import json, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1]
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
D = tempfile.mkdtemp()
procs = {}


def free_ports(n):
    ss = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in ss:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in ss]
    for s in ss:
        s.close()
    return ports


PORTS = free_ports(3)
PEERS = ",".join(f"{i + 1}=127.0.0.1:{p}" for i, p in enumerate(PORTS))
CLIENT = ["--cluster", ",".join(f"127.0.0.1:{p}" for p in PORTS), "--tls-dir", f"{D}/tls"]


def start(i):
    log = open(f"{D}/log-{i}", "a")
    procs[i] = subprocess.Popen(
        [BIN, "serve", "--id", str(i), "--listen", f"127.0.0.1:{PORTS[i - 1]}",
         "--peers", PEERS, "--data-dir", f"{D}/data-{i}", "--tls-dir", f"{D}/tls"],
        stdout=subprocess.DEVNULL, stderr=log)


def put(timeout_ms=250, via=None):
    """One write through a fresh client process (through node `via` only,
    which redirects it to the leader it knows, or through any node)."""
    cluster = CLIENT if via is None else [
        "--cluster", f"127.0.0.1:{PORTS[via - 1]}", "--tls-dir", f"{D}/tls"]
    r = subprocess.run([BIN, "put", "failover", "x", *cluster, "--timeout-ms", str(timeout_ms)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


def first_success(t0):
    """Writes through each node in its own loop (so which node a client
    tries first is not measured); the time from t0 to the first success."""
    done = threading.Event()
    times = []

    def loop(via):
        while not done.is_set():
            if put(via=via):
                times.append(time.monotonic() - t0)
                done.set()

    ts = [threading.Thread(target=loop, args=(i,)) for i in (1, 2, 3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return min(times) * 1000


def statuses():
    r = subprocess.run([BIN, "status", *CLIENT, "--timeout-ms", "500"],
                       capture_output=True, text=True)
    return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]


def settled():
    """The leader's id once all three nodes answer, agree on it and have
    applied everything it committed; waits up to 30 s."""
    deadline = time.time() + 30
    while time.time() < deadline:
        s = statuses()
        leaders = [x for x in s if x.get("role") == "leader"]
        if len(s) == 3 and len(leaders) == 1:
            commit = leaders[0]["commit_index"]
            if all(x["applied_index"] >= commit for x in s):
                return leaders[0]["id"]
        time.sleep(0.1)
    sys.exit("the cluster did not settle within 30 s")


def live_client_stall():
    """The longest write of a running 4-client bench across a SIGKILL of
    the leader 1 s into it (the bench is sized to outlast the stop)."""
    leader = settled()
    bench = subprocess.Popen(
        [BIN, "bench", "--clients", "4", "--ops", "6000", "--value-size", "128",
         *CLIENT], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(1.0)
    p = procs.pop(leader)
    p.send_signal(signal.SIGKILL)
    p.wait()
    out, _ = bench.communicate()
    start(leader)
    last = json.loads(out.strip().splitlines()[-1])
    if last["errors"]:
        print(f"live client: {last['errors']} writes failed", flush=True)
    return last["max_ms"]


def first_write_after(how):
    leader = settled()
    p = procs.pop(leader)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    ms = first_success(t0)
    p.wait()
    start(leader)
    return ms


try:
    subprocess.run([BIN, "certs", "--dir", f"{D}/tls", "--nodes", "1,2,3"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for i in (1, 2, 3):
        start(i)
    settled()
    floor = []
    for _ in range(RUNS):
        t0 = time.monotonic()
        assert put(2000)
        floor.append((time.monotonic() - t0) * 1000)
    res = {"sigterm": [], "sigkill": []}
    for r in range(RUNS):
        order = ["sigterm", "sigkill"] if r % 2 == 0 else ["sigkill", "sigterm"]
        for how in order:
            ms = first_write_after(how)
            res[how].append(ms)
            print(f"{how} {ms:.0f} ms", flush=True)
    live = []
    for _ in range(RUNS):
        ms = live_client_stall()
        live.append(ms)
        print(f"live client sigkill {ms:.0f} ms", flush=True)
    print(json.dumps({
        "runs": RUNS,
        "floor_ms": round(statistics.median(floor), 1),
        "sigterm_ms": round(statistics.median(res["sigterm"]), 1),
        "sigkill_ms": round(statistics.median(res["sigkill"]), 1),
        "live_client_sigkill_ms": round(statistics.median(live), 1),
        "sigterm_all": [round(x) for x in res["sigterm"]],
        "sigkill_all": [round(x) for x in res["sigkill"]],
        "live_client_sigkill_all": [round(x) for x in live],
    }))
finally:
    for p in procs.values():
        p.kill()
        p.wait()
    shutil.rmtree(D, ignore_errors=True)
