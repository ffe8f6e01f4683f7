"""The explorer (/explore) in a real browser: Playwright driving Debian's Chromium against `k2 api`
(gunicorn) over the sample landed by the real pipeline. What the page draws and lists is
checked against the API's own answers."""

from __future__ import annotations

import csv
import http.client
import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pyarrow.parquet as pq
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, sync_playwright

from k2_etl.config import Settings
from tests.helpers import REPO
from tests.integration.api_helpers import Api
from tests.integration.query_helpers import SAMPLE, a_symbol

CHROMIUM = "/usr/bin/chromium"  # Debian's (.ci/run installs it): Playwright's own download cannot run here
DAY = "2026-11-02"
SYDNEY = ZoneInfo("Australia/Sydney")
ARTIFACTS = Path(os.environ.get("K2_TEST_ARTIFACTS", REPO / ".test-artifacts"))
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def api(landed: Settings) -> Iterator[Api]:
    server = Api(landed)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield browser
    browser.close()


class Watched:
    """A page, and every console error, uncaught exception and failed request it had."""

    def __init__(self, browser: Browser, width: int = 1280, height: int = 800) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page: Page = self.context.new_page()
        self.problems: list[str] = []
        self.asked: list[str] = []  # every URL the page requested
        self.page.on("request", lambda r: self.asked.append(r.url))
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"exception: {error}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"{r.status} {r.url}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text}")

    def _failed(self, request: Request) -> None:
        self.problems.append(f"failed: {request.url} {request.failure}")

    def open(self, url: str) -> Page:
        self.page.goto(url)
        self.ready()
        return self.page

    def ready(self) -> None:
        """The view is drawn: the chart (or its error) and the tables."""
        # (Selectors, not wait_for_function: its script is an eval, which the page's CSP refuses.)
        self.page.wait_for_selector(
            "body[data-ready=true], #chart[data-state=error]", state="attached", timeout=WAIT_MS
        )

    def back(self) -> None:
        self.page.evaluate("() => { document.body.dataset.ready = 'false'; }")
        self.page.go_back()  # the previous view, from the URL
        self.ready()

    def submit(self) -> None:
        self.page.evaluate("() => { document.body.dataset.ready = 'false'; }")
        self.page.click("button[type=submit]")
        self.ready()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    page = Watched(browser)
    yield page
    page.close()


def sydney_day(day: str) -> tuple[str, str]:
    """The UTC bounds of a Sydney trading day."""
    start = datetime.combine(date.fromisoformat(day), time(), SYDNEY)
    end = datetime.combine(date.fromisoformat(day) + timedelta(days=1), time(), SYDNEY)
    return start.astimezone(UTC).isoformat(), end.astimezone(UTC).isoformat()


def first_symbol_of(csv: Path) -> str:
    return csv.read_text().splitlines()[1].split(",")[1]


def every(api: Api, path: str, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        body = api.get(path, **params, **({"cursor": cursor} if cursor else {})).json()
        rows += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


def candles(page: Page) -> int:
    return int(page.get_attribute("#chart", "data-candles") or -1)


def test_the_page_draws_as_many_candles_as_the_api_has_bars_with_no_error(
    api: Api, landed: Settings, watched: Watched
) -> None:
    symbol = a_symbol(landed)
    page = watched.open(f"{api.url}/explore?symbol={symbol}&day={DAY}&interval=5m")
    start, end = sydney_day(DAY)  # the sample's exchanges are in Sydney: the page's day is Sydney's
    bars = every(api, "/v1/bars", symbol=symbol, start=start, end=end, interval="5m", tz="exchange")
    assert candles(page) == len(bars) > 10
    assert watched.problems == [], "\n".join(watched.problems)
    state = page.evaluate("Object.fromEntries(new URLSearchParams(location.search))")
    assert {k: state[k] for k in ("symbol", "day", "interval")} == {"symbol": symbol, "day": DAY, "interval": "5m"}
    snapshot = api.get("/v1/bars", symbol=symbol, start=start, end=end, interval="5m").json()["snapshot_id"]
    assert page.get_attribute("#reading", "data-snapshot") == str(snapshot)
    assert f"snapshot {snapshot}" in page.inner_text("#reading")
    health = page.inner_text("#health")
    assert "API degraded" in health or "API healthy" in health, health
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=True)


def test_the_spread_pane_is_ask_minus_bid_at_each_bars_last_quote(api: Api, landed: Settings, watched: Watched) -> None:
    symbol = a_symbol(landed)
    page = watched.open(f"{api.url}/explore?symbol={symbol}&day={DAY}&interval=15m")
    start, end = sydney_day(DAY)
    bars = [datetime.fromisoformat(b["bar_start"]).timestamp() for b in
            every(api, "/v1/bars", symbol=symbol, start=start, end=end, interval="15m", tz="exchange")]  # fmt: skip
    bid: dict[float, Decimal] = {}
    ask: dict[float, Decimal] = {}
    for quote in every(api, "/v1/quotes", symbol=symbol, start=start, end=end, fields="event_time,bid_price,ask_price"):
        at = datetime.fromisoformat(quote["event_time"]).timestamp()
        held = [bar for bar in bars if bar <= at]  # the last bar starting at or before the quote
        if not held:
            continue
        if quote["bid_price"] is not None:
            bid[held[-1]] = Decimal(quote["bid_price"])
        if quote["ask_price"] is not None:
            ask[held[-1]] = Decimal(quote["ask_price"])
    expected = {bar: float(ask[bar] - bid[bar]) for bar in bid if bar in ask}
    drawn = {p["time"]: p["value"] for p in page.evaluate("chart.spread.data()")}
    assert len(expected) > 10
    assert drawn.keys() == expected.keys()
    assert all(abs(drawn[bar] - expected[bar]) < 1e-6 for bar in expected), (drawn, expected)
    assert page.get_attribute("#chart", "data-spreads") == str(len(expected))
    assert watched.problems == [], "\n".join(watched.problems)


def test_changing_symbol_interval_and_snapshot_redraws_what_the_api_answers(
    api: Api, landed: Settings, watched: Watched
) -> None:
    symbol = a_symbol(landed)
    page = watched.open(f"{api.url}/explore?symbol={symbol}&day={DAY}&interval=5m")
    start, end = sydney_day(DAY)
    other = first_symbol_of(SAMPLE / DAY / "trades_CXA.csv")  # another symbol of the sample's day
    page.fill("#symbol", other)
    page.select_option("#interval", "15m")
    watched.submit()
    assert candles(page) == len(every(api, "/v1/bars", symbol=other, start=start, end=end, interval="15m",
                                      tz="exchange")) > 0  # fmt: skip
    assert f"symbol={other}" in page.url and "interval=15m" in page.url
    snapshots = api.get("/v1/tables/trades/snapshots", limit=100).json()["data"]
    oldest = snapshots[-1]["snapshot_id"]
    page.select_option("#snapshot", str(oldest))
    watched.submit()
    then = every(api, "/v1/bars", symbol=other, start=start, end=end, interval="15m", tz="exchange", snapshot_id=oldest)
    assert candles(page) == len(then)
    assert page.get_attribute("#reading", "data-snapshot") == str(oldest) and f"snapshot={oldest}" in page.url
    watched.back()
    assert page.input_value("#snapshot") == "" and candles(page) > 0
    assert watched.problems == [], "\n".join(watched.problems)


def test_the_trades_table_pages_through_the_day_without_repeating_or_skipping_a_row(
    api: Api, landed: Settings, watched: Watched
) -> None:
    symbol = a_symbol(landed)
    page = watched.open(f"{api.url}/explore?symbol={symbol}&day={DAY}")
    start, end = sydney_day(DAY)
    expected = [t["event_id"] for t in every(api, "/v1/trades/with-quotes", symbol=symbol, start=start, end=end)]
    seen: list[str] = []
    pages = 0
    while True:
        page.wait_for_selector("#panel-trades[data-state=shown]")
        seen += page.eval_on_selector_all("#panel-trades tbody tr", "rows => rows.map(r => r.dataset.id)")
        pages += 1
        next_page = page.locator("#panel-trades button[data-role=next]")
        if next_page.is_disabled():
            break
        page.evaluate("document.getElementById('panel-trades').dataset.state = 'loading'")
        next_page.click()
    assert seen == expected and pages == -(-len(expected) // 100) > 1
    assert watched.problems == [], "\n".join(watched.problems)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [("symbol=NOPE&day=2026-11-02", "symbol"), ("start=2026-11-03T10:00:00&end=2026-11-02T10:00:00", "start")],
)
def test_a_bad_symbol_or_range_shows_the_api_s_message_not_a_blank_chart(
    api: Api, landed: Settings, watched: Watched, query: str, parameter: str
) -> None:
    symbol_part = "" if query.startswith("symbol") else f"symbol={a_symbol(landed)}&"
    page = watched.open(f"{api.url}/explore?{symbol_part}{query}&tz=UTC")
    assert page.get_attribute("#chart", "data-state") == "error" and candles(page) == 0
    shown = page.inner_text("#error")
    params = dict(p.split("=") for p in query.split("&"))
    if "day" in params:
        params |= {"start": f"{params.pop('day')}T00:00:00Z", "end": "2026-11-03T00:00:00Z"}
    else:
        params = {k: f"{v}Z" for k, v in params.items()}
    answer = api.get("/v1/bars", symbol=params.pop("symbol", a_symbol(landed)), interval="5m", tz="UTC", **params)
    assert answer.status_code in (400, 404)
    assert answer.json()["error"]["message"] in shown and parameter in shown
    assert page.is_visible("#error")


@pytest.mark.parametrize(
    ("query", "said"),
    [("symbol=A,B&day=2026-11-02", "one symbol at a time"),
     ("symbol=A&start=2026-11-02T10:00:00", "a range needs both its start and its end"),
     ("symbol=A&day=2026-11-02&tz=Mars/Olympus", "tz: Mars/Olympus is not a time zone")],
)  # fmt: skip
def test_what_the_page_can_tell_is_wrong_it_says_without_asking_for_bars(
    api: Api, watched: Watched, query: str, said: str
) -> None:
    page = watched.open(f"{api.url}/explore?{query}")
    assert page.get_attribute("#chart", "data-state") == "error" and said in page.inner_text("#error")
    assert not [url for url in watched.asked if "/v1/bars" in url]


def test_a_zone_from_the_url_cuts_the_bars_and_labels_the_times(api: Api, landed: Settings, watched: Watched) -> None:
    symbol = a_symbol(landed)
    page = watched.open(f"{api.url}/explore?symbol={symbol}&day={DAY}&interval=1h&tz=Asia/Tokyo")
    tokyo = ZoneInfo("Asia/Tokyo")
    start = datetime.combine(date.fromisoformat(DAY), time(), tokyo)
    bars = every(api, "/v1/bars", symbol=symbol, start=start.isoformat(), end=(start + timedelta(days=1)).isoformat(),
                 interval="1h", tz="Asia/Tokyo")  # fmt: skip
    assert candles(page) == len(bars) > 0
    assert page.input_value("#tz") == "Asia/Tokyo" and "in Asia/Tokyo" in page.inner_text("#reading")
    assert watched.problems == [], "\n".join(watched.problems)


def test_downloads_join_every_page_of_a_csv_and_say_when_a_parquet_file_is_one_page(
    api: Api, landed: Settings, watched: Watched
) -> None:
    symbol = a_symbol(landed)
    page = watched.open(f"{api.url}/explore?symbol={symbol}&day={DAY}")
    start, end = sydney_day(DAY)
    expected = [t["event_id"] for t in every(api, "/v1/trades", symbol=symbol, start=start, end=end)]
    assert len(expected) > 14  # three pages of 7 at least
    # The page's own download function, with pages of 7 rows instead of 50,000.
    save = """([path, query, name]) => {
        const link = document.createElement("a");
        link.download = name;
        link.textContent = name;
        return download(link, path, query, downloading);
    }"""
    query = {"symbol": symbol, "start": start, "end": end, "limit": 7}
    with page.expect_download() as csv_file:
        page.evaluate(save, ["/v1/trades", {**query, "format": "csv"}, "trades.csv"])
    rows = list(csv.DictReader(Path(csv_file.value.path()).read_text().splitlines()))
    assert [row["event_id"] for row in rows] == expected
    assert page.inner_text("#downloads-note") == ""
    with page.expect_download() as parquet_file:
        page.evaluate(save, ["/v1/trades", {**query, "format": "parquet"}, "trades.parquet"])
    assert pq.read_table(parquet_file.value.path()).column("event_id").to_pylist() == expected[:7]
    assert page.inner_text("#downloads-note").startswith("trades.parquet: the first 7 rows")
    links = page.eval_on_selector_all("#downloads a", "links => links.map(a => a.href)")
    assert len(links) == 9 and all(f"symbol={symbol}" in link for link in links)
    assert watched.problems == [], "\n".join(watched.problems)


def test_narrow_and_wide_windows_keep_every_control_labelled_and_inside_the_window(
    api: Api, landed: Settings, browser: Browser
) -> None:
    for width, height in ((1280, 800), (390, 844)):
        watched = Watched(browser, width, height)
        try:
            page = watched.open(f"{api.url}/explore?symbol={a_symbol(landed)}&day={DAY}")
            unlabelled = page.eval_on_selector_all(
                "input, select", "fields => fields.filter(f => f.type !== 'hidden' && !f.labels.length).map(f => f.id)"
            )
            assert unlabelled == []
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{width}px: the page is {overflow}px wider than the window"
            assert watched.problems == [], "\n".join(watched.problems)
        finally:
            watched.close()


def test_pages_are_linked_cached_and_confined(api: Api) -> None:
    index = httpx.get(f"{api.url}/", timeout=30)
    assert index.status_code == 200 and 'href="/explore"' in index.text
    assert "(/explore)" in httpx.get(f"{api.url}/openapi.json", timeout=30).json()["info"]["description"]
    page = httpx.get(f"{api.url}/explore", headers={"Accept-Encoding": "gzip"}, timeout=30)
    assert page.status_code == 200 and page.headers["Content-Encoding"] == "gzip"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
    assert page.headers["Cache-Control"] == "no-cache" and page.headers["ETag"]
    again = httpx.get(f"{api.url}/explore", headers={"If-None-Match": page.headers["ETag"]}, timeout=30)
    assert again.status_code == 304
    vendored = next(p for p in page.text.split('"') if p.startswith("/explore/vendor/"))
    library = httpx.get(f"{api.url}{vendored}", timeout=30)
    assert library.status_code == 200 and "immutable" in library.headers["Cache-Control"]
    assert library.headers["Content-Type"].startswith("text/javascript")
    plain = httpx.get(f"{api.url}/explore", headers={"Accept-Encoding": "identity"}, timeout=30)
    assert "Content-Encoding" not in plain.headers and plain.headers["ETag"] != page.headers["ETag"]
    for outside in ("/explore/vendor/update.py", "/explore/nope.js"):
        assert httpx.get(f"{api.url}{outside}", timeout=30).status_code == 404, outside
    # Sent as written (httpx would remove the dots): a file has one name, inside the page's folder.
    host, port = api.url.removeprefix("http://").split(":")
    for dotted in ("/explore/vendor/../explore.js", "/explore/../explorer/explore.js", "/explore/../../README.md",
                   "/explore/a%00b.js"):  # fmt: skip
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", dotted)
        assert connection.getresponse().status == 404, dotted
        connection.close()
