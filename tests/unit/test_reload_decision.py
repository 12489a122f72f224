"""The reload decision without Envoy: when a config file counts as changed, what applies."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from extproc.config import settings as config
from extproc.envoy.xds import XdsPublisher
from extproc.run import children
from extproc.run.reload import ConfigWatcher, Reloader, Reloading, ReloadThread

CONFIG = """
providers:
  - {name: oa, type: openai, base_url: "http://127.0.0.1:9", api_key: KEY}
models:
  - name: gpt
    targets: [{provider: oa, model: gpt-up}]
"""


def write(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    file = tmp_path / "llmux.yaml"
    file.write_text(CONFIG)
    return file


def reloader(path: Path, applied: list[config.Config]) -> Reloader:
    return Reloader(ConfigWatcher(path, env={}), config.load(path, env={}), applied.append)


def test_nothing_happens_while_the_content_is_the_same(path: Path) -> None:
    applied: list[config.Config] = []
    subject = reloader(path, applied)
    write(path, CONFIG)  # rewritten, same bytes (a Kubernetes ConfigMap resync)
    assert subject.tick() is False and applied == []


def test_a_changed_file_is_applied_once(path: Path) -> None:
    applied: list[config.Config] = []
    subject = reloader(path, applied)
    write(path, CONFIG.replace("KEY", "ROTATED"))
    assert subject.tick() is True
    assert subject.tick() is False
    assert applied[0].providers[0].api_key == "ROTATED"


def test_a_forced_reload_reads_the_file_even_if_unchanged(path: Path) -> None:
    applied: list[config.Config] = []
    subject = reloader(path, applied)
    assert subject.tick(forced=True) is True and len(applied) == 1


def test_an_invalid_config_is_rejected_with_a_log_line(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied: list[config.Config] = []
    subject = reloader(path, applied)
    write(path, CONFIG.replace("provider: oa", "provider: nowhere"))
    with caplog.at_level(logging.ERROR, logger="llmux.reload"):
        assert subject.tick() is False
    assert applied == []
    assert "config reload rejected" in caplog.text and "nowhere" in caplog.text
    assert "KEY" not in caplog.text  # never the credentials
    write(path, "models: [")  # not YAML at all
    assert subject.tick() is False and applied == []


def test_process_sections_keep_their_running_values(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied: list[config.Config] = []
    subject = reloader(path, applied)
    write(path, CONFIG.replace("KEY", "NEW") + "limits: {max_body_bytes: 5}\nlisten: {port: 1}\n")
    with caplog.at_level(logging.WARNING, logger="llmux.reload"):
        assert subject.tick() is True
    new = applied[0]
    assert new.providers[0].api_key == "NEW"  # applied
    assert new.limits == config.Limits() and new.listen.port != 1  # at the next restart
    assert "listen, limits apply at the next restart" in caplog.text


def test_sighup_wakes_the_thread_at_once(path: Path) -> None:
    applied: list[config.Config] = []
    thread = ReloadThread(reloader(path, applied), interval_s=0)  # SIGHUP only
    thread.thread.start()
    try:
        thread.hangup()
        deadline = time.monotonic() + 5
        while not applied and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(applied) == 1
    finally:
        thread.stop()
    assert not thread.thread.is_alive()
    assert Reloading(str(path)).interval_s == 1.0


def test_a_config_envoy_does_not_confirm_is_rejected_and_its_files_restored(
    path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = config.load(path, env={})
    xds = XdsPublisher(tmp_path / "xds", children.free_port(), ack_timeout_s=0.3)
    xds.publish(running, wait=False)
    before = (tmp_path / "xds" / "cds.json").read_text()
    applied: list[config.Config] = []
    subject = Reloader(ConfigWatcher(path, env={}), running, applied.append, xds)
    write(path, CONFIG.replace("gpt-up", "gpt-other"))  # a new cluster for Envoy
    with caplog.at_level(logging.ERROR, logger="llmux.reload"):
        assert subject.tick() is False
    assert applied == [] and "config reload rejected" in caplog.text
    restored = json.loads((tmp_path / "xds" / "cds.json").read_text())
    assert [c["name"] for c in restored["resources"]] == [
        c["name"] for c in json.loads(before)["resources"]
    ]


def test_with_a_static_envoy_only_changes_envoy_does_not_see_apply(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied: list[config.Config] = []
    running = config.load(path, env={})
    subject = Reloader(ConfigWatcher(path, env={}), running, applied.append, static_envoy=True)
    write(path, CONFIG.replace("KEY", "ROTATED"))  # a credential: the ext_proc's alone
    assert subject.tick() is True
    write(path, CONFIG.replace("KEY", "ROTATED").replace("gpt-up", "gpt-other"))
    with caplog.at_level(logging.ERROR, logger="llmux.reload"):
        assert subject.tick() is False  # a new target needs a new Envoy cluster
    assert len(applied) == 1 and "--xds-dir" in caplog.text
