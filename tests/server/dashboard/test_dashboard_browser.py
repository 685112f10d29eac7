"""The dashboard in a real headless browser (Debian's chromium, driven by playwright; no browser
is downloaded) against a real server: the page renders, lists the models, shows a hostile model
name as text without running it, and its figures move while requests are sent.

``CLIPPERD_DASHBOARD_SCREENSHOT=docs/img/dashboard.png`` keeps the page's screenshot there (how
the one in docs/dashboard.md was made)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from clipperd_admin import ApplicationAdmin
from tests.appmodels import X, add_model, predict
from tests.server.dashboard.repo import HOSTILE, IDENTITY, MONITORED, dashboard_repository
from tests.serverproc import ServerProcess, running

pytestmark = pytest.mark.timeout(180)

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEADLINE_MS = 60_000


APP = "vote"  # an application over two member models
MEMBERS = ("member_a", "member_b")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = dashboard_repository(tmp_path_factory.mktemp("dashboard") / "models")
    for value, member in enumerate(MEMBERS, 1):
        add_model(repository, member, value=value)
    with running(repository, log_dir=tmp_path_factory.mktemp("logs")) as server:
        ApplicationAdmin(server.http_url).register_application(
            APP, list(MEMBERS), policy="vote", default_output=-1, slo_micros=5_000_000
        )
        yield server


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: run scripts/install-chromium.sh (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1500, "height": 640},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def watch(page: Any) -> dict[str, list[str]]:
    """The page's dialogs (an alert() a name would raise), console errors and failed loads."""
    seen: dict[str, list[str]] = {"dialogs": [], "errors": []}

    def dialog(d: Any) -> None:
        seen["dialogs"].append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    return seen


class Load:
    """Requests to a model (tritonclient over HTTP) and, one in ten, to the application (Clipper's
    REST API), from a thread until stopped."""

    def __init__(self, server: ServerProcess, model: str) -> None:
        self.stop = threading.Event()
        self.sent = 0
        self._server = server
        self._thread = threading.Thread(target=self._run, args=(model,), daemon=True)

    def _run(self, model: str) -> None:
        with httpclient.InferenceServerClient(self._server.http_url) as client:
            data = np.ones((1, 16), np.float32)
            tensor = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            while not self.stop.is_set():
                client.infer(model, [tensor])
                if self.sent % 10 == 0:
                    predict(self._server, APP, {"input": X})
                self.sent += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)


def wait_page(page: Any, check: Callable[[], bool], what: str) -> None:
    """Polls ``check`` from here (the page's policy forbids the string evaluation that
    playwright's wait_for_function uses), the page's events served between looks."""
    for _ in range(DEADLINE_MS // 100):
        if check():
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"{what}: not within {DEADLINE_MS / 1000:.0f} s")


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def cell(page: Any, model: str, column: int) -> str:
    """The text of a model's row's cell (0: name), as shown."""
    return str(
        page.locator("#models tbody tr")
        .filter(has=page.get_by_text(model, exact=True))
        .locator("td")
        .nth(column)
        .inner_text()
    )


def test_the_page_lists_the_models_and_its_figures_move_under_load(server: ServerProcess, page: Any) -> None:
    seen = watch(page)
    response = page.goto(f"http://{server.http_url}/dashboard")
    assert response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector("#models tbody tr[data-model]", timeout=DEADLINE_MS)
    names = page.eval_on_selector_all("#models tbody tr[data-model]", "rows => rows.map(r => r.dataset.model)")
    assert sorted(names) == sorted([IDENTITY, HOSTILE, MONITORED, *MEMBERS])
    assert page.inner_text("#total-ready") == "5 / 5"
    before = page.inner_text("#total-requests")
    with Load(server, IDENTITY) as load:
        wait_page(page, lambda: page.inner_text("#total-requests") != before, "the request count moves")
        # the rate needs two looks a second apart: then the row shows requests per second
        wait_page(page, lambda: number(cell(page, IDENTITY, 4)) > 0, "the model's requests per second show")
        assert load.sent > 0
        assert cell(page, IDENTITY, 2) == "READY"
        assert cell(page, IDENTITY, 6) != "–"  # p50 ms
        assert "cpu: 64" in cell(page, IDENTITY, 11)  # the device's batch cap (max_batch_size, no AIMD target)
        app = page.locator("#applications tbody tr").filter(has=page.get_by_text(APP, exact=True)).locator("td")
        wait_page(page, lambda: number(app.nth(3).inner_text()) > 0, "the application's predictions show")
        assert app.nth(2).inner_text() == ", ".join(MEMBERS)
        screenshot(page, server)
    assert seen == {"dialogs": [], "errors": []}


def screenshot(page: Any, server: ServerProcess) -> None:
    shot = server.log_path.with_suffix(".png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("CLIPPERD_DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


def test_a_hostile_model_name_is_shown_as_text_and_never_runs(server: ServerProcess, page: Any) -> None:
    seen = watch(page)
    page.goto(f"http://{server.http_url}/dashboard")
    page.wait_for_selector("#models tbody tr[data-model]", timeout=DEADLINE_MS)
    wait_page(page, lambda: cell(page, HOSTILE, 0) == HOSTILE, "the hostile name shown as text")
    assert page.locator("#models img, #models script").count() == 0  # no element came from the name
    page.wait_for_timeout(1500)  # a second poll redraws the rows: still text
    assert page.locator("body img, #models script").count() == 0
    assert seen["dialogs"] == []
    assert seen["errors"] == []


def test_the_page_runs_no_inline_script(server: ServerProcess, page: Any) -> None:
    """The Content-Security-Policy forbids inline script: one added to the page is blocked."""
    seen = watch(page)
    page.goto(f"http://{server.http_url}/dashboard")
    page.wait_for_selector("#models tbody tr[data-model]", timeout=DEADLINE_MS)
    page.evaluate(
        """() => { const s = document.createElement('script');
                   s.textContent = 'window.injected = 1'; document.body.appendChild(s); }"""
    )
    assert page.evaluate("() => window.injected") is None
    assert any("Content Security Policy" in e for e in seen["errors"])
