"""The console of ``elastask serve`` in a real browser (Debian's chromium, headless, through Selenium and
chromium-driver), on real processes: a worker, a beat, the engine, Redis and simulated Kibana nodes.

What the page shows is checked against the simulator's own counts; its controls against what the
simulated nodes then run. ``ELASTASK_SCREENSHOTS=<dir>``: the page's screenshots go there (docs/ holds
the ones the README shows); else into the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from elastask.core.documents import new_task
from elastask.parts.store import TaskStore
from elastask_bed.testbed.bed import SimulatorProcess
from elastask_bed.testbed.process import free_port
from tests.integration.harness import (
    Dispatcher,
    assert_no_violations,
    console_login,
    now,
    seed,
    task_count,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SimulatorFactory = Callable[..., SimulatorProcess]
DispatcherFactory = Callable[..., Dispatcher]
PASSWORD = "console-secret-3e9d"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless chromium (scripts/test installs Debian's chromium and chromium-driver)."""
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "Debian's chromium and chromium-driver are needed: apt-get install chromium chromium-driver "
        "(scripts/test installs them)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,1500"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("ELASTASK_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    driver.save_screenshot(str(path))
    return path


def console(dispatcher: Dispatcher, password: str | None = PASSWORD) -> str:
    port = free_port()
    env = {"ELASTASK_CONSOLE_USERNAME": "ops"} | ({"ELASTASK_CONSOLE_PASSWORD": password} if password else {})
    dispatcher.exporter(port, env=env)
    return f"http://127.0.0.1:{port}"


def log_in(driver: WebDriver, base: str) -> None:
    """Log in with the keyboard only: type, Tab, type, Enter."""
    driver.get(base + "/console/login")
    driver.find_element(By.ID, "username").send_keys("ops", Keys.TAB, PASSWORD, Keys.ENTER)
    wait_for(lambda: bool(driver.find_elements(By.ID, "user")), 10, "logged in")
    page_refreshed(driver)


def page_refreshed(driver: WebDriver) -> None:
    """Wait for the page's next refresh (it reads /console/api/state every 2 s)."""

    def refreshed() -> str | None:
        return driver.find_element(By.TAG_NAME, "body").get_attribute("data-refreshed")

    before = refreshed()
    wait_for(lambda: refreshed() != before, 15, "a refresh")


def node_row(driver: WebDriver, owner_id: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'#nodes tr[data-owner="{owner_id}"]')


def in_flight(driver: WebDriver, owner_id: str) -> tuple[int, int]:
    text = node_row(driver, owner_id).find_element(By.CSS_SELECTOR, "td.in-flight").text
    match = re.search(r"(\d+) / (\d+)", text)
    assert match, text
    return int(match.group(1)), int(match.group(2))


def message(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "message").text)


def test_the_page_shows_the_nodes_backlog_and_drift_as_the_simulator_counts_them(
    store: TaskStore,
    redis_client: redis.Redis,
    simulator: SimulatorFactory,
    dispatcher_factory: DispatcherFactory,
    browser: WebDriver,
    tmp_path: Path,
) -> None:
    sim = simulator(nodes=3, run_ms="400")
    es = store.client
    dispatcher = dispatcher_factory(sim)
    base = console(dispatcher)
    owners = [n["owner_id"] for n in sim.nodes]
    browser.get(base + "/console")
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#nodes tr[data-owner]")) == 3, 30, "three node rows")
    assert browser.find_elements(By.ID, "login")  # not logged in: the controls are off
    assert all(not b.is_enabled() for b in browser.find_elements(By.CSS_SELECTOR, "#nodes button"))
    # A backlog before anything claims it: the page counts it as the engine does.
    seed(es, [new_task(f"shown-{i:03d}", "console:shown", now=now()) for i in range(240)])
    page_refreshed(browser)
    page_refreshed(browser)
    row = browser.find_element(By.CSS_SELECTOR, '#backlog tr[data-type="console:shown"]')
    assert row.find_element(By.CSS_SELECTOR, "td.due").text == "240"
    dispatcher.worker()
    dispatcher.beat()
    # Under load: every node within its capacity on the page, as in the simulator.
    wait_for(lambda: sim.stats()["totals"]["runs_started"] >= 60, 60, "runs under way")
    page_refreshed(browser)
    for owner in owners:
        used, capacity = in_flight(browser, owner)
        assert 0 <= used <= capacity == 20, (owner, used, capacity)
    screenshot(browser, tmp_path, "console.png")
    wait_for(lambda: task_count(es) == 0, 120, "every task run")
    # Done: each node's runs on the page are the simulator's own count, nothing in flight, the drift drawn.
    stats = sim.stats()
    assert stats["totals"]["runs_started"] == 240

    def runs_match() -> bool:
        page_refreshed(browser)
        rows = {o: node_row(browser, o) for o in owners}
        return all(
            int(rows[o].find_element(By.CSS_SELECTOR, "td.rpm").get_attribute("data-runs") or -1)
            == stats["nodes"][o]["runs_started"]
            and in_flight(browser, o)[0] == 0
            for o in owners
        )

    wait_for(runs_match, 30, "the page's per-node runs equal to the simulator's, nothing in flight")
    assert browser.find_element(By.ID, "backlog-summary").get_attribute("data-due") == "0"
    latest = browser.find_element(By.ID, "drift-latest").text
    assert "p50" in latest and "start(s)" in latest, latest
    assert browser.find_elements(By.CSS_SELECTOR, "#drift-chart polyline.p50")
    assert "of 3 nodes' capacity in use; 0 overdue" in browser.find_element(By.ID, "headline").text
    checks = browser.find_elements(By.CSS_SELECTOR, '#dependencies li[data-check="redis"]')
    assert checks and "ok" in checks[0].text
    # A node out of rotation (it answers every push 503: three failed jobs in a row): the page says so.
    sim.set_mode(2, "5xx")
    seed(es, [new_task(f"refused-{i:02d}", "console:shown", now=now()) for i in range(90)])

    def out_of_rotation() -> bool:
        page_refreshed(browser)
        rotation = str(node_row(browser, owners[2]).find_element(By.CSS_SELECTOR, "td.rotation").text)
        return rotation.startswith(("out", "probing"))

    try:
        wait_for(out_of_rotation, 60, "node 2 shown out of rotation")
    except AssertionError as e:
        row = node_row(browser, owners[2]).text
        store.refresh()
        counts = {st: task_count(es, status=st) for st in ("idle", "claiming", "running", "failed")}
        logs = "\n".join(line for line in dispatcher.logs().splitlines() if "claim cycle" in line or "WARN" in line)
        raise AssertionError(f"page row {row!r}; tasks {counts}; {sim.stats()['totals']}; {logs[-4000:]}") from e
    screenshot(browser, tmp_path, "console-node-out.png")
    assert "out of rotation" in browser.find_element(By.ID, "headline").text
    sim.set_mode(2, "ok")
    wait_for(lambda: task_count(es) == 0, 120, "the tasks run on the other nodes and the healed one")
    assert_no_violations(sim.stats(), capacity=20)


def test_pausing_a_type_from_the_page_stops_its_pushes_and_resuming_runs_them(
    store: TaskStore,
    redis_client: redis.Redis,
    simulator: SimulatorFactory,
    dispatcher_factory: DispatcherFactory,
    browser: WebDriver,
) -> None:
    sim = simulator(nodes=2, run_ms="100")
    es = store.client
    dispatcher = dispatcher_factory(sim)
    base = console(dispatcher)
    dispatcher.worker()
    dispatcher.beat()
    log_in(browser, base)
    # Keyboard only: the pause field, a target, Enter.
    field = browser.find_element(By.ID, "pause-target")
    field.send_keys("type:console:beta", Keys.ENTER)
    wait_for(lambda: "paused type:console:beta" in message(browser), 10, "the page's answer")
    seed(es, [new_task(f"beta-{i:02d}", "console:beta", now=now()) for i in range(20)])
    seed(es, [new_task(f"alpha-{i:02d}", "console:alpha", now=now()) for i in range(20)])
    wait_for(lambda: task_count(es, taskType="console:alpha") == 0, 60, "the other type runs")
    time.sleep(3)  # several claim cycles
    store.refresh()
    assert sim.stats()["totals"]["runs_started"] == 20  # the alpha tasks only: the simulator started no beta
    assert task_count(es, taskType="console:beta", status="idle") == 20
    page_refreshed(browser)
    assert browser.find_element(By.CSS_SELECTOR, '#pauses li[data-pause="type:console:beta"]')
    beta = browser.find_element(By.CSS_SELECTOR, '#backlog tr[data-type="console:beta"]')
    assert beta.find_element(By.CSS_SELECTOR, "td.due").text == "20"
    browser.find_element(By.CSS_SELECTOR, '#pauses li[data-pause="type:console:beta"] button').click()
    wait_for(lambda: "resumed type:console:beta" in message(browser), 10, "the page's answer")
    wait_for(lambda: task_count(es, taskType="console:beta") == 0, 60, "every beta task run after the resume")
    assert sim.stats()["totals"]["runs_started"] == 40
    actions = browser.find_element(By.ID, "actions").text
    assert "ops" in actions and "pause type:console:beta" in actions and "resume type:console:beta" in actions
    assert_no_violations(sim.stats(), capacity=20)


def test_draining_a_node_from_the_page_empties_it_and_undraining_brings_it_back(
    store: TaskStore,
    redis_client: redis.Redis,
    simulator: SimulatorFactory,
    dispatcher_factory: DispatcherFactory,
    browser: WebDriver,
) -> None:
    sim = simulator(nodes=3, run_ms="1000")
    es = store.client
    dispatcher = dispatcher_factory(sim)
    base = console(dispatcher)
    dispatcher.worker()
    dispatcher.beat()
    owners = [n["owner_id"] for n in sim.nodes]
    seed(es, [new_task(f"d-{i:03d}", "console:drain", now=now()) for i in range(500)])
    log_in(browser, base)
    wait_for(lambda: sim.stats()["nodes"][owners[0]]["current"] > 0, 60, "node 0 running tasks")
    drain = node_row(browser, owners[0]).find_element(By.CSS_SELECTOR, 'button[data-action="drain"]')
    browser.execute_script("arguments[0].focus()", drain)
    page_refreshed(browser)
    page_refreshed(browser)
    # Rows are updated in place: the button a keyboard user reached keeps its focus across refreshes.
    assert browser.switch_to.active_element == drain
    drain.send_keys(Keys.ENTER)
    wait_for(lambda: "draining" in message(browser), 10, "the page's answer")
    drained_at = sim.stats()["nodes"][owners[0]]["runs_started"]
    wait_for(
        lambda: node_row(browser, owners[0]).find_element(By.CSS_SELECTOR, "td.paused").text == "drained: empty",
        60,
        "the page shows node 0 drained and empty",
    )
    stats = sim.stats()
    assert stats["nodes"][owners[0]]["current"] == 0
    # A push already on its way when the drain landed may still start; nothing after that.
    assert stats["nodes"][owners[0]]["runs_started"] <= drained_at + 10
    started = stats["nodes"][owners[0]]["runs_started"]
    time.sleep(3)
    assert sim.stats()["nodes"][owners[0]]["runs_started"] == started  # stays empty while the backlog runs elsewhere
    assert task_count(es) > 0
    node_row(browser, owners[0]).find_element(By.CSS_SELECTOR, 'button[data-action="undrain"]').click()
    wait_for(lambda: "undrained" in message(browser), 10, "the page's answer")
    wait_for(lambda: sim.stats()["nodes"][owners[0]]["runs_started"] > started, 30, "node 0 gets work again")
    wait_for(lambda: task_count(es) == 0, 120, "every task run")
    assert_no_violations(sim.stats(), capacity=20)


def test_no_control_works_without_logging_in_with_a_forged_request_or_in_read_only_mode(
    store: TaskStore,
    redis_client: redis.Redis,
    simulator: SimulatorFactory,
    dispatcher_factory: DispatcherFactory,
    browser: WebDriver,
) -> None:
    sim = simulator(nodes=1, run_ms="100")
    dispatcher = dispatcher_factory(sim)
    base = console(dispatcher)
    pause_all = {"action": "pause", "target": "all"}
    with requests.Session() as anonymous:
        anonymous.get(base + "/console")  # the page sets the CSRF cookie
        token = anonymous.cookies["_xsrf"]
        answer = anonymous.post(base + "/console/api/action", json=pause_all, headers={"X-XSRFToken": token})
        assert answer.status_code == 401, answer.text
        guess = {"username": "ops", "password": "guess", "_xsrf": token}
        wrong = anonymous.post(base + "/console/login", data=guess, allow_redirects=False)
        assert wrong.status_code == 403
    with requests.Session() as operator:
        login, token = console_login(operator, base, "ops", PASSWORD)
        assert login.status_code == 302, login.text
        assert operator.post(base + "/console/api/action", json=pause_all).status_code == 403  # no CSRF token
        forged = operator.post(base + "/console/api/action", json=pause_all, headers={"X-XSRFToken": "forged"})
        assert forged.status_code == 403
        # A login form posted from another site carries no token either.
        assert requests.post(base + "/console/login", data={"username": "ops", "password": PASSWORD}).status_code == 403
        assert operator.get(base + "/console/api/state").json()["pauses"]["paused"] == []  # none of those paused
        good = operator.post(base + "/console/api/action", json=pause_all, headers={"X-XSRFToken": token})
        assert good.status_code == 200 and good.json()["ok"], good.text
        resumed = operator.post(
            base + "/console/api/action", json={"action": "resume", "target": "all"}, headers={"X-XSRFToken": token}
        )
        assert resumed.status_code == 200 and "resumed all" in resumed.json()["message"]
    # Read-only: no password configured. The page says why; every control refuses.
    read_only = console(dispatcher, password=None)
    browser.get(read_only + "/console")
    assert "console.password" in browser.find_element(By.ID, "read-only-why").text
    with requests.Session() as anyone:
        login, token = console_login(anyone, read_only, "admin", "")
        assert login.status_code == 403
        refused = anyone.post(read_only + "/console/api/action", json=pause_all, headers={"X-XSRFToken": token})
        assert refused.status_code == 403 and "read-only" in refused.json()["message"]


def test_the_console_costs_the_engine_one_search_per_refresh_shared_by_every_page_and_nothing_when_closed(
    store: TaskStore,
    redis_client: redis.Redis,
    simulator: SimulatorFactory,
    dispatcher_factory: DispatcherFactory,
) -> None:
    # No worker and no beat: every request the engine gets comes from elastask serve (counted by the proxy).
    sim = simulator(nodes=2, run_ms="100")
    dispatcher = dispatcher_factory(sim)
    seed(store.client, [new_task(f"cost-{i:02d}", "console:cost", now=now()) for i in range(20)])
    base = console(dispatcher)
    engine = dispatcher.env["ELASTASK_ELASTICSEARCH_HOST"]

    def engine_requests() -> dict[str, int]:
        return dict(requests.get(engine + "/_proxy/stats", timeout=10).json()["requests"])

    def sent_since(before: dict[str, int]) -> dict[str, int]:
        after = engine_requests()
        return {kind: n - before.get(kind, 0) for kind, n in after.items() if n != before.get(kind, 0)}

    before = engine_requests()
    time.sleep(4)
    assert sent_since(before) == {}, "elastask serve reads nothing while no page is open"
    requests.get(base + "/console/api/state", timeout=30)  # the first refresh also starts the dependency checks
    time.sleep(5)  # they run in the background, once per 30 s
    before = engine_requests()
    refreshes = 5
    for _ in range(refreshes):
        assert requests.get(base + "/console/api/state", timeout=30).status_code == 200
        time.sleep(1.1)
    per_refresh = sent_since(before)
    assert per_refresh == {"search": refreshes}, per_refresh
    # Pages refreshing within the same second share one snapshot: one search for all of them.
    time.sleep(1.1)
    before = engine_requests()
    for _ in range(4):
        requests.get(base + "/console/api/state", timeout=30)
    assert sent_since(before) == {"search": 1}
    # /health, for comparison: a count and a search per request.
    time.sleep(1.1)
    before = engine_requests()
    requests.get(base + "/health", timeout=30)
    health = sent_since(before)
    assert sum(health.values()) >= sum(per_refresh.values()) / refreshes, health
    print(f"engine requests per console refresh: {per_refresh} over {refreshes}; per /health: {health}")
