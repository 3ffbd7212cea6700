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

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  source: null,
  cursor: null,
  retry: null,
  rows: new Map(),   // alert id -> its row: one row an alert, showing its newest version
  dispositions: new Map(),   // alert id -> Map(region or "RCC" -> {ack, settle}): what the officers said
  scope: null,       // the token's scope (from its ticket): which alerts it may acknowledge and settle
};
const OUTCOMES = [["ACKNOWLEDGED", "Acknowledge"], ["CONFIRMED", "Confirm"], ["FALSE_ALARM", "False alarm"],
                  ["NO_ACTION", "No action"]];

function setStatus(text, cls) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + cls;
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
    option.textContent = r;
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
    setStatus("gateway unreachable", "off");
    return scheduleReconnect(3000);
  }
  if (!ticket) return;
  showWall();
  fillRegions(ticket.regions);
  $("who").textContent = "token " + ticket.token + " · " + describeScope(ticket.scope);
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
    notice("Some alerts were deleted by retention before they could be shown (" + gap.topic + ").");
  });
  source.addEventListener("lagged", (e) => {
    state.cursor = JSON.parse(e.data).cursor;
    source.close();
    setStatus("catching up", "wait");
    scheduleReconnect(100);
  });
  source.addEventListener("closing", (e) => {
    state.cursor = JSON.parse(e.data).cursor || state.cursor;
    source.close();
    setStatus("gateway restarting", "wait");
    scheduleReconnect(2000);
  });
  source.onerror = () => {
    source.close();
    setStatus("reconnecting", "wait");
    scheduleReconnect(2000);
  };
}

function describeScope(scope) {
  if (scope.all) return "all regions";
  const parts = [];
  if (scope.regions) parts.push(scope.regions.join(", "));
  if (scope.stations) parts.push("stations " + scope.stations.join(", "));
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

function localTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleTimeString([], { hour12: false });
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
    parts.push(region + ": " + latest.outcome + " (" + latest.officer + ")" + (latest.note ? " " + latest.note : ""));
    if (entry.settle) settled = settled || entry.settle.outcome;
  }
  badge.textContent = parts.join(" · ");
  badge.hidden = false;
  li.dataset.disposition = settled || "ACKNOWLEDGED";
}

async function dispose(alertId, outcome, note, message) {
  message.textContent = "";
  try {
    const response = await fetch("/alerts/" + encodeURIComponent(alertId) + "/dispositions", {
      method: "POST",
      headers: { Authorization: "Bearer " + state.token, "Content-Type": "application/json" },
      body: JSON.stringify({ outcome, note }),
      cache: "no-store",
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      message.textContent = body.message || ("HTTP " + response.status);
      return;
    }
    for (const d of body.dispositions || []) addDisposition(d);
  } catch (err) {
    message.textContent = "the gateway could not be reached: " + err.message;
  }
}

function actions(alert) {
  const box = el("div", "actions");
  const note = el("input", "note");
  note.type = "text";
  note.maxLength = 500;
  note.placeholder = "note (optional)";
  const message = el("span", "action-error");
  message.setAttribute("role", "alert");
  for (const [outcome, label] of OUTCOMES) {
    if (withdrawn(alert) && outcome !== "ACKNOWLEDGED") continue;
    const button = el("button", "act act-" + outcome, label);
    button.type = "button";
    button.dataset.outcome = outcome;
    button.addEventListener("click", () => dispose(alert.alert_id, outcome, note.value.trim(), message));
    box.appendChild(button);
  }
  box.appendChild(note);
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
  summary.appendChild(el("span", "time", localTime(alert.occurred_at)));
  summary.appendChild(el("span", "sev", alert.severity));
  summary.appendChild(el("span", "kind", alert.kind));
  summary.appendChild(el("span", "region", alert.routed_to || (alert.must_act || []).join("/")));
  summary.appendChild(el("span", "where", alert.station_id || alert.port_code || ""));
  summary.appendChild(el("span", "summary", alert.summary));
  if (withdrawn(alert)) {
    const reason = el("span", "reason");
    reason.appendChild(el("strong", "withdrawn-label", "WITHDRAWN"));
    reason.appendChild(document.createTextNode(" " + (alert.status_reason || "no reason given") +
                                               " · " + localTime(alert.emitted_at)));
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
  addRow(dl, "status", alert.status || "RAISED");
  if (withdrawn(alert)) addRow(dl, "withdrawn because", alert.status_reason);
  addRow(dl, "evidence (event ids)", evidence);
  addRow(dl, "rule", alert.rule_id + " (rule set " + alert.rule_set_version + ")");
  addRow(dl, "must act", alert.must_act);
  addRow(dl, "inform", alert.inform);
  addRow(dl, "station", alert.station_id);
  addRow(dl, "port", alert.port_code);
  addRow(dl, "subject token", alert.subject);
  addRow(dl, "conveyance", alert.conveyance_id);
  addRow(dl, "pattern", alert.pattern);
  for (const [k, v] of Object.entries(alert.details || {})) addRow(dl, k, v);
  addRow(dl, "occurred at (UTC)", alert.occurred_at);
  addRow(dl, "emitted at (UTC)", alert.emitted_at);
  addRow(dl, "alert id", alert.alert_id);
  if (alert.position) addRow(dl, "position", alert.position.topic + ":" + alert.position.partition + ":" + alert.position.offset);
  body.appendChild(dl);
  if (mayDispose(alert)) body.appendChild(actions(alert));
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
    result.textContent = "Choose at least one region.";
    return;
  }
  const body = {
    regions,
    ends_at: $("hm-until").value + ":00+08:00",   // the officer types Beijing time
    threshold_multiplier: Number($("hm-multiplier").value),
    reason: $("hm-reason").value.trim(),
  };
  try {
    const response = await fetch("/control/heightened", {
      method: "POST",
      headers: { Authorization: "Bearer " + state.token, "Content-Type": "application/json" },
      body: JSON.stringify(body),
      cache: "no-store",
    });
    const answer = await response.json().catch(() => ({}));
    result.textContent = response.ok
      ? "Heightened mode declared for " + answer.regions.join(", ") + " until " + answer.ends_at +
        " (event " + answer.event_id + "); the walls show it when the stream layer announces it."
      : (answer.message || ("HTTP " + response.status));
    result.dataset.ok = response.ok ? "yes" : "no";
  } catch (err) {
    result.textContent = "the gateway could not be reached: " + err.message;
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

if (state.token) connect();
else showLogin();
