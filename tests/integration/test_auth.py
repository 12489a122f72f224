"""Virtual keys, budgets, the admin API and hostile input, through real Envoy and Valkey."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis

from tests.harness import Gateway, Valkey, cluster_of, provider_config
from tests.simulated import SimulatedProviders

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]
ADMIN = "admin-secret-for-tests"
UPSTREAM_KEY = "sk-upstream-never-shown-0042"
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    return gateway_factory(
        {
            "providers": [provider_config("openai", "openai", sim.base_url, UPSTREAM_KEY)],
            "models": [
                {"name": "open", "targets": [{"provider": "openai", "model": "gpt-a"}]},
                {"name": "other", "targets": [{"provider": "openai", "model": "gpt-b"}]},
            ],
            "auth": {"required": True, "admin_key": ADMIN},
            "cache": {"enabled": True},
        },
        store_url=valkey.url,
    )


def admin(
    gateway: Gateway, method: str, path: str, body: Any = None, key: str = ADMIN
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, gateway.extproc_admin_url + path, json=body, headers=headers)


def new_key(gateway: Gateway, **spec: Any) -> dict[str, Any]:
    response = admin(gateway, "POST", "/admin/keys", {"name": "test", **spec})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def chat(gateway: Gateway, key: str | None, model: str = "open", **extra: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers=headers,
        json={"model": model, "messages": HELLO, **extra},
        timeout=10,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_admin_api_needs_the_admin_key(gateway: Gateway) -> None:
    assert admin(gateway, "GET", "/admin/keys", key="").status_code == 401
    assert admin(gateway, "GET", "/admin/keys", key="wrong").status_code == 401
    assert admin(gateway, "GET", "/admin/keys").status_code == 200
    assert httpx.get(gateway.url + "/admin/keys").status_code == 404  # not on the public listener


def test_keys_are_shown_once_and_stored_hashed(gateway: Gateway, db: redis.Redis) -> None:
    created = new_key(gateway, tenant="acme")
    secret = created["key"]
    listed = admin(gateway, "GET", "/admin/keys").json()["keys"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert secret not in str(listed) and "hash" not in listed[0]
    everything = b"".join(db.dump(k) or b"" for k in db.keys("*"))
    assert secret.encode() not in everything


def test_missing_and_invalid_keys_get_401_in_each_dialect(gateway: Gateway) -> None:
    assert chat(gateway, None).status_code == 401
    assert chat(gateway, "llmx-not-a-key").json()["error"]["type"] == "authentication_error"
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key="llmx-wrong", max_retries=0) as claude,
        pytest.raises(anthropic.AuthenticationError),
    ):
        claude.messages.create(model="open", max_tokens=20, messages=HELLO)
    gemini = httpx.post(
        f"{gateway.url}/v1beta/models/open:generateContent",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert gemini.status_code == 401 and gemini.json()["error"]["status"] == "UNAUTHENTICATED"


def test_each_sdk_presents_its_key_its_own_way(gateway: Gateway, sim: SimulatedProviders) -> None:
    secret = new_key(gateway)["key"]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0) as oai:
        assert oai.chat.completions.create(model="open", messages=HELLO).choices[0].message.content
    with anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0) as claude:
        assert claude.messages.create(model="open", max_tokens=20, messages=HELLO).content
    gemini = httpx.post(
        f"{gateway.url}/v1beta/models/open:generateContent",
        headers={"x-goog-api-key": secret},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert gemini.status_code == 200
    ollama = httpx.post(
        f"{gateway.url}/api/chat",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "open", "messages": HELLO, "stream": False},
    )
    assert ollama.status_code == 200
    for request in sim.requests:
        assert request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert secret not in str(request.headers)


def test_disallowed_model_is_403(gateway: Gateway) -> None:
    secret = new_key(gateway, models=["open"])["key"]
    assert chat(gateway, secret, "open").status_code == 200
    refused = chat(gateway, secret, "other")
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"


def test_key_rpm_limit_is_429_with_retry_after(gateway: Gateway) -> None:
    secret = new_key(gateway, rpm=2)["key"]
    assert [chat(gateway, secret).status_code for _ in range(2)] == [200, 200]
    limited = chat(gateway, secret)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_budget_is_charged_from_real_usage_then_enforced(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    created = new_key(gateway, budget={"tokens": 25, "period": "day"})
    secret = created["key"]
    path = f"/admin/keys/{created['id']}"

    def charged() -> int:
        usage = admin(gateway, "GET", path).json()["usage"]
        return int(usage.get("input_tokens", 0) + usage.get("output_tokens", 0))

    used = 0
    while used < 25:
        response = chat(gateway, secret, temperature=used / 100, stream=True)
        assert response.status_code == 200
        last = sim.last_request("openai").usage
        assert last is not None
        used += last.total_tokens
        expected = used
        wait_until(lambda: charged() == expected)  # noqa: B023 - evaluated in this iteration
    refused = chat(gateway, secret, temperature=0.99)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) <= 86400
    assert "budget" in refused.json()["error"]["message"]


def test_cache_hits_cost_no_tokens_and_are_counted_apart(gateway: Gateway) -> None:
    created = new_key(gateway)
    for _ in range(2):
        assert chat(gateway, created["key"]).status_code == 200
    path = f"/admin/keys/{created['id']}"
    wait_until(lambda: admin(gateway, "GET", path).json()["usage"].get("cache_hits") == 1)
    usage = admin(gateway, "GET", path).json()["usage"]
    assert usage["requests"] == 2
    assert usage["input_tokens"] > 0  # from the one upstream call only


def test_tenants_never_read_each_others_cache(gateway: Gateway) -> None:
    acme = new_key(gateway, tenant="acme")["key"]
    acme_too = new_key(gateway, tenant="acme")["key"]
    globex = new_key(gateway, tenant="globex")["key"]
    assert chat(gateway, acme).headers["x-llmux-cache"] == "miss"
    assert chat(gateway, globex).headers["x-llmux-cache"] == "miss"
    assert chat(gateway, acme_too).headers["x-llmux-cache"] == "hit"


def test_revoked_and_expired_keys_are_refused(gateway: Gateway) -> None:
    created = new_key(gateway)
    assert chat(gateway, created["key"]).status_code == 200
    assert admin(gateway, "DELETE", f"/admin/keys/{created['id']}").json()["revoked"] is True
    assert chat(gateway, created["key"]).status_code == 401
    expired = new_key(gateway, expires_at=int(time.time()) - 1)["key"]
    assert "expired" in chat(gateway, expired).json()["error"]["message"]


def test_admin_rejects_bad_input_clearly(gateway: Gateway) -> None:
    assert admin(gateway, "POST", "/admin/keys", {"rpm": 3}).status_code == 400  # no name
    assert (
        admin(gateway, "POST", "/admin/keys", {"name": "x", "models": ["nope"]}).status_code == 400
    )
    typo = admin(gateway, "POST", "/admin/keys", {"name": "x", "models": ["opne"]})
    assert typo.json()["error"]["message"] == "unknown models: 'opne'; did you mean `open`?"
    assert admin(gateway, "GET", "/admin/keys/key_missing").status_code == 404
    quota = admin(gateway, "GET", "/admin/quota").json()["credentials"]
    assert quota[0]["provider"] == "openai" and "api_key" not in str(quota)


def test_cli_creates_lists_and_revokes(gateway: Gateway) -> None:
    base = [sys.executable, "-m", "extproc", "keys", "--config", str(gateway.config_path)]
    created = subprocess.run(
        [*base, "create", "--name", "cli", "--rpm", "5"], capture_output=True, text=True, check=True
    )
    assert '"key": "llmx-' in created.stdout
    key_id = next(line.split('"')[3] for line in created.stdout.splitlines() if '"id"' in line)
    listed = subprocess.run([*base, "list"], capture_output=True, text=True, check=True)
    assert key_id in listed.stdout and "llmx-" not in listed.stdout
    revoked = subprocess.run([*base, "revoke", key_id], capture_output=True, text=True, check=True)
    assert '"revoked": true' in revoked.stdout


# ------------------------------------------------------------------ hostile input


def test_oversized_body_is_413_in_the_clients_dialect(gateway: Gateway) -> None:
    secret = new_key(gateway)["key"]
    huge = "x" * (11 * 1024 * 1024)
    response = chat(gateway, secret, user=huge)
    assert response.status_code == 413
    assert "error" in response.json()


def test_deeply_nested_json_is_a_quick_400(gateway: Gateway) -> None:
    secret = new_key(gateway)["key"]
    body = b'{"model": "open", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    started = time.monotonic()
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert response.status_code == 400
    assert time.monotonic() - started < 2
    assert chat(gateway, secret).status_code == 200  # the processor is still fine


# A free-form field (tool schemas, options, unknown fields) nested deeper than Python's
# recursion limit, in each client dialect: a 400 in that dialect, never a 500.
DEEP_FIELD_BODIES = {
    "/v1/chat/completions": {
        "model": "open",
        "messages": HELLO,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": "DEEP"}}],
    },
    "/v1/messages": {
        "model": "open",
        "max_tokens": 10,
        "messages": HELLO,
        "tools": [{"name": "f", "input_schema": {"type": "object", "x": "DEEP"}}],
    },
    "/v1beta/models/open:generateContent": {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "tools": [{"functionDeclarations": [{"name": "f", "parameters": "DEEP"}]}],
    },
    "/api/chat": {"model": "open", "messages": HELLO, "options": {"seed": 1}, "extra": "DEEP"},
    "/api/smart": {"prompt": "hi", "model": "open", "metadata": "DEEP"},
}


def client_error_message(path: str, body: Any) -> str:
    """The error message, read the way each client dialect carries it."""
    if path == "/v1/messages":
        assert body["type"] == "error"
    if path.startswith("/v1beta/"):
        assert body["error"]["status"] == "INVALID_ARGUMENT"
    error = body["error"]
    return error if isinstance(error, str) else str(error["message"])


@pytest.mark.parametrize("path", sorted(DEEP_FIELD_BODIES))
def test_deep_json_in_a_free_form_field_is_a_400_in_the_clients_format(
    gateway: Gateway, path: str
) -> None:
    secret = new_key(gateway)["key"]
    deep = "[" * 5000 + "{}" + "]" * 5000
    body = json.dumps(DEEP_FIELD_BODIES[path]).replace('"DEEP"', deep)
    response = httpx.post(
        gateway.url + path,
        content=body,
        headers={"authorization": f"Bearer {secret}", "x-goog-api-key": secret},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert "nests deeper than" in client_error_message(path, response.json())


def test_clients_cannot_pick_an_upstream(gateway: Gateway, sim: SimulatedProviders) -> None:
    secret = new_key(gateway)["key"]
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={
            "authorization": f"Bearer {secret}",
            "x-llmux-cluster": cluster_of(gateway, "other"),
            "x-llmux-client": "anthropic",
            "x-api-key": "sk-client-chosen",
        },
        json={
            "model": "open",
            "messages": HELLO,
            "api_base": "http://evil.example",
            "base_url": "http://evil.example",
        },
    )
    assert response.status_code == 200
    upstream = sim.last_request("openai")
    assert upstream.body["model"] == "gpt-a"  # the route of "open", not the spoofed "other"
    assert "api_base" not in upstream.body and "base_url" not in upstream.body
    assert "x-api-key" not in upstream.headers
    assert not any(h.startswith("x-llmux-") for h in upstream.headers)


def test_secrets_never_reach_logs_or_errors(gateway: Gateway, sim: SimulatedProviders) -> None:
    secret = new_key(gateway)["key"]
    from tests.simulated import Fault

    sim.inject(Fault.error(401), provider="openai")
    failed = chat(gateway, secret)
    assert UPSTREAM_KEY not in failed.text and secret not in failed.text
    chat(gateway, secret, stream=True)
    chat(gateway, "llmx-wrong-key-material")
    logs = gateway.logs()
    for material in (UPSTREAM_KEY, secret, ADMIN, "llmx-wrong-key-material"):
        assert material not in logs
