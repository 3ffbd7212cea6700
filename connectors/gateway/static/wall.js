// The live alert wall. Everything is served by the gateway itself; nothing is loaded from elsewhere.
//
// Authentication: the token is entered once and kept in sessionStorage (this tab only). EventSource cannot
// send an Authorization header, so the page trades the token (in a header) for a short-lived ticket at
// POST /auth/ticket and opens the stream with ?ticket=...; the token itself never appears in a URL.
// EventSource's own reconnect would reuse an expired ticket, so the page reconnects by itself: a fresh
// ticket and ?since=<last cursor>, which resumes exactly after the last alert it showed.
"use strict";

const MAX_SHOWN = 500;
const SEVERITIES = ["LOW", "MEDIUM", "HIGH", "CRITICAL"];
const TOKEN_KEY = "yrdbus.gateway.token";
const LANG_KEY = "yrdbus.wall.lang";
const BEIJING = "Asia/Shanghai";

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  source: null,
  cursor: null,
  retry: null,
  rows: new Map(),   // alert id -> its row: one row an alert, showing its newest version
  dispositions: new Map(),   // alert id -> Map(region or "RCC" -> {ack, settle}): what the officers said
  scope: null,       // the token's scope (from its ticket): which alerts it may acknowledge and settle
  // Simplified Chinese by default (the officers' language), English one click away; the choice is kept
  lang: localStorage.getItem(LANG_KEY) === "en" ? "en" : "zh-CN",
  messages: {},      // the catalogue of /static/i18n/messages.json: language -> message id -> text
  names: { regions: {}, ports: {}, stations: {} },   // /names.json: the reference data's names
};

// ----------------------------------------------------------------- language and Beijing time
function t(id, vars) {
  const text = (state.messages[state.lang] || {})[id] ?? (state.messages.en || {})[id] ?? id;
  return text.replace(/\{(\w+)\}/g, (_, k) => (vars && k in vars ? String(vars[k]) : ""));
}

function named(kind, code) {
  const entry = (state.names[kind] || {})[code];
  return entry ? (entry[state.lang] || entry.en || code) : (code || "");
}

function regionNames(codes) {
  return (codes || []).map((c) => named("regions", c)).join("/");
}

// "2026-12-07 19:54:42" in Beijing time (UTC+8), the date always shown: an alert of yesterday evening and one
// of this morning must not look alike
const beijingFormat = new Intl.DateTimeFormat("sv-SE", {
  timeZone: BEIJING, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
  second: "2-digit", hour12: false,
});

function beijing(iso) {
  const d = new Date(iso);
  return isNaN(d) ? (iso || "") : beijingFormat.format(d);
}

function applyLanguage() {
  document.documentElement.lang = state.lang;
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-placeholder]")) node.placeholder = t(node.dataset.i18nPlaceholder);
  for (const node of document.querySelectorAll("[data-region]")) node.textContent = named("regions", node.dataset.region);
  for (const option of $("region").options) if (option.value) option.textContent = named("regions", option.value);
  if (state.ticket) showWho(state.ticket);
  if (state.statusKey) setStatus(state.statusKey, state.statusClass);
  for (const li of [...$("alerts").children]) {     // rows rebuilt in the new language, in place
    const again = buildRow(li._alert);
    again._when = li._when;
    again.hidden = li.hidden;
    again.classList.remove("fresh");
    $("alerts").replaceChild(again, li);
    state.rows.set(li._alert.alert_id, again);
    showDispositions(again);
  }
}

async function loadText() {
  const [messages, names] = await Promise.all([
    fetch("/static/i18n/messages.json", { cache: "no-cache" }).then((r) => r.json()).catch(() => ({})),
    fetch("/names.json").then((r) => r.json()).catch(() => null),
  ]);
  state.messages = messages;
  if (names) state.names = names;
  applyLanguage();
}
const OUTCOMES = [["ACKNOWLEDGED", "Acknowledge"], ["CONFIRMED", "Confirm"], ["FALSE_ALARM", "False alarm"],
                  ["NO_ACTION", "No action"]];

function setStatus(key, cls) {
  const el = $("status");
  state.statusKey = key;
  state.statusClass = cls;
  el.textContent = t("status." + key);
  el.className = "status " + cls;
}

function showWho(ticket) {
  $("who").textContent = t("who") + " " + ticket.token + " · " + describeScope(ticket.scope);
}

function showLogin(message) {
  $("login").hidden = false;
  $("wall").hidden = true;
  $("controls").hidden = true;
  $("login-error").textContent = message || "";
  $("token").focus();
}

function showWall() {
  $("login").hidden = true;
  $("wall").hidden = false;
  $("controls").hidden = false;
}

function signOut(message) {
  if (state.source) state.source.close();
  clearTimeout(state.retry);
  state.source = null;
  state.token = null;
  state.cursor = null;
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(message);
}

async function getTicket() {
  const response = await fetch("/auth/ticket", {
    method: "POST",
    headers: { Authorization: "Bearer " + state.token },
    cache: "no-store",
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    signOut(body.message || "The token was refused.");
    return null;
  }
  if (!response.ok) throw new Error(body.message || ("HTTP " + response.status));
  return body;
}

function fillRegions(regions) {
  const select = $("region");
  if (select.options.length > 1) return;
  for (const r of regions) {
    const option = document.createElement("option");
    option.value = r;
    option.textContent = named("regions", r);
    select.appendChild(option);
  }
}

function scheduleReconnect(delayMs) {
  clearTimeout(state.retry);
  state.retry = setTimeout(connect, delayMs);
}

async function connect() {
  if (!state.token) return showLogin();
  if (state.source) state.source.close();
  setStatus("connecting", "wait");
  let ticket;
  try {
    ticket = await getTicket();
  } catch (err) {
    setStatus("unreachable", "off");
    return scheduleReconnect(3000);
  }
  if (!ticket) return;
  showWall();
  fillRegions(ticket.regions);
  state.ticket = ticket;
  showWho(ticket);
  state.scope = ticket.scope;
  $("console").hidden = !ticket.scope.all;   // heightened mode: the command centre's console only

  const params = new URLSearchParams({ ticket: ticket.ticket });
  if (state.cursor) params.set("since", state.cursor);
  else params.set("from_time", new Date(Date.now() - 3600 * 1000).toISOString());  // the last hour first
  const source = new EventSource("/alerts/stream?" + params.toString());
  state.source = source;

  source.addEventListener("hello", (e) => {
    state.cursor = e.lastEventId || state.cursor;
    setStatus("live", "live");
  });
  source.addEventListener("alert", (e) => {
    state.cursor = e.lastEventId || state.cursor;
    addAlert(JSON.parse(e.data));
  });
  source.addEventListener("disposition", (e) => {
    state.cursor = e.lastEventId || state.cursor;
    addDisposition(JSON.parse(e.data));
  });
  source.addEventListener("gap", (e) => {
    const gap = JSON.parse(e.data);
    notice(t("gap", { topic: gap.topic }));
  });
  source.addEventListener("lagged", (e) => {
    state.cursor = JSON.parse(e.data).cursor;
    source.close();
    setStatus("catching_up", "wait");
    scheduleReconnect(100);
  });
  source.addEventListener("closing", (e) => {
    state.cursor = JSON.parse(e.data).cursor || state.cursor;
    source.close();
    setStatus("restarting", "wait");
    scheduleReconnect(2000);
  });
  source.onerror = () => {
    source.close();
    setStatus("reconnecting", "wait");
    scheduleReconnect(2000);
  };
}

function describeScope(scope) {
  if (scope.all) return t("all_regions");
  const parts = [];
  if (scope.regions) parts.push(scope.regions.map((r) => named("regions", r)).join(", "));
  if (scope.stations) parts.push(t("stations") + " " + scope.stations.join(", "));
  return parts.join(" · ");
}

function notice(text) {
  const el = $("notice");
  el.textContent = text;
  el.hidden = false;
}

function regionsOf(alert) {
  const out = new Set(alert.must_act || []);
  for (const r of alert.inform || []) out.add(r);
  if (alert.routed_to) out.add(alert.routed_to);
  return out;
}

function visible(alert) {
  const region = $("region").value;
  const min = SEVERITIES.indexOf($("severity").value);
  if (SEVERITIES.indexOf(alert.severity) < min) return false;
  return !region || regionsOf(alert).has(region);
}

function applyFilters() {
  let shown = 0;
  for (const li of $("alerts").children) {
    li.hidden = !visible(li._alert);
    if (!li.hidden) shown += 1;
  }
  $("empty").hidden = shown > 0;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function addRow(dl, label, value) {
  if (value === undefined || value === null || value === "" || (Array.isArray(value) && !value.length)) return;
  dl.appendChild(el("dt", null, label));
  const dd = el("dd");
  if (value instanceof Node) dd.appendChild(value);
  else dd.textContent = Array.isArray(value) ? value.join(", ") : String(value);
  dl.appendChild(dd);
}

// a request that changes something: JSON in, the response and its JSON body (or {}) out
async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { Authorization: "Bearer " + state.token, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  });
  return [response, await response.json().catch(() => ({}))];
}

// ----------------------------------------------------------------- dispositions
function mayDispose(alert) {
  const scope = state.scope || {};
  if (scope.all) return true;
  const mine = new Set(scope.regions || []);
  return [...(alert.must_act || []), ...(alert.inform || [])].some((r) => mine.has(r));
}

function addDisposition(d) {
  if (!state.dispositions.has(d.alert_id)) state.dispositions.set(d.alert_id, new Map());
  const byRegion = state.dispositions.get(d.alert_id);
  const who = d.region || "RCC";
  const entry = byRegion.get(who) || {};
  entry[d.outcome === "ACKNOWLEDGED" ? "ack" : "settle"] = d;
  byRegion.set(who, entry);
  const li = state.rows.get(d.alert_id);
  if (li) showDispositions(li);
}

function showDispositions(li) {
  const byRegion = state.dispositions.get(li.dataset.alertId);
  const badge = li.querySelector(".disposition");
  if (!byRegion || !badge) return;
  const parts = [];
  let settled = null;
  for (const [region, entry] of byRegion) {
    const latest = entry.settle || entry.ack;
    const who = region === "RCC" ? t("cc") : named("regions", region);
    parts.push(who + ": " + t("outcome." + latest.outcome) + " (" + latest.officer + ")" +
               (latest.note ? " " + latest.note : ""));
    if (entry.settle) settled = settled || entry.settle.outcome;
  }
  badge.textContent = parts.join(" · ");
  badge.hidden = false;
  li.dataset.disposition = settled || "ACKNOWLEDGED";
}

async function dispose(alertId, outcome, note, message) {
  message.textContent = "";
  try {
    const [response, body] = await post("/alerts/" + encodeURIComponent(alertId) + "/dispositions",
                                        { outcome, note });
    if (!response.ok) {
      message.textContent = body.message || ("HTTP " + response.status);
      return;
    }
    for (const d of body.dispositions || []) addDisposition(d);
  } catch (err) {
    message.textContent = t("unreachable") + err.message;
  }
}

function actions(alert) {
  const box = el("div", "actions");
  const note = el("input", "note");
  note.type = "text";
  note.maxLength = 500;
  note.placeholder = t("note");
  const message = el("span", "action-error");
  message.setAttribute("role", "alert");
  for (const [outcome] of OUTCOMES) {
    if (withdrawn(alert) && outcome !== "ACKNOWLEDGED") continue;
    const button = el("button", "act act-" + outcome, t("act." + outcome));
    button.type = "button";
    button.dataset.outcome = outcome;
    button.addEventListener("click", () => dispose(alert.alert_id, outcome, note.value.trim(), message));
    box.appendChild(button);
  }
  box.appendChild(note);
  box.appendChild(message);
  return box;
}

// a heightened window still running, on the command centre's wall: ended early from its announcement
function mayEnd(alert) {
  const ends = Number((alert.details || {}).ends_at);
  return Boolean((state.scope || {}).all) && alert.kind === "HEIGHTENED_MODE" && !withdrawn(alert) &&
         ends > Date.now();
}

function endWindow(alert) {
  const box = el("div", "actions end-window");
  const button = el("button", "act act-end", t("hm.end"));
  button.type = "button";
  const message = el("span", "action-error");
  message.setAttribute("role", "alert");
  button.addEventListener("click", async () => {
    message.textContent = "";
    try {
      const [response, answer] = await post("/control/heightened/" + encodeURIComponent(alert.alert_id) + "/end", {});
      message.textContent = response.ok
        ? t("hm.ended", { regions: regionNames(answer.regions), until: beijing(answer.ends_at), id: answer.event_id })
        : (answer.message || ("HTTP " + response.status));
      message.dataset.ok = response.ok ? "yes" : "no";
      if (response.ok) button.disabled = true;
    } catch (err) {
      message.textContent = t("unreachable") + err.message;
    }
  });
  box.appendChild(button);
  box.appendChild(message);
  return box;
}

function withdrawn(alert) {
  return alert.status === "WITHDRAWN";
}

function buildRow(alert) {
  const li = el("li", "alert fresh sev-" + alert.severity + (withdrawn(alert) ? " withdrawn" : ""));
  li.dataset.alertId = alert.alert_id;
  li.dataset.severity = alert.severity;
  li.dataset.status = alert.status || "RAISED";
  li._alert = alert;
  const details = el("details");
  const summary = el("summary");
  const time = el("time", "time", beijing(alert.occurred_at));
  time.dateTime = alert.occurred_at;
  time.title = alert.occurred_at + " UTC";
  summary.appendChild(time);
  summary.appendChild(el("span", "sev", t("sev." + alert.severity)));
  const kind = el("span", "kind", t("kind." + alert.kind));
  kind.title = alert.kind;
  summary.appendChild(kind);
  summary.appendChild(el("span", "region", alert.routed_to ? named("regions", alert.routed_to)
                                                          : regionNames(alert.must_act)));
  const where = el("span", "where", alert.station_id || alert.port_code || "");
  where.title = alert.station_id ? named("stations", alert.station_id) : named("ports", alert.port_code);
  summary.appendChild(where);
  summary.appendChild(el("span", "summary", alert.summary));
  if (withdrawn(alert)) {
    const reason = el("span", "reason");
    reason.appendChild(el("strong", "withdrawn-label", t("withdrawn")));
    reason.appendChild(document.createTextNode(" " + (alert.status_reason || t("no_reason")) +
                                               " · " + beijing(alert.emitted_at)));
    summary.appendChild(reason);
  }
  const badge = el("span", "disposition");
  badge.hidden = true;
  summary.appendChild(badge);
  details.appendChild(summary);

  const body = el("div", "evidence");
  const dl = el("dl");
  const evidence = el("ul");
  for (const id of alert.evidence || []) evidence.appendChild(el("li", null, id));
  addRow(dl, t("f.status"), t("status_value." + (alert.status || "RAISED")));
  if (withdrawn(alert)) addRow(dl, t("f.withdrawn_because"), alert.status_reason);
  addRow(dl, t("f.evidence"), evidence);
  addRow(dl, t("f.rule"), alert.rule_id + " (" + t("f.rule_set") + " " + alert.rule_set_version + ")");
  addRow(dl, t("f.must_act"), (alert.must_act || []).map((r) => named("regions", r)));
  addRow(dl, t("f.inform"), (alert.inform || []).map((r) => named("regions", r)));
  if (alert.station_id) addRow(dl, t("f.station"), named("stations", alert.station_id) + " (" + alert.station_id + ")");
  if (alert.port_code) addRow(dl, t("f.port"), named("ports", alert.port_code) + " (" + alert.port_code + ")");
  addRow(dl, t("f.subject"), alert.subject);
  addRow(dl, t("f.conveyance"), alert.conveyance_id);
  addRow(dl, t("f.pattern"), alert.pattern);
  for (const [k, v] of Object.entries(alert.details || {})) {
    // a time in the details is epoch milliseconds (e.g. a heightened window's ends_at): shown in Beijing time
    addRow(dl, k, /_at$/.test(k) && /^\d{12,14}$/.test(v) ? beijing(new Date(Number(v)).toISOString()) : v);
  }
  addRow(dl, t("f.occurred"), beijing(alert.occurred_at));
  addRow(dl, t("f.emitted"), beijing(alert.emitted_at));
  addRow(dl, t("f.occurred_utc"), alert.occurred_at);
  addRow(dl, t("f.alert_id"), alert.alert_id);
  if (alert.position) addRow(dl, t("f.position"), alert.position.topic + ":" + alert.position.partition + ":" + alert.position.offset);
  body.appendChild(dl);
  if (mayDispose(alert)) body.appendChild(actions(alert));
  if (mayEnd(alert)) body.appendChild(endWindow(alert));
  details.appendChild(body);
  li.appendChild(details);
  return li;
}

function addAlert(alert) {
  const list = $("alerts");
  const shown = state.rows.get(alert.alert_id);
  if (shown) {
    // A later version of an alert already shown (the one that withdraws it) takes the place of its row, so
    // an officer sees the alert they know change rather than a new alert; an older or the same version
    // (a routed copy, a replay) changes nothing.
    if (!(Date.parse(alert.emitted_at) > Date.parse(shown._alert.emitted_at))) return;
    const li = buildRow(alert);
    li._when = shown._when;   // keeps its place in the order of the version first shown
    list.replaceChild(li, shown);
    state.rows.set(alert.alert_id, li);
    showDispositions(li);
    li.hidden = !visible(alert);
    return;
  }
  const li = buildRow(alert);
  li._when = Date.parse(alert.emitted_at);
  state.rows.set(alert.alert_id, li);
  showDispositions(li);   // what was said of it before it was shown (a disposition can arrive first)

  // Newest first by emission time: alerts of different partitions can arrive slightly out of order.
  let before = list.firstChild;
  while (before && before._when > li._when) before = before.nextSibling;
  list.insertBefore(li, before);
  while (list.children.length > MAX_SHOWN) {
    const last = list.lastChild;
    state.rows.delete(last.dataset.alertId);
    list.removeChild(last);
  }
  li.hidden = !visible(alert);
  if (!li.hidden) $("empty").hidden = true;
}

// ----------------------------------------------------------------- heightened mode (command centre)
$("heightened-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const result = $("hm-result");
  const regions = [...document.querySelectorAll('#heightened-form input[name="region"]:checked')].map((x) => x.value);
  if (!regions.length) {
    result.textContent = t("hm.choose");
    return;
  }
  const body = {
    regions,
    ends_at: $("hm-until").value + ":00+08:00",   // the officer types Beijing time
    threshold_multiplier: Number($("hm-multiplier").value),
    reason: $("hm-reason").value.trim(),
  };
  try {
    const [response, answer] = await post("/control/heightened", body);
    result.textContent = response.ok
      ? t("hm.done", { regions: regionNames(answer.regions), until: beijing(answer.ends_at), id: answer.event_id })
      : (answer.message || ("HTTP " + response.status));
    result.dataset.ok = response.ok ? "yes" : "no";
  } catch (err) {
    result.textContent = t("unreachable") + err.message;
    result.dataset.ok = "no";
  }
});

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  connect();
});
$("signout").addEventListener("click", () => signOut("Signed out."));
$("region").addEventListener("change", applyFilters);
$("severity").addEventListener("change", applyFilters);

$("lang").addEventListener("click", () => {
  state.lang = state.lang === "en" ? "zh-CN" : "en";
  localStorage.setItem(LANG_KEY, state.lang === "en" ? "en" : "zh-CN");
  applyLanguage();
});

loadText().finally(() => {
  if (state.token) connect();
  else showLogin();
});
