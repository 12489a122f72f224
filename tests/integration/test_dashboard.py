"""The admin dashboard in a real headless Chromium, over real Envoy, ext_proc and Valkey.

Requests go through the gateway with the official OpenAI SDK; the page must then show
them (recent rows, totals, the chart, the cache hit ratio, credential quotas), and a key
created and revoked from the page must work and then stop working through Envoy.
Debian's chromium and chromedriver drive it (`python -m tests.install_browser`, part of
README's test command, installs them with apt; the test only finds them and fails, never skips, when they are missing); Selenium Manager is never
used. The screenshot lands in $LLMUX_TEST_OUTPUT (default: test-output/).
"""

from __future__ import annotations

import base64
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.harness import Gateway, Valkey, provider_config
from tests.install_browser import CHROMEDRIVER, CHROMIUM, missing
from tests.simulated import SimulatedProviders

pytestmark = pytest.mark.integration
ADMIN = "admin-secret-for-dashboard-tests"
OUTPUT = Path(
    os.environ.get("LLMUX_TEST_OUTPUT") or Path(__file__).resolve().parents[2] / "test-output"
)
WAIT_S = 45  # generous: two slow cores run Envoy, two workers, Valkey and Chromium


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    return gateway_factory(
        {
            "providers": [
                {
                    "name": "openai",
                    "type": "openai",
                    "base_url": sim.base_url,
                    "credentials": [
                        {"name": "team-a", "api_key": "sk-team-a", "rpm": 60, "tpm": 200000},
                        {"name": "team-b", "api_key": "sk-team-b", "rpm": 60, "tpm": 200000},
                    ],
                },
                provider_config("anthropic", "anthropic", sim.base_url, "sk-ant-upstream"),
            ],
            "models": [
                {
                    "name": "gpt-4o-mini",
                    "targets": [{"provider": "openai", "model": "gpt-4o-mini"}],
                },
                {
                    "name": "claude-sonnet",
                    "targets": [{"provider": "anthropic", "model": "claude-sonnet-4-5"}],
                },
            ],
            # Two workers: the admin port reaches either, so the figures must come from Redis.
            "extproc": {"workers": 2},
            "auth": {"required": True, "admin_key": ADMIN},
            "cache": {"enabled": True},
        },
        store_url=valkey.url,
    )


@pytest.fixture(scope="module")
def db(valkey: Valkey) -> Iterator[redis.Redis]:
    client = valkey.client()
    client.flushdb()
    yield client
    client.close()


def basic(password: str, user: str = "admin") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def admin(gateway: Gateway, method: str, path: str, body: Any = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {ADMIN}"}
    return httpx.request(
        method, gateway.extproc_admin_url + path, json=body, headers=headers, timeout=10
    )


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=20)


def find_chromium() -> None:
    """Debian's chromium and its driver must be installed: a test never installs packages."""
    absent = missing()
    if absent:
        pytest.fail(f"{', '.join(absent)} missing: run python -m tests.install_browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    find_chromium()
    profile = Path(tempfile.mkdtemp(prefix="llmux-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def until(driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], Any]) -> Any:
    wait = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
    )
    return wait.until(condition)


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def by_id(driver: webdriver.Chrome, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


# The page re-renders its tables every few seconds: read what a check needs in one
# script run (atomic between two renders) instead of holding elements that go stale.
_VIEW = """
const all = (testid) => [...document.querySelectorAll(`[data-testid="${testid}"]`)];
const text = (id) => document.getElementById(id).textContent;
const line = all("chart-tokens")[0];
return {
  total: text("total-requests"),
  errors: text("total-errors"),
  ratio: text("cache-hit-ratio"),
  recent: all("recent-row").map((r) => ({
    model: r.dataset.model || null, provider: r.dataset.provider || null, text: r.innerText,
  })),
  bars: all("chart-bar").map((b) => Number(b.getAttribute("height"))),
  tokens: line ? line.getAttribute("points") : "",
  credentials: all("credential-row").map((r) => r.innerText),
  keys: Object.fromEntries(all("key-row").map((r) => [r.dataset.keyId, r.innerText])),
};
"""


def view(driver: webdriver.Chrome) -> dict[str, Any]:
    found: dict[str, Any] = driver.execute_script(_VIEW)
    return found


def view_when(condition: Callable[[dict[str, Any]], bool]) -> Callable[[webdriver.Chrome], Any]:
    """A wait condition over the page's view; the view itself once it holds."""

    def check(driver: webdriver.Chrome) -> Any:
        found = view(driver)
        return found if condition(found) else False

    return check


def click(driver: webdriver.Chrome, testid: str) -> bool:
    driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]').click()
    return True


def test_the_dashboard_needs_the_admin_key(gateway: Gateway) -> None:
    url = gateway.extproc_admin_url + "/admin/dashboard"
    anonymous = httpx.get(url)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith('Basic realm="llmux admin"')
    assert httpx.get(url, headers={"authorization": basic("wrong")}).status_code == 401
    assert httpx.get(url + "/dashboard.js").status_code == 401
    page = httpx.get(url, headers={"authorization": basic(ADMIN)})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert ADMIN not in page.text
    script = httpx.get(url + "/dashboard.js", headers={"authorization": basic(ADMIN)})
    assert script.status_code == 200 and ADMIN not in script.text
    missing = httpx.get(url + "/secrets.txt", headers={"authorization": basic(ADMIN)})
    assert missing.status_code == 404
    # A browser sends Basic credentials by itself: changes also need the page's header.
    keys = gateway.extproc_admin_url + "/admin/keys"
    forged = httpx.post(keys, json={"name": "csrf"}, headers={"authorization": basic(ADMIN)})
    assert forged.status_code == 403
    assert all(k["name"] != "csrf" for k in admin(gateway, "GET", "/admin/keys").json()["keys"])


def seed_history(db: redis.Redis) -> int:
    """Earlier minutes, written as a worker's flush writes them: the chart has a past.

    Returns how many requests they hold. Live figures are checked on top of them.
    """
    now_minute = int(time.time() // 60) * 60
    total = 0
    for ago in range(3, 50):
        requests = 4 + (ago * 7) % 9
        sums = {
            "requests": requests,
            "errors": int(ago % 11 == 0),
            "input_tokens": requests * (40 + ago % 5 * 10),
            "output_tokens": requests * (90 + ago % 7 * 15),
            "cache_hits": ago % 3,
        }
        db.hset(f"llmux:series:{now_minute - 60 * ago}", mapping=sums)
        total += requests
    return total


def send_traffic(gateway: Gateway) -> None:
    """Two chats (the second a cache hit), a stream to another provider, a refused key."""
    created = admin(gateway, "POST", "/admin/keys", {"name": "ci", "tenant": "acme"})
    assert created.status_code == 201, created.text
    hello = [{"role": "user", "content": "Say hello"}]
    with client(gateway, created.json()["key"]) as oai:
        assert oai.chat.completions.create(model="gpt-4o-mini", messages=hello).choices
        # The answer is cached after it went out: ask again once it is there.
        wait_until(lambda: admin(gateway, "GET", "/admin/cache/stats").json()["entries"] == 1)
        assert oai.chat.completions.create(model="gpt-4o-mini", messages=hello).choices
        streamed = oai.chat.completions.create(
            model="claude-sonnet",
            messages=[{"role": "user", "content": "Count to 3"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        assert list(streamed)
    with client(gateway, "llmx-not-a-key") as stranger, pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="gpt-4o-mini", messages=hello)


def test_the_dashboard_shows_live_figures_and_manages_keys(
    gateway: Gateway, db: redis.Redis, browser: webdriver.Chrome
) -> None:
    earlier = seed_history(db)
    send_traffic(gateway)
    browser.get("about:blank")
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": basic(ADMIN)}}
    )
    browser.get(gateway.extproc_admin_url + "/admin/dashboard")

    # Live figures: the four requests, each in the recent table, from Redis via any worker.
    page = until(browser, view_when(lambda v: v["total"] == f"{earlier + 4:,}"))
    assert len(page["recent"]) == 4
    seen = {(row["model"], row["provider"]) for row in page["recent"]}
    assert ("gpt-4o-mini", "openai") in seen and ("gpt-4o-mini", "cache") in seen
    assert ("claude-sonnet", "anthropic") in seen
    table = "\n".join(row["text"] for row in page["recent"])
    assert "401" in table and "hit" in table and "claude-sonnet-4-5" in table
    errors = sum(int(db.hget(k, "errors") or 0) for k in db.keys("llmux:series:*"))
    assert page["errors"] == f"{errors} errors" and errors > 1
    # Every minute with traffic has its bar (the live one, or two across a minute's end).
    assert len(page["bars"]) >= 47 + 1 and all(height > 0 for height in page["bars"])
    assert len(page["tokens"].split()) == 60

    stats = admin(gateway, "GET", "/admin/cache/stats").json()
    assert stats["hits"] == 1
    ratio = f"{stats['hit_ratio'] * 100:.1f}%"
    until(browser, view_when(lambda v: v["ratio"] == ratio))

    # Each credential with its quota use, and its provider's deep health (asked once).
    page = until(browser, view_when(lambda v: sum("ok ·" in r for r in v["credentials"]) == 3))
    credentials = "\n".join(page["credentials"])
    assert "team-a" in credentials and "team-b" in credentials and "/ 60 (" in credentials

    secret, key_id = create_key_from_the_page(gateway, browser, earlier + 5)
    revoke_key_from_the_page(gateway, browser, secret, key_id)

    assert ADMIN not in browser.find_element(By.TAG_NAME, "body").text
    assert ADMIN not in browser.page_source
    save_screenshot(browser)
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe


def test_the_dashboard_works_with_credentials_in_its_url_and_after_a_login(
    gateway: Gateway, browser: webdriver.Chrome
) -> None:
    browser.get("about:blank")
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
    browser.get_log("browser")  # forget what earlier pages logged
    port = gateway.config.extproc.admin_port
    # `fetch` refuses a URL with credentials: the page must call its bare origin.
    browser.get(f"http://admin:{ADMIN}@127.0.0.1:{port}/admin/dashboard")
    assert_the_page_works(browser)
    # The browser now holds the login for the realm, as after answering its own
    # Basic prompt: the plain URL works from that login alone.
    browser.get(f"http://127.0.0.1:{port}/admin/dashboard")
    assert_the_page_works(browser)


def assert_the_page_works(browser: webdriver.Chrome) -> None:
    until(browser, view_when(lambda v: any("team-a" in row for row in v["credentials"])))
    until(browser, lambda d: by_id(d, "total-requests").text not in ("", "–"))
    assert by_id(browser, "problem").get_attribute("hidden") is not None
    assert ADMIN not in browser.page_source
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe


def create_key_from_the_page(
    gateway: Gateway, browser: webdriver.Chrome, total: int
) -> tuple[str, str]:
    by_id(browser, "key-name").send_keys("from-dashboard")
    by_id(browser, "key-tenant").send_keys("acme")
    by_id(browser, "key-models").send_keys("gpt-4o-mini")
    by_id(browser, "key-rpm").send_keys("30")
    by_id(browser, "key-budget").send_keys("50000")
    by_id(browser, "key-create").click()
    secret: str = until(browser, lambda d: by_id(d, "created-secret").text)
    key_id = by_id(browser, "created-id").text
    assert secret.startswith("llmx-")

    listed = {k["id"]: k for k in admin(gateway, "GET", "/admin/keys").json()["keys"]}
    assert listed[key_id]["name"] == "from-dashboard" and listed[key_id]["rpm"] == 30
    assert listed[key_id]["models"] == ["gpt-4o-mini"]
    assert listed[key_id]["budget"] == {"tokens": 50000, "period": "month"}
    with client(gateway, secret) as oai:
        reply = oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "From the page"}]
        )
        assert reply.choices[0].message.content
    # Its row shows its budget; the totals count its request at a later poll.
    until(browser, view_when(lambda v: "50k per month" in v["keys"].get(key_id, "")))
    until(browser, view_when(lambda v: v["total"] == f"{total:,}"))
    return secret, key_id


def revoke_key_from_the_page(
    gateway: Gateway, browser: webdriver.Chrome, secret: str, key_id: str
) -> None:
    by_id(browser, "created-done").click()
    assert not by_id(browser, "created-secret").text  # the secret leaves the page
    until(browser, lambda d: click(d, f"revoke-{key_id}"))
    until(browser, expected_conditions.alert_is_present()).accept()
    until(browser, view_when(lambda v: "revoked" in v["keys"].get(key_id, "")))
    assert not browser.find_elements(By.CSS_SELECTOR, f'[data-testid="revoke-{key_id}"]')

    assert admin(gateway, "GET", f"/admin/keys/{key_id}").json()["revoked"] is True
    with client(gateway, secret) as oai, pytest.raises(openai.AuthenticationError):
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )


def save_screenshot(browser: webdriver.Chrome) -> None:
    """The whole page, at the width a desktop browser shows it."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, int(height) + 140)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / "dashboard.png"
    try:
        assert browser.save_screenshot(str(path))
    except WebDriverException as exc:
        raise AssertionError(f"screenshot failed: {exc}") from exc
    print(f"dashboard screenshot: {path}")


def test_activity_api_fills_every_minute(gateway: Gateway) -> None:
    answer = admin(gateway, "GET", "/admin/activity?minutes=5")
    assert answer.status_code == 200
    series = answer.json()["series"]
    assert len(series) == 5
    assert [b["minute"] - a["minute"] for a, b in itertools.pairwise(series)] == [60] * 4
    assert series[-1]["minute"] <= time.time() < series[-1]["minute"] + 60
    assert admin(gateway, "GET", "/admin/activity?minutes=soon").status_code == 400


def test_cache_counts_come_without_a_keyspace_scan(gateway: Gateway) -> None:
    counts = admin(gateway, "GET", "/admin/cache/stats?entries=false").json()
    assert set(counts) == {"hits", "misses", "hit_ratio"}
    assert set(admin(gateway, "GET", "/admin/cache/stats").json()) >= {"entries", "bytes"}
