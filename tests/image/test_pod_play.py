"""The llmux pod run as a pod: `podman kube play` on the rendered dev overlay.

Images: the llmux image the package built and an Envoy stand-in under the manifests'
Envoy image name (stand_ins.py). pod_spec.py says what is played and the two things
changed. The pod gets its own network namespace with only a loopback
(`--network none`), like a pod's localhost; the simulated provider runs in the pod too,
from the llmux image (it has aiohttp) with tests/simulated mounted read-only, so
nothing listens on the host and the manifests' fixed ports cannot collide with
anything else on this machine. Requests are sent from inside the pod (`podman exec`).

What podman does not do that a kubelet does, and so is not shown here: it runs
probes only when asked (no systemd timers here; the tests run every probe's command),
it ignores readinessProbe and preStop hooks (tests/k8s/test_pod.py runs Envoy's preStop
against a real Envoy), and it applies no Service or NetworkPolicy.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.image import pod_spec, stand_ins
from tests.image.conftest import Built
from tests.image.podman_root import XFER
from tests.k8s.render import Obj, Rendered, container, example_tree, llmux_pod, render

pytestmark = pytest.mark.timeout(600)  # the first test may build the image

GRACE_SECONDS = 75  # terminationGracePeriodSeconds, checked against the manifest below

# Runs inside the extproc container (the image's Python): the pod's own HTTP client.
HTTP_CLIENT = """\
import json, sys, urllib.error, urllib.request
url, body = sys.argv[1], sys.argv[2].encode() or None
headers = {"content-type": "application/json", "authorization": "Bearer client-key"}
try:
    with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=20) as r:
        print(json.dumps([r.status, r.read().decode()]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
"""


@dataclass
class Pod:
    built: Built
    rendered: Rendered
    name: str

    @property
    def spec(self) -> Obj:
        return llmux_pod(self.rendered)

    def container(self, name: str) -> str:
        return f"{self.name}-{name}"  # kube play's container names

    def exec(self, container: str, *command: str, check: bool = True) -> int:
        run = self.built.root.run(
            "podman", "exec", self.container(container), *command, check=check
        )
        return run.returncode

    def http(self, url: str, body: Any = None) -> tuple[int, Any]:
        payload = "" if body is None else json.dumps(body)
        command = ("exec", self.container("extproc"), "python", "-c", HTTP_CLIENT, url, payload)
        status, text = json.loads(self.built.root.podman(*command))
        return status, json.loads(text) if text.startswith(("{", "[")) else text

    def logs(self) -> str:
        names = [self.container(c["name"]) for c in self.spec["containers"]] + ["simulated"]
        out = []
        for name in names:
            logs = self.built.root.run("podman", "logs", "--tail", "60", name, check=False)
            out.append(f"--- {name}\n{logs.stdout}{logs.stderr}")
        return "\n".join(out)


def chat(pod: Pod) -> tuple[int, Any]:
    port = container(pod.spec, "envoy")["ports"][0]["containerPort"]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    return pod.http(f"http://127.0.0.1:{port}/v1/chat/completions", body)


@pytest.fixture(scope="module")
def pod(
    built: Built, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Pod]:
    rendered = Rendered("dev", render(example_tree(tmp_path_factory.mktemp("k8s")), "dev"))
    envoy_image = container(llmux_pod(rendered), "envoy")["image"]
    started = time.monotonic()
    stand_ins.build_envoy(built.root, envoy_image)
    built.seconds["envoy stand-in build"] = time.monotonic() - started
    play = built.root.xfer / "llmux-pod.yaml"
    play.write_text(yaml.safe_dump_all(pod_spec.kube_play_objects(rendered)))
    started = time.monotonic()
    built.root.podman("kube", "play", "--network", "none", f"{XFER}/{play.name}")
    name = f"{rendered.get('Deployment', 'llmux')['metadata']['name']}-pod"
    result = Pod(built, rendered, name)
    _start_simulated_provider(result)
    _wait_until_started(result)
    built.seconds["pod start"] = time.monotonic() - started
    failed_before = request.session.testsfailed
    yield result
    if request.session.testsfailed > failed_before:
        print(result.logs())
    built.root.podman("kube", "down", "--force", f"{XFER}/{play.name}")
    built.root.remove_all()


def _start_simulated_provider(pod: Pod) -> None:
    source = pod.built.root.xfer / "src" / "tests"
    shutil.copytree(stand_ins.ROOT / "tests" / "simulated", source / "simulated")
    shutil.copy2(stand_ins.ROOT / "tests" / "__init__.py", source / "__init__.py")
    port = str(pod_spec.SIMULATED_PROVIDER_PORT)
    pod.built.root.podman(
        *("run", "--detach", "--name", "simulated", "--pod", pod.name),
        *("--volume", f"{XFER}/src/tests:/src/tests:ro", "--env", "PYTHONPATH=/src"),
        *("--entrypoint", "python", stand_ins.LLMUX_IMAGE, "-m", "tests.simulated"),
        *("--port", port),
    )
    _wait_for(lambda: "listening" in pod.built.root.podman("logs", "simulated"), pod, "simulated")


def _wait_until_started(pod: Pod) -> None:
    """Until every container's startupProbe passes (kube play made them healthchecks)."""
    for c in pod.spec["containers"]:
        name = pod.container(c["name"])
        timeout = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        _wait_for(lambda name=name: _healthy(pod, name), pod, name, timeout)


def _healthy(pod: Pod, name: str) -> bool:
    return pod.built.root.run("podman", "healthcheck", "run", name, check=False).returncode == 0


def _wait_for(ready: Any, pod: Pod, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not start in {timeout} s\n{pod.logs()}")
        time.sleep(0.3)


# --- the checks -----------------------------------------------------------------------


def test_only_the_shared_memory_volume_needed_a_change(built: Built, pod: Pod) -> None:
    rendered = Rendered("dev", render(example_tree(built.root.xfer / "fresh"), "dev"))
    changed = [v["name"] for v in pod_spec.shared_memory_volumes(llmux_pod(rendered))]
    assert changed == ["envoy-config"]


def test_the_init_container_renders_envoys_bootstrap(pod: Pod) -> None:
    listing = pod.built.root.podman("exec", pod.container("envoy"), "ls", "/etc/envoy")
    assert sorted(listing.split()) == ["cds.json", "envoy.json", "rds.json"]
    cat = ("exec", pod.container("envoy"), "cat", "/etc/envoy/envoy.json")
    bootstrap = json.loads(pod.built.root.podman(*cat))
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    extproc = clusters["llmux_extproc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    address = extproc["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("127.0.0.1", 50051)


def test_the_containers_run_as_10001_on_read_only_roots(pod: Pod) -> None:
    for c in pod.spec["containers"]:
        name = pod.container(c["name"])
        uid = pod.built.root.podman("exec", name, "id", "-u").strip()
        assert uid == "10001", f"{name} runs as {uid}"
        assert pod.exec(c["name"], "touch", "/probe-write", check=False) != 0, name


def test_every_probe_of_both_containers_passes(pod: Pod) -> None:
    for c in pod.spec["containers"]:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = c[probe]["exec"]["command"]
            assert pod.exec(c["name"], *command, check=False) == 0, f"{c['name']} {probe}"
        # ...and as podman's own healthcheck, which kube play made of the livenessProbe.
        health = pod.built.root.run("podman", "healthcheck", "run", pod.container(c["name"]))
        assert health.returncode == 0


def test_a_chat_request_through_envoys_port_reaches_the_simulated_provider(pod: Pod) -> None:
    status, reply = chat(pod)
    assert status == 200, f"{status} {reply}\n{pod.logs()}"
    assert reply["choices"][0]["message"]["content"].startswith("Hello from openai")
    _, received = pod.http(
        f"http://127.0.0.1:{pod_spec.SIMULATED_PROVIDER_PORT}/__control/requests"
    )
    assert [r["path"] for r in received] == ["/v1/chat/completions"]
    # The ext_proc put the Secret's key on the upstream call; the client's never left.
    secret_env = pod.rendered.pod_env(container(pod.spec, "extproc"))
    expected = f"Bearer {secret_env['OPENAI_API_KEY']}"
    assert received[0]["headers"]["authorization"] == expected


def test_envoy_and_the_ext_proc_talk_over_the_pods_loopback(pod: Pod) -> None:
    assert chat(pod)[0] == 200
    admin = pod.rendered.pod_env(container(pod.spec, "envoy"))["ENVOY_ADMIN_PORT"]
    status, stats = pod.http(f"http://127.0.0.1:{admin}/stats?filter=^cluster.llmux_extproc.")
    assert status == 200
    counters = dict(line.split(": ") for line in stats.splitlines())
    assert int(counters["cluster.llmux_extproc.upstream_rq_total"]) > 0
    assert int(counters["cluster.llmux_extproc.upstream_cx_connect_fail"]) == 0


def test_the_pod_stops_cleanly_within_its_grace_period(pod: Pod) -> None:
    assert pod.spec["terminationGracePeriodSeconds"] == GRACE_SECONDS
    pod.built.root.podman("rm", "--force", "--time", "0", "simulated")  # not part of the pod spec
    started = time.monotonic()
    pod.built.root.podman("pod", "stop", "--time", str(GRACE_SECONDS), pod.name, timeout=120)
    took = time.monotonic() - started
    for c in pod.spec["containers"]:
        inspect = pod.built.root.podman("container", "inspect", pod.container(c["name"]))
        code = json.loads(inspect)[0]["State"]["ExitCode"]
        assert code == 0, f"{c['name']} exited {code} on SIGTERM\n{pod.logs()}"
    assert took < GRACE_SECONDS
