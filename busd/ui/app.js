// busd console: overview charts, live tail, publish form, consumer groups.
// Plain browser JavaScript, no dependencies; every server text is shown with textContent.
"use strict";

const TOKEN_KEY = "busd.token";  // sessionStorage: this tab only, gone when it closes
const HISTORY = 60;              // chart points kept per namespace (one a second)
const DEAD_LETTER_ROWS = 200;    // dead letters listed at most

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY) || "";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

class Unauthorized extends Error {}

// fetch with the token; a 401 sends the tab back to the token prompt
async function call(method, path, body) {
  const headers = {};
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, {method, headers, body, cache: "no-store"});
  if (answer.status === 401) {
    const reason = (await answer.text()).trim();
    const refused = token ? "refused: " + reason : "";
    sessionStorage.removeItem(TOKEN_KEY);  // a token the bus refuses is not kept
    token = "";
    askForToken(refused);
    throw new Unauthorized(reason);
  }
  return answer;
}

// GET a JSON resource; anything but a 2xx is an Error carrying the server's reason
async function getJson(path) {
  const answer = await call("GET", path);
  if (!answer.ok) throw new Error(await reason(answer));
  return answer.json();
}

// Show what went wrong in `node`; a 401 needs no words: the token prompt is up
function report(node, error, prefix = "") {
  if (!(error instanceof Unauthorized)) node.textContent = prefix + error.message;
}

async function reason(answer) {
  return answer.status + " " + ((await answer.text()).trim() || answer.statusText);
}

function streamUrl(params) {
  const query = new URLSearchParams(params);
  if (token) query.set("token", token);  // EventSource cannot send headers
  return "/?" + query.toString();
}

// Why an EventSource stopped: it hides the answer, so ask the same URL once with fetch
// and read the status line and reason of a refusal (a 200 stream is cancelled at once).
async function whyRefused(url) {
  const controller = new AbortController();
  try {
    const answer = await fetch(url, {signal: controller.signal, cache: "no-store"});
    if (answer.ok) return "the connection to the bus was lost";
    return await reason(answer);
  } catch (error) {
    return "cannot reach the bus: " + error.message;
  } finally {
    controller.abort();
  }
}

// -- token prompt ---------------------------------------------------------------------------
function askForToken(message) {
  overview.stop();
  $("app").hidden = true;
  $("login").hidden = false;
  $("token-error").textContent = message || "";
  $("token-input").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token-input").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
});

$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  token = "";
  tail.stop("stopped");
  askForToken("");
});

// -- views ----------------------------------------------------------------------------------
for (const button of $("tabs").querySelectorAll("button")) {
  button.addEventListener("click", () => show(button.dataset.view));
}

function show(view) {
  for (const button of $("tabs").querySelectorAll("button")) {
    button.classList.toggle("active", button.dataset.view === view);
  }
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== view;
  if (view === "groups") groups.refresh();
}

// -- overview -------------------------------------------------------------------------------
const overview = {
  timer: null,
  previous: null,
  cards: new Map(),  // namespace → {card, figures, canvas, published: [], delivered: []}

  start() {
    if (this.timer === null) this.timer = setInterval(() => this.poll(), 1000);
  },
  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.previous = null;
  },

  async poll() {
    let stats;
    try {
      stats = await getJson("/stats");
    } catch (error) {
      report($("server-status"), error, "stats: ");
      return false;
    }
    $("server-status").textContent = "";
    this.update(stats);
    return true;
  },

  update(stats) {
    const seconds = this.previous ? stats.t - this.previous.t : 0;
    $("totals").textContent = `consumers ${stats.consumers} · connections ` +
      `${stats.connections} · acks ${stats.acks} · redeliveries ${stats.redeliveries}`;
    for (const [name, figures] of Object.entries(stats.namespaces)) {
      const entry = this.cards.get(name) || this.card(name);
      const before = this.previous && this.previous.namespaces[name];
      if (before && seconds > 0) {
        push(entry.published, (figures.published - before.published) / seconds);
        push(entry.delivered, (figures.delivered - before.delivered) / seconds);
      }
      const shown = {events: figures.events, bytes: formatBytes(figures.bytes),
                     segments: figures.segments, next_index: figures.next_index,
                     "published/s": last(entry.published), "delivered/s": last(entry.delivered)};
      for (const [key, value] of Object.entries(shown)) entry.figures[key].textContent = value;
      drawChart(entry.canvas, entry.published, entry.delivered);
    }
    this.previous = stats;
    tail.suggest(Object.keys(stats.namespaces));
  },

  card(name) {
    const card = el("article", "card");
    card.dataset.namespace = name;
    card.append(el("h2", "", name));
    const list = el("dl");
    const figures = {};
    for (const key of ["events", "bytes", "segments", "next_index", "published/s",
                       "delivered/s"]) {
      list.append(el("dt", "", key));
      figures[key] = list.appendChild(el("dd"));
      figures[key].dataset.figure = key;
    }
    const canvas = el("canvas");
    card.append(list, canvas);
    $("namespaces").append(card);
    const entry = {card, figures, canvas, published: [], delivered: []};
    this.cards.set(name, entry);
    return entry;
  },
};

function push(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

function last(series) {
  return series.length ? series[series.length - 1].toFixed(1) : "–";
}

function counted(count, one, many = one + "s") {
  return `${count} ${count === 1 ? one : many}`;
}

function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (bytes >= 1024 && unit < units.length - 1) { bytes /= 1024; unit += 1; }
  return (unit ? bytes.toFixed(1) : String(bytes)) + " " + units[unit];
}

function drawChart(canvas, published, delivered) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth * ratio, height = canvas.clientHeight * ratio;
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const context = canvas.getContext("2d");
  const styles = getComputedStyle(document.documentElement);
  context.clearRect(0, 0, width, height);
  const top = Math.max(1, ...published, ...delivered);
  context.lineWidth = 1.5 * ratio;
  for (const [series, color] of [[delivered, "--delivered"], [published, "--published"]]) {
    context.strokeStyle = styles.getPropertyValue(color).trim();
    context.beginPath();
    let x = 0, y = 0;
    series.forEach((value, i) => {
      x = width - 3 * ratio - (series.length - 1 - i) * ((width - 6 * ratio) / (HISTORY - 1));
      y = height - 3 * ratio - (value / top) * (height - 6 * ratio);
      if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
    });
    context.stroke();
    if (series.length) {  // the latest second as a dot: visible from the first sample on
      context.fillStyle = context.strokeStyle;
      context.beginPath();
      context.arc(x, y, 2.5 * ratio, 0, 2 * Math.PI);
      context.fill();
    }
  }
  context.fillStyle = styles.getPropertyValue("--muted").trim();
  context.font = `${10 * ratio}px sans-serif`;
  context.fillText(top.toFixed(top < 10 ? 1 : 0) + "/s", 2 * ratio, 10 * ratio);
}

// -- one event as a row ---------------------------------------------------------------------
function eventRow(record) {
  const row = el("article", "event");
  row.dataset.id = record.id;
  row.dataset.subject = record.subject;
  const meta = row.appendChild(el("div", "meta"));
  meta.append(el("span", "subject", record.subject), el("code", "id", record.id),
              el("span", "time", record.created_at || ""));
  if (record.key) meta.append(el("span", "key", "key " + record.key));
  if (record.trace_id) meta.append(el("span", "trace", "trace " + record.trace_id));
  if (record.deliveries > 1) meta.append(el("span", "deliveries", `delivery ${record.deliveries}`));
  if ("payload" in record) {
    const details = row.appendChild(el("details"));
    details.append(el("summary", "", JSON.stringify(record.payload)),
                   el("pre", "payload", JSON.stringify(record.payload, null, 2)));
  }
  return row;
}

// -- live tail ------------------------------------------------------------------------------
// Pausing keeps the stream open and holds what arrives; past the row cap the stream is
// closed and, on resume, opened again right after the last event received, so the page
// neither loses events nor holds more than the cap.
const tail = {
  source: null,
  paused: false,
  held: [],
  lastId: "",
  received: 0,
  pattern: "",

  cap() {
    const value = parseInt($("tail-cap").value, 10);
    return Math.min(10000, Math.max(10, Number.isFinite(value) ? value : 500));
  },

  suggest(namespaces) {
    const input = $("tail-pattern");
    if (!input.value && namespaces.length) input.value = namespaces[0] + ".>";
  },

  begin() {
    const kind = $("tail-start").value;
    const start = kind === "id" || kind === "time" ? $("tail-start-value").value.trim() : kind;
    this.stop("starting");
    $("tail-rows").replaceChildren();
    this.received = 0;
    this.lastId = "";
    this.held = [];
    this.paused = false;
    $("tail-count").textContent = "0";
    $("tail-error").textContent = "";
    this.pattern = $("tail-pattern").value.trim();
    this.open(start);
  },

  open(start) {
    const url = streamUrl({subject: this.pattern, start});
    const source = new EventSource(url);
    this.source = source;
    $("tail-pause").disabled = false;
    $("tail-pause").textContent = this.paused ? "Resume" : "Pause";
    source.addEventListener("consumer", () => this.status(this.paused ? "paused" : "live"));
    source.addEventListener("msg", (event) => this.arrive(JSON.parse(event.data)));
    source.addEventListener("error", async (event) => {
      if (source !== this.source) return;
      if (event.data !== undefined) {  // the bus's own `event: error`: it will not go on
        this.stop("stopped");
        $("tail-error").textContent = event.data;
      } else if (source.readyState === EventSource.CLOSED) {
        this.stop("stopped");
        $("tail-error").textContent = await whyRefused(url);
      } else {
        this.status("reconnecting…");
      }
    });
  },

  arrive(record) {
    this.lastId = record.id;
    this.received += 1;
    $("tail-count").textContent = String(this.received);
    if (!this.paused) {
      this.render(record);
      return;
    }
    this.held.push(record);
    if (this.held.length >= this.cap() && this.source) {
      this.source.close();  // resume asks for what follows lastId
      this.source = null;
    }
    this.status(`paused · ${this.held.length} waiting`);
  },

  render(record) {
    const rows = $("tail-rows");
    rows.prepend(eventRow(record));
    while (rows.childElementCount > this.cap()) rows.lastElementChild.remove();
  },

  togglePause() {
    if (!this.paused) {
      this.paused = true;
      $("tail-pause").textContent = "Resume";
      this.status("paused · 0 waiting");
      return;
    }
    this.paused = false;
    $("tail-pause").textContent = "Pause";
    const held = this.held;
    this.held = [];
    for (const record of held) this.render(record);
    if (this.source === null) this.open(this.lastId || "newest");
    this.status("live");
  },

  stop(status) {
    if (this.source) this.source.close();
    this.source = null;
    $("tail-pause").disabled = true;
    this.status(status);
  },

  status(text) {
    $("tail-status").textContent = text;
  },
};

$("tail-form").addEventListener("submit", (event) => {
  event.preventDefault();
  tail.begin();
});
$("tail-pause").addEventListener("click", () => tail.togglePause());
$("tail-clear").addEventListener("click", () => $("tail-rows").replaceChildren());
$("tail-start").addEventListener("change", () => {
  const kind = $("tail-start").value;
  const input = $("tail-start-value");
  input.hidden = kind !== "id" && kind !== "time";
  input.placeholder = kind === "id" ? "e_…" : "2026-12-03T17:00:00Z";
  input.required = !input.hidden;
});

// -- publish --------------------------------------------------------------------------------
$("publish-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  for (const id of ["payload-error", "publish-error", "publish-result"]) $(id).textContent = "";
  const record = {subject: $("publish-subject").value.trim()};
  const text = $("publish-payload").value;
  if (text.trim()) {
    try {
      record.payload = JSON.parse(text);
    } catch (error) {
      $("payload-error").textContent = "payload is not valid JSON: " + error.message;
      return;
    }
  }
  const key = $("publish-key").value, trace = $("publish-trace").value;
  if (key) record.key = key;
  if (trace) record.trace_id = trace;
  try {
    const answer = await call("POST", "/", JSON.stringify(record));
    if (answer.status !== 202) {
      $("publish-error").textContent = "refused: " + await reason(answer);
      return;
    }
    $("publish-result").textContent = `stored: id ${answer.headers.get("X-Bus-Event-Id")}` +
      ` · index ${answer.headers.get("X-Bus-Event-Index")}` +
      ` · ${answer.headers.get("X-Bus-Event-Created-At")}`;
    $("publish-result").dataset.id = answer.headers.get("X-Bus-Event-Id");
  } catch (error) {
    report($("publish-error"), error);
  }
});

// -- consumer groups (GET /groups, DELETE /groups) ------------------------------------------
const groups = {
  deadLetters: null,  // the EventSource of the open dead-letter list

  async refresh() {
    $("groups-error").textContent = "";
    let listing;
    try {
      listing = await getJson("/groups");
    } catch (error) {
      report($("groups-error"), error);
      return;
    }
    const body = $("groups-table").tBodies[0];
    body.replaceChildren();
    let count = 0;
    for (const [namespace, named] of Object.entries(listing)) {
      for (const group of Object.values(named)) {
        body.append(this.row(namespace, group));
        count += 1;
      }
    }
    $("groups-status").textContent = count ? counted(count, "group") : "no consumer groups yet";
  },

  row(namespace, group) {
    const row = el("tr");
    row.dataset.group = namespace + "/" + group.name;
    row.append(el("td", "", namespace), el("td", "", group.name),
               el("td", "", group.subjects.join(", ")));
    const figures = {members: group.members.length, pending: group.pending, lag: group.lag,
                     redeliveries: group.redeliveries, dead_letters: group.dead_letters};
    for (const [key, value] of Object.entries(figures)) {
      row.appendChild(el("td", "number", String(value))).dataset.figure = key;
    }
    row.cells[3].title = group.members
      .map((m) => `${m.consumer_id} (${m.inflight} in flight)`).join("\n");
    const actions = row.appendChild(el("td"));
    const letters = actions.appendChild(el("button", "dead-letters", "Dead letters"));
    letters.type = "button";
    letters.addEventListener("click", () => this.openDeadLetters(group));
    const remove = actions.appendChild(el("button", "delete", "Delete"));
    remove.type = "button";
    remove.addEventListener("click", () => this.remove(namespace, group.name));
    return row;
  },

  async remove(namespace, name) {
    if (!confirm(`Delete consumer group ${name} of ${namespace}? Its members are ` +
                 "disconnected and its position is lost (its dead letters stay).")) return;
    const query = new URLSearchParams({namespace, name});
    let refused = "";
    try {
      const answer = await call("DELETE", "/groups?" + query.toString());
      if (!answer.ok) refused = "not deleted: " + await reason(answer);
    } catch (error) {
      if (error instanceof Unauthorized) return;
      refused = "not deleted: " + error.message;
    }
    await this.refresh();  // it clears the error line: say why after it
    if (refused) $("groups-error").textContent = refused;
  },

  openDeadLetters(group) {
    this.closeDeadLetters();
    const subject = group.settings.dead_letter;
    $("dead-letters").hidden = false;
    $("dead-letters-title").textContent = `Dead letters of ${group.name} (${subject})`;
    $("dead-letters-status").textContent = "loading…";
    const rows = $("dead-letter-rows");
    rows.replaceChildren();
    const url = streamUrl({subject, start: "oldest"});
    const source = new EventSource(url);
    this.deadLetters = source;
    source.addEventListener("consumer", () => {
      $("dead-letters-status").textContent = "live";
    });
    source.addEventListener("msg", (event) => {
      rows.prepend(this.deadLetterRow(JSON.parse(event.data)));
      while (rows.childElementCount > DEAD_LETTER_ROWS) rows.lastElementChild.remove();
    });
    source.addEventListener("error", async (event) => {
      if (source !== this.deadLetters) return;
      if (event.data !== undefined || source.readyState === EventSource.CLOSED) {
        this.closeDeadLetters();
        $("dead-letters").hidden = false;
        $("dead-letters-status").textContent = event.data || await whyRefused(url);
      }
    });
  },

  // A dead letter's payload carries the original record (`event`), the reason and the
  // delivery count. Republishing sends the original subject, payload and trace id, not
  // its key: the bus has seen that key on that subject, and would refuse it (409).
  deadLetterRow(letter) {
    const info = letter.payload || {};
    const original = info.event || {};
    const row = eventRow(original.subject ? original : letter);
    const meta = row.querySelector(".meta");
    meta.append(el("span", "reason", `${info.reason || "dead letter"} after ` +
                                     counted(info.deliveries, "delivery", "deliveries")));
    const button = meta.appendChild(el("button", "republish", "Republish"));
    button.type = "button";
    const outcome = meta.appendChild(el("span", "outcome"));
    button.addEventListener("click", async () => {
      const again = {subject: original.subject};
      for (const field of ["payload", "trace_id"]) {
        if (field in original) again[field] = original[field];
      }
      try {
        const answer = await call("POST", "/", JSON.stringify(again));
        outcome.textContent = answer.status === 202
          ? "republished as " + answer.headers.get("X-Bus-Event-Id")
          : "refused: " + await reason(answer);
        outcome.className = answer.status === 202 ? "outcome" : "outcome error";
      } catch (error) {
        report(outcome, error);
      }
    });
    return row;
  },

  closeDeadLetters() {
    if (this.deadLetters) this.deadLetters.close();
    this.deadLetters = null;
    $("dead-letters").hidden = true;
  },
};

$("groups-refresh").addEventListener("click", () => groups.refresh());
$("dead-letters-close").addEventListener("click", () => groups.closeDeadLetters());

// -- start: the first /stats decides whether a token is needed ------------------------------
async function start() {
  if (await overview.poll()) {
    $("login").hidden = true;
    $("app").hidden = false;
    $("forget-token").hidden = !token;
    overview.start();
  }
}

start();
