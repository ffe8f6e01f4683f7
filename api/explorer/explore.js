// K2 explorer: a client of K2's /v1 API, drawn with TradingView's Lightweight Charts (vendored).
// No build step, no framework: the page's state is its URL (symbol, range, interval, zone,
// snapshot), so a view can be shared and reloaded; every answer the API refuses is shown as the
// API's own message. Tested in a real browser: tests/integration/test_explorer.py.
"use strict";

const $ = (id) => document.getElementById(id);
const BARS_PAGE = 10000; // bars per request (the API's default)
const MAX_BAR_PAGES = 20; // 200,000 bars: a day of 1s bars fits
const QUOTES_FOR_CHART = 50000; // bid/ask: the first page of quotes (one request)
const ROWS_PER_PAGE = 100; // the tables
const PARAMS = ["symbol", "exchange", "day", "start", "end", "tz", "interval", "snapshot", "as_of"];

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.parameter = error.parameter || null;
  }
}

// Iceberg snapshot ids are 64-bit: JSON.parse would round them to a double (4205318458186101771
// becomes ...2000) and time travel would ask for a snapshot that does not exist. Ids are kept as
// the text the API wrote. (A quote cannot end a key inside a JSON string: it would be escaped.)
function parseJson(text) {
  return JSON.parse(text.replace(/"(\w*_id)":(-?\d{16,})/g, '"$1":"$2"'));
}

const api = {
  key() {
    return sessionStorage.getItem("k2-api-key") || "";
  },
  url(path, params) {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null && value !== "") query.append(name, String(value));
    }
    const text = query.toString();
    return text ? `${path}?${text}` : path;
  },
  async get(path, params) {
    const headers = { Accept: "application/json" };
    if (api.key()) headers["X-API-Key"] = api.key();
    const response = await fetch(api.url(path, params), { headers });
    let body = null;
    try {
      body = parseJson(await response.text());
    } catch (_) {
      body = null;
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  },
  // Every page of a paged answer (up to maxPages); `more` says pages were left.
  async all(path, params, maxPages) {
    let rows = [];
    let cursor = null;
    let first = null;
    for (let page = 0; page < maxPages; page += 1) {
      const body = await api.get(path, { ...params, cursor });
      first = first || body;
      rows = rows.concat(body.data);
      cursor = body.next_cursor;
      if (!cursor) return { rows, snapshot_id: first.snapshot_id, more: false };
    }
    return { rows, snapshot_id: first.snapshot_id, more: true };
  },
};

// --- Time zones: the page computes a trading day's bounds in the exchange's zone --------------

const partsFormat = new Map();
function zoneParts(zone, ms) {
  if (!partsFormat.has(zone)) {
    partsFormat.set(zone, new Intl.DateTimeFormat("en-GB", {
      timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    }));
  }
  const parts = {};
  for (const part of partsFormat.get(zone).formatToParts(new Date(ms))) parts[part.type] = part.value;
  return parts;
}

function offsetMs(zone, ms) {
  const p = zoneParts(zone, ms);
  const wall = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second);
  return wall - Math.floor(ms / 1000) * 1000;
}

// A wall-clock time in `zone` ("2026-11-02T10:00:00") as epoch milliseconds.
function zonedToEpoch(text, zone) {
  const [date, time = "00:00:00"] = text.split("T");
  const [y, m, d] = date.split("-").map(Number);
  const [hh, mm, ss = 0] = time.split(":").map(Number);
  const wall = Date.UTC(y, m - 1, d, hh, mm, ss);
  let epoch = wall - offsetMs(zone, wall);
  const again = wall - offsetMs(zone, epoch);
  if (again !== epoch) epoch = again;
  return epoch;
}

function zonedText(ms, zone, withSeconds) {
  const p = zoneParts(zone, ms);
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}${withSeconds ? `:${p.second}` : ""}`;
}

function nextDay(day) {
  const [y, m, d] = day.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d + 1)).toISOString().slice(0, 10);
}

// --- State: the URL ---------------------------------------------------------------------------

function readState() {
  const query = new URLSearchParams(location.search);
  const state = {};
  for (const name of PARAMS) state[name] = query.get(name) || "";
  state.tz = state.tz || "exchange";
  state.interval = state.interval || "5m";
  return state;
}

function writeForm(state) {
  for (const name of ["snapshot", "tz", "interval"]) { // a value not listed (yet): the API will say
    const select = $(name);
    if (state[name] && ![...select.options].some((o) => o.value === state[name])) {
      select.add(new Option(state[name], state[name]));
    }
  }
  for (const name of PARAMS) {
    const field = $(name);
    if (field && state[name] !== undefined) field.value = state[name];
  }
}

function formState() {
  const state = {};
  for (const name of PARAMS) state[name] = ($(name) && $(name).value.trim()) || "";
  return state;
}

// --- Reference data: symbols, exchanges' zones, snapshots, health ------------------------------

const catalog = { symbols: [], zones: {}, snapshotTimes: {} };

// Asked as soon as this script runs: explore.html runs it before the charting library, whose
// parsing then overlaps these requests (the page's first view waits on them).
const early = {};
function askCatalog() {
  early.catalog = Promise.all([api.get("/v1/symbols"), api.get("/v1/exchanges")]);
  early.catalog.catch(() => {}); // awaited, and handled, later
}

// Asked once the first bars are drawn (or refused): on a small server they would only compete with them.
function askTheRest() {
  if (!early.snapshots) {
    early.snapshots = api.get("/v1/tables/trades/snapshots", { limit: 100 });
    early.health = fetch("/health", { headers: { Accept: "application/json" } });
    early.snapshots.catch(() => {});
    early.health.catch(() => {});
  }
}
askCatalog();

// The bars of a day, asked by its date: the API finds the day in the bars' zone (the exchange's),
// so the first view's bars (a shared link's, `k2 demo`'s) are asked at once, not after the catalog.
function barsQuery(state, range, trades, tz = state.tz) {
  const common = { symbol: state.symbol, exchange: state.exchange, interval: state.interval, tz };
  const when = state.day && !state.start && !state.end ? { day: state.day } : { start: range.start, end: range.end };
  return { ...common, ...when, ...trades, limit: BARS_PAGE };
}
const opening = readState();
const plain = opening.symbol && !opening.symbol.includes(",") && ["exchange", "UTC"].includes(opening.tz);
if (plain && opening.day && !opening.start && !opening.end && !opening.as_of) {
  early.barsUrl = api.url("/v1/bars", barsQuery(opening, null, opening.snapshot ? { snapshot_id: opening.snapshot } : {}));
  early.bars = api.all("/v1/bars", barsQuery(opening, null, opening.snapshot ? { snapshot_id: opening.snapshot } : {}),
    MAX_BAR_PAGES);
  early.bars.catch(() => {});
}

async function loadCatalog() {
  const [symbols, exchanges] = await early.catalog;
  catalog.symbols = symbols.data;
  for (const row of exchanges.data) if (row.time_zone) catalog.zones[row.exchange] = row.time_zone;
  const list = $("symbols");
  list.replaceChildren(...catalog.symbols.map((s) => {
    const option = document.createElement("option");
    option.value = s.symbol;
    option.label = [s.name, (s.exchanges || []).join(", ")].filter(Boolean).join(" · ");
    return option;
  }));
}

async function loadSnapshots() {
  const select = $("snapshot");
  const chosen = select.value;
  const body = await early.snapshots;
  const options = [new Option("current", "")];
  for (const s of body.data) {
    catalog.snapshotTimes[s.snapshot_id] = s.committed_at;
    const when = s.committed_at.replace("T", " ").slice(0, 19);
    options.push(new Option(`${s.snapshot_id} · ${when} UTC · ${s.operation}`, String(s.snapshot_id)));
  }
  select.replaceChildren(...options);
  select.value = chosen;
  return body.data;
}

async function loadHealth() {
  const strip = $("health");
  try {
    const response = await early.health;
    const body = await response.json();
    const failing = Object.entries(body.checks || {})
      .filter(([, check]) => check.status !== "up")
      .map(([name, check]) => `${name} ${check.status} (${check.detail})`);
    strip.dataset.status = body.status;
    strip.textContent = `API ${body.status}${failing.length ? `: ${failing.join("; ")}` : ""}`;
  } catch (error) {
    strip.dataset.status = "unhealthy";
    strip.textContent = `API unreachable: ${error.message}`;
  }
}

function showLanded(snapshots) {
  const newest = snapshots[0];
  if (!newest) return;
  const strip = $("health");
  const when = newest.committed_at.replace("T", " ").slice(0, 19);
  strip.textContent += ` · trades last landed ${when} UTC (snapshot ${newest.snapshot_id})`;
}

// --- The view: what the state asks for ----------------------------------------------------------

function symbolRow(symbol) {
  return catalog.symbols.find((s) => s.symbol === symbol) || null;
}

// The exchange's zone of the view: the chosen exchange's, or the one every exchange of the symbol
// shares; null when it is unknown or they differ (the API refuses tz=exchange then).
function exchangeZone(state) {
  const exchanges = state.exchange ? [state.exchange] : ((symbolRow(state.symbol) || {}).exchanges || []);
  const zones = new Set(exchanges.map((e) => catalog.zones[e] || null));
  return zones.size === 1 ? [...zones][0] : null;
}

// The zone bars are cut and times shown in: the URL's tz (UTC or a zone's name), or the exchange's
// zone, else UTC; and the tz the bars are asked in (UTC where the exchange's zone is not one).
function viewZone(state) {
  return state.tz === "exchange" ? exchangeZone(state) || "UTC" : state.tz;
}

function barsZone(state) {
  return state.tz === "exchange" && !exchangeZone(state) ? "UTC" : state.tz;
}

// What the page can tell before asking the API (everything else, the API's own message says).
function stateProblem(state) {
  if (state.symbol.includes(",")) return `one symbol at a time (symbol=${state.symbol})`;
  if (Boolean(state.start) !== Boolean(state.end)) return "a range needs both its start and its end (or give a trading day)";
  try {
    zoneParts(viewZone(state), 0);
  } catch (_) {
    return `tz: ${state.tz} is not a time zone this browser knows`;
  }
  return null;
}

function viewRange(state, zone) {
  if (state.start && state.end) {
    return { start: new Date(zonedToEpoch(state.start, zone)), end: new Date(zonedToEpoch(state.end, zone)) };
  }
  let day = state.day;
  if (!day) {
    const row = symbolRow(state.symbol);
    const last = row && row.last_trade ? Date.parse(row.last_trade) : Date.now();
    day = zonedText(last, zone).slice(0, 10);
    state.day = day;
  }
  return { start: new Date(zonedToEpoch(day, zone)), end: new Date(zonedToEpoch(nextDay(day), zone)) };
}

// Time travel for the trades table (bars, trades, trades with quotes: a trades snapshot) and for
// the quotes table, read as of that snapshot's commit (as /v1/trades/with-quotes reads them).
function travel(state) {
  if (state.snapshot) {
    const committed = catalog.snapshotTimes[state.snapshot];
    return { trades: { snapshot_id: state.snapshot }, quotes: committed ? { as_of: committed } : {} };
  }
  if (state.as_of) {
    const asOf = { as_of: new Date(zonedToEpoch(state.as_of, viewZone(state))).toISOString() };
    return { trades: asOf, quotes: asOf };
  }
  return { trades: {}, quotes: {} };
}

// --- The chart ----------------------------------------------------------------------------------

const chart = { zone: "UTC", seconds: false };

function makeChart() {
  const LWC = window.LightweightCharts;
  const element = $("chart");
  const time = (t) => zonedText(t * 1000, chart.zone, chart.seconds);
  chart.api = LWC.createChart(element, {
    autoSize: true,
    // The licence's link to TradingView is the page's own (under the chart, and the footer): the
    // library's logo injects a <style> element, which the page's Content-Security-Policy refuses.
    layout: { attributionLogo: false, background: { color: "#ffffff" }, textColor: "#1d2330" },
    grid: { vertLines: { color: "#eef0f4" }, horzLines: { color: "#eef0f4" } },
    localization: { timeFormatter: time },
    timeScale: {
      timeVisible: true,
      // The library marks a new day where UTC's begins; the label says the local date and time there.
      tickMarkFormatter: (t, type) => {
        const text = time(t);
        if (type <= 1) return text.slice(0, 7); // a year or a month
        return type === 2 ? `${text.slice(5, 10)} ${text.slice(11, 16)}` : text.slice(11);
      },
    },
  });
  chart.candles = chart.api.addSeries(LWC.CandlestickSeries, {
    upColor: "#1a9b6c", downColor: "#d2453d", wickUpColor: "#1a9b6c", wickDownColor: "#d2453d", borderVisible: false,
  });
  chart.volume = chart.api.addSeries(LWC.HistogramSeries, {
    priceScaleId: "volume", priceFormat: { type: "volume" }, color: "#9aa5b8", lastValueVisible: false,
    priceLineVisible: false,
  });
  chart.api.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  chart.vwap = chart.api.addSeries(LWC.LineSeries, {
    color: "#7b4fd6", lineWidth: 2, lastValueVisible: false, priceLineVisible: false, crosshairMarkerVisible: false,
  });
  const quoteLine = (color) => chart.api.addSeries(LWC.LineSeries, {
    color, lineWidth: 1, lineStyle: LWC.LineStyle.Dotted, lastValueVisible: false, priceLineVisible: false,
    crosshairMarkerVisible: false,
  });
  chart.bid = quoteLine("#1f6fd1");
  chart.ask = quoteLine("#e08a00");
  // The spread (ask - bid) in a pane of its own under the candles: its scale is cents, theirs dollars.
  chart.spread = chart.api.addSeries(LWC.LineSeries, {
    color: "#0f766e", lineWidth: 1, lineType: LWC.LineType.WithSteps, priceLineVisible: false,
    crosshairMarkerVisible: false, title: "spread",
  }, 1);
  chart.api.panes()[1].setStretchFactor(0.25);
  chart.markers = LWC.createSeriesMarkers(chart.candles, []);
}

function clearChart(stateName) {
  delete $("chart").dataset.drawnAt;
  for (const series of [chart.candles, chart.volume, chart.vwap, chart.bid, chart.ask, chart.spread]) {
    series.setData([]);
  }
  chart.markers.setMarkers([]);
  $("chart").dataset.candles = "0";
  $("chart").dataset.state = stateName;
}

const seconds = (iso) => Date.parse(iso) / 1000;

function drawBars(bars) {
  chart.candles.setData(bars.map((b) => ({
    time: seconds(b.bar_start), open: +b.open, high: +b.high, low: +b.low, close: +b.close,
  })));
  chart.volume.setData(bars.map((b) => ({
    time: seconds(b.bar_start), value: +b.volume, color: +b.close >= +b.open ? "#a8dcc8" : "#f0b9b5",
  })));
  chart.vwap.setData(bars.filter((b) => b.vwap !== null).map((b) => ({ time: seconds(b.bar_start), value: +b.vwap })));
  chart.api.timeScale().fitContent();
  $("chart").dataset.candles = String(chart.candles.data().length);
  $("chart").dataset.state = "drawn";
  // ms from navigation to the frame that paints the candles (bench/explorer_bench.py)
  requestAnimationFrame(() => { $("chart").dataset.drawnAt = String(Math.round(performance.now())); });
}

// The bar holding `at` (seconds): the last bar starting at or before it.
function barOf(times, at) {
  let lo = 0;
  let hi = times.length - 1;
  if (hi < 0 || at < times[0]) return null;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (times[mid] <= at) lo = mid;
    else hi = mid - 1;
  }
  return times[lo];
}

// Bid, ask and their spread at each bar: the last quote within it (quotes thinned to the candles' times, so
// the time axis keeps one point per bar).
function drawQuotes(times, quotes) {
  const bid = new Map();
  const ask = new Map();
  for (const q of quotes) {
    const bar = barOf(times, seconds(q.event_time));
    if (bar === null) continue;
    if (q.bid_price !== null) bid.set(bar, +q.bid_price);
    if (q.ask_price !== null) ask.set(bar, +q.ask_price);
  }
  chart.bid.setData([...bid].map(([time, value]) => ({ time, value })));
  chart.ask.setData([...ask].map(([time, value]) => ({ time, value })));
  const spread = [];
  for (const [time, value] of bid) {
    if (ask.has(time)) spread.push({ time, value: Math.round((ask.get(time) - value) * 1e6) / 1e6 });
  }
  chart.spread.setData(spread);
  return spread.length;
}

const ISO_TIME = /\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?/;

function drawMarkers(times, events, rejects, range) {
  const markers = [];
  for (const e of events) {
    const bar = e.event_time && barOf(times, seconds(e.event_time));
    if (bar) markers.push({ time: bar, position: "aboveBar", color: "#c2410c", shape: "arrowDown", text: e.kind });
  }
  for (const r of rejects) {
    // Only a time with its offset (or Z) is placed: a time without one is in its format's zone,
    // which a reject does not record (and Date.parse would take the viewer's own zone).
    const found = (r.raw_line || "").match(ISO_TIME);
    const at = found && found[2] ? Date.parse(found[0].replace(" ", "T")) : NaN;
    if (!(at >= range.start.getTime() && at < range.end.getTime())) continue;
    const bar = barOf(times, at / 1000);
    if (bar) markers.push({ time: bar, position: "belowBar", color: "#b91c1c", shape: "circle", text: "reject" });
  }
  markers.sort((a, b) => a.time - b.time);
  chart.markers.setMarkers(markers);
  return markers.length;
}

// --- Tables with cursor paging ------------------------------------------------------------------

const TABLES = {
  trades: {
    path: "/v1/trades/with-quotes",
    columns: ["event_time", "exchange", "sequence_number", "price", "size", "bid_price", "ask_price", "spread", "event_id"],
  },
  quotes: {
    path: "/v1/quotes",
    columns: ["event_time", "exchange", "sequence_number", "bid_price", "bid_size", "ask_price", "ask_size", "event_id"],
  },
  events: {
    path: "/v1/sequence-events",
    columns: ["event_time", "exchange", "kind", "expected_sequence", "received_sequence", "gap_size", "record_type"],
  },
  rejects: {
    path: "/v1/rejects",
    columns: ["rejected_at", "stage", "record_type", "reason", "field", "value", "source", "line_number"],
  },
};

function cell(value, zone, name) {
  if (value === null || value === undefined) return "";
  if (typeof value === "string" && /_(time|at)$/.test(name)) return zonedText(Date.parse(value), zone, true);
  return String(value);
}

class Pager {
  constructor(name, panel) {
    this.name = name;
    this.panel = panel;
    this.spec = TABLES[name];
    this.cursors = [null];
    this.params = null;
    this.shown = 0;
  }

  // A new view: the old one's rows go, and its pages still on the way are dropped when they come.
  clear() {
    this.shown += 1;
    this.panel.replaceChildren();
    this.panel.dataset.state = "idle";
  }

  reset(params, zone) {
    this.params = params;
    this.zone = zone;
    this.cursors = [null];
    return this.show();
  }

  // Only the latest page asked is shown: a new view, or another click, makes earlier answers stale.
  async show() {
    const token = ++this.shown;
    const cursor = this.cursors[this.cursors.length - 1];
    const page = this.cursors.length;
    this.panel.dataset.state = "loading";
    let body;
    try {
      body = await api.get(this.spec.path, { ...this.params, limit: ROWS_PER_PAGE, cursor });
    } catch (error) {
      if (token !== this.shown) return;
      this.panel.replaceChildren(message(error));
      this.panel.dataset.state = "error";
      return;
    }
    if (token !== this.shown) return;
    const table = document.createElement("table");
    const caption = table.createCaption();
    const first = (page - 1) * ROWS_PER_PAGE + 1;
    caption.textContent = body.count
      ? `Rows ${first}–${first + body.count - 1}${body.next_cursor ? "" : " (the last)"}, times in ${this.zone}`
      : "No rows";
    const head = table.createTHead().insertRow();
    for (const name of this.spec.columns) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = name;
      head.appendChild(th);
    }
    const rows = table.createTBody();
    for (const row of body.data) {
      const tr = rows.insertRow();
      if (row.event_id) tr.dataset.id = row.event_id;
      for (const name of this.spec.columns) tr.insertCell().textContent = cell(row[name], this.zone, name);
    }
    const nav = document.createElement("p");
    nav.className = "pager";
    const previous = button("Previous page", page === 1, () => {
      if (token !== this.shown) return; // this table is already being replaced
      this.cursors.pop();
      this.show();
    });
    const next = button("Next page", !body.next_cursor, () => {
      if (token !== this.shown) return;
      this.cursors.push(body.next_cursor);
      this.show();
    });
    previous.dataset.role = "previous";
    next.dataset.role = "next";
    nav.append(previous, " ", next);
    this.panel.replaceChildren(table, nav);
    this.panel.dataset.state = "shown";
    this.panel.dataset.page = String(page);
  }
}

function button(text, disabled, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.disabled = disabled;
  b.addEventListener("click", onClick);
  return b;
}

function message(error) {
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = error instanceof ApiError ? error.message : `Failed: ${error.message}`;
  return p;
}

// --- Downloads ----------------------------------------------------------------------------------

// What is shown, as a file. The API answers 50,000 rows at most a request: CSV pages are joined
// into one file; a Parquet or Arrow answer is a whole file, so beyond one page the page says so.
function downloads(params, quoteParams, barParams) {
  const links = [];
  const what = [
    ["bars", "/v1/bars", { ...barParams, limit: 50000 }],
    ["trades", "/v1/trades", { ...params, limit: 50000 }],
    ["quotes", "/v1/quotes", { ...quoteParams, limit: 50000 }],
  ];
  for (const [name, path, query] of what) {
    for (const [format, extension] of [["csv", "csv"], ["parquet", "parquet"], ["arrow", "arrows"]]) {
      const a = document.createElement("a");
      a.href = api.url(path, { ...query, format });
      a.download = `${params.symbol}-${name}.${extension}`;
      a.textContent = `${name} ${format.toUpperCase()}`;
      a.addEventListener("click", (event) => {
        event.preventDefault();
        const mine = downloading;
        download(a, path, { ...query, format }, mine).catch((error) => mine === downloading && showError(error));
      });
      links.push(a, " ");
    }
  }
  $("downloads").replaceChildren(...links);
  $("downloads-note").textContent = "";
}

let downloading = 0; // the view's number: a download of an earlier view says nothing when it ends

async function download(link, path, query, view) {
  const headers = api.key() ? { "X-API-Key": api.key() } : {};
  const parts = [];
  let cursor = null;
  let rows = 0;
  let type = "application/octet-stream";
  do {
    const response = await fetch(api.url(path, { ...query, cursor }), { headers });
    if (!response.ok) {
      let body = null;
      try {
        body = parseJson(await response.text());
      } catch (_) {
        body = null;
      }
      throw new ApiError(response.status, body);
    }
    type = response.headers.get("Content-Type") || type;
    rows += Number(response.headers.get("X-K2-Count") || 0);
    cursor = response.headers.get("X-K2-Next-Cursor") || null;
    if (query.format === "csv") {
      const text = await response.text();
      parts.push(parts.length ? text.slice(text.indexOf("\n") + 1) : text); // one header line
    } else {
      parts.push(await response.blob());
      break;
    }
  } while (cursor);
  const url = URL.createObjectURL(new Blob(parts, { type }));
  const save = document.createElement("a");
  save.href = url;
  save.download = link.download;
  save.click();
  setTimeout(() => URL.revokeObjectURL(url), 60000); // once the browser has taken it
  if (view !== downloading) return;
  $("downloads-note").textContent = cursor
    ? `${link.textContent}: the first ${rows.toLocaleString("en")} rows (one page of the API; the CSV has them all).`
    : "";
}

// --- Putting it together ------------------------------------------------------------------------

function showError(error) {
  const box = $("error");
  box.textContent = error instanceof ApiError
    ? `The API said (${error.status}${error.parameter ? `, ${error.parameter}` : ""}): ${error.message}`
    : `Failed: ${error.message}`;
  box.hidden = false;
}

const pagers = {};
let rendering = 0;
let afterFirstDraw = null; // what waits for the first bars to be drawn (or refused)

function drawnOnce() {
  const next = afterFirstDraw;
  afterFirstDraw = null;
  if (next) next();
}

async function render(state) {
  const mine = ++rendering;
  document.body.dataset.ready = "false";
  $("error").hidden = true;
  clearChart("loading");
  for (const pager of Object.values(pagers)) pager.clear();
  for (const id of ["reading", "quotes-note", "downloads-note"]) $(id).textContent = "";
  $("downloads").replaceChildren();
  downloading += 1;
  writeForm(state);
  const problem = stateProblem(state);
  if (problem) {
    clearChart("error");
    showError(new Error(problem));
    drawnOnce();
    return;
  }
  const zone = viewZone(state);
  chart.zone = zone;
  chart.seconds = /^\d+s$/.test(state.interval);
  let range;
  try {
    range = viewRange(state, zone);
    if (Number.isNaN(range.start.getTime()) || Number.isNaN(range.end.getTime())) throw new Error("not a time");
  } catch (_) {
    clearChart("error");
    showError(new Error(`the range ${state.start || state.day} .. ${state.end} is not a time`));
    drawnOnce();
    return;
  }
  writeForm(state); // the day, when it was found from the symbol's last trade
  history.replaceState(null, "", api.url(location.pathname, state)); // the day filled in: shareable as shown
  const when = travel(state);
  const view = {
    symbol: state.symbol, exchange: state.exchange, start: range.start.toISOString(), end: range.end.toISOString(),
  };
  const rows = { ...view, ...when.trades };
  const quoteRows = { ...view, ...when.quotes };
  const barParams = barsQuery(state, view, when.trades, barsZone(state));
  let bars;
  performance.mark("k2:bars-asked");
  try {
    const asked = early.bars && early.barsUrl === api.url("/v1/bars", barParams) ? early.bars : null;
    early.bars = null; // the opening view's only
    bars = await (asked || api.all("/v1/bars", barParams, MAX_BAR_PAGES));
  } catch (error) {
    if (mine !== rendering) return;
    clearChart("error");
    showError(error);
    drawnOnce();
    return;
  }
  if (mine !== rendering) return;
  performance.mark("k2:bars-answered");
  drawBars(bars.rows);
  drawnOnce();
  downloads(rows, quoteRows, barParams);
  const fallback = state.tz === "exchange" && zone === "UTC" && !exchangeZone(state)
    ? " (the exchanges' zones differ or are not known)" : "";
  const at = state.snapshot ? "the chosen snapshot" : state.as_of ? `as of ${state.as_of} (${zone})` : "now";
  $("reading").textContent = bars.snapshot_id === null
    ? "No trades table snapshot at that time."
    : `Reading trades snapshot ${bars.snapshot_id} (${at}); ${bars.rows.length ? bars.rows.length : "no"} bars of ` +
      `${state.interval} in ${zone}${fallback}${bars.more ? `; only the first ${bars.rows.length}` : ""}` +
      `${bars.rows.length ? "" : ": no trades in this range"}.`;
  $("reading").dataset.snapshot = bars.snapshot_id === null ? "" : String(bars.snapshot_id);
  const times = bars.rows.map((b) => seconds(b.bar_start));
  const logRange = { start: rows.start, end: rows.end };
  const [quotes, events, rejects] = await Promise.allSettled([
    api.get("/v1/quotes", { ...quoteRows, fields: "event_time,bid_price,ask_price", limit: QUOTES_FOR_CHART }),
    api.get("/v1/sequence-events", { symbol: state.symbol, exchange: state.exchange, ...logRange, limit: 1000 }),
    api.get("/v1/rejects", { symbol: state.symbol, start: rows.start, limit: 1000 }),
  ]);
  if (mine !== rendering) return;
  if (quotes.status === "fulfilled") {
    $("chart").dataset.spreads = String(drawQuotes(times, quotes.value.data));
    $("quotes-note").textContent = quotes.value.next_cursor
      ? `(bid/ask from the first ${quotes.value.count.toLocaleString("en")} quotes)` : "";
  }
  const marked = drawMarkers(times, events.status === "fulfilled" ? events.value.data : [],
    rejects.status === "fulfilled" ? rejects.value.data : [], range);
  $("chart").dataset.markers = String(marked);
  await Promise.all([
    pagers.trades.reset(rows, zone),
    pagers.quotes.reset(quoteRows, zone),
    pagers.events.reset({ symbol: state.symbol, exchange: state.exchange, ...logRange }, zone),
    pagers.rejects.reset({ symbol: state.symbol, start: rows.start }, zone),
  ]);
  if (mine === rendering) document.body.dataset.ready = "true";
}

function selectTab(name) {
  for (const other of Object.keys(TABLES)) {
    $(`tab-${other}`).setAttribute("aria-selected", String(other === name));
    $(`panel-${other}`).hidden = other !== name;
  }
}

function fillExchanges(state) {
  const select = $("exchange");
  const row = symbolRow(state.symbol);
  const options = [new Option("all (consolidated)", "")];
  for (const e of (row && row.exchanges) || []) options.push(new Option(`${e} (${catalog.zones[e] || "zone unknown"})`, e));
  select.replaceChildren(...options);
  select.value = state.exchange;
}

async function main() {
  performance.mark("k2:start");
  makeChart();
  performance.mark("k2:chart-made");
  for (const name of Object.keys(TABLES)) {
    pagers[name] = new Pager(name, $(`panel-${name}`));
    $(`tab-${name}`).addEventListener("click", () => selectTab(name));
  }
  $("key").value = api.key();
  $("key").addEventListener("change", () => sessionStorage.setItem("k2-api-key", $("key").value));
  let state = readState();
  let snapshots = null;
  const theRest = () => { // the snapshot picker and the health strip
    if (snapshots) return snapshots;
    askTheRest();
    snapshots = loadSnapshots().catch(() => []); // without them, the page still draws "current"
    Promise.all([loadHealth(), snapshots]).then(([, listed]) => showLanded(listed));
    return snapshots;
  };
  // The form first: a page whose first answers were refused (a key was missing) asks again from it.
  $("symbol").addEventListener("change", () => fillExchanges(formState()));
  $("day").addEventListener("change", () => {
    $("start").value = "";
    $("end").value = "";
  });
  $("view").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!catalog.symbols.length) { // refused at first (a key was missing?): ask again, with the key now given
      askCatalog();
      early.snapshots = null;
      askTheRest();
      try {
        await Promise.all([loadCatalog(), loadSnapshots().catch(() => [])]); // snapshots: not needed to draw
      } catch (error) {
        showError(error);
        return;
      }
    }
    const next = formState();
    if (next.start || next.end) next.day = "";
    state = next;
    history.pushState(null, "", api.url(location.pathname, state));
    render(state);
  });
  window.addEventListener("popstate", () => {
    state = readState();
    fillExchanges(state);
    render(state);
  });
  afterFirstDraw = theRest;
  try {
    await (state.snapshot ? Promise.all([loadCatalog(), theRest()]) : loadCatalog()); // a snapshot's time: quotes
    performance.mark("k2:catalog");
  } catch (error) {
    clearChart("error");
    showError(error);
    theRest();
    return;
  }
  if (!state.symbol && catalog.symbols.length) {
    const traded = catalog.symbols.filter((s) => s.trades > 0).sort((a, b) => b.trades - a.trades);
    state.symbol = (traded[0] || catalog.symbols[0]).symbol;
  }
  fillExchanges(state);
  writeForm(state);
  await render(state);
}

document.addEventListener("DOMContentLoaded", main); // after the library (a deferred script too) has run
