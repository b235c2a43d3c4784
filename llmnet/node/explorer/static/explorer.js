// LLM-Net explorer: polls this node's JSON endpoints and redraws. No dependencies, no network but the node.
"use strict";

const REFRESH_MS = 2000;
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
const SVG_NS = "http://www.w3.org/2000/svg";

// el("td", {class: "num"}, "text", childNode): builds DOM without ever parsing HTML from chain data.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function short(text) {
  return text.length > 18 ? `${text.slice(0, 10)}…${text.slice(-5)}` : text;
}

function fraction(value, scale) {
  return (value / scale).toFixed(3);
}

// Wide tables scroll inside their card instead of running under the next one.
function scroll(table) {
  return el("div", { class: "scroll" }, table);
}

// Anything the search box understands (an address, a query id) opens the search panel on a click.
function searchLink(text, shown) {
  return el("a", { href: "#", "data-search": text, title: text }, shown ?? text);
}

function keyValues(rows) {
  return scroll(el("table", { class: "kv" }, el("tbody", {},
    ...rows.map(([key, value]) => el("tr", {}, el("th", {}, key), el("td", {}, value))))));
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

function renderStatus(status) {
  document.getElementById("chain").textContent = `chain ${status.chain_id} · node ${status.moniker}`;
  document.getElementById("height").textContent = status.height;
}

function renderBlocks(blocks) {
  const rows = blocks.map((b) => el("tr", { "data-height": b.height },
    el("td", { class: "num" }, b.height), el("td", {}, b.time.replace("T", " ").slice(0, 19)),
    el("td", { class: "num" }, b.txs), el("td", { class: "mono" }, short(b.proposer)),
    el("td", { class: "mono" }, short(b.hash))));
  document.querySelector("#blocks tbody").replaceChildren(...rows);
}

// Monikers are whatever an operator typed: like all chain data they go in through el(), as text only.
function renderValidators(set) {
  const more = set.more ? " · only the first page is shown" : "";
  document.getElementById("validators-total").textContent =
    `(${set.validators.length}, power ${set.total_power}${more})`;
  const box = document.getElementById("validators");
  if (!set.validators.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No validators."));
    return;
  }
  const head = el("tr", {}, el("th", {}, "moniker"), el("th", {}, "address"), el("th", { class: "num" }, "power"),
    el("th", { class: "num" }, "share"), el("th", {}, "status"), el("th", { class: "num" }, `bond (${set.denom})`));
  // The API sends them by power already; a stable sort keeps its tie order (bond, then address).
  const ranked = [...set.validators].sort((a, b) => b.power - a.power);
  const rows = ranked.map((v) => el("tr", { "data-validator": v.address },
    el("td", { class: "moniker" }, v.operator ? searchLink(v.operator, v.moniker) : v.moniker),
    el("td", { class: "mono", title: v.address }, short(v.address)),
    el("td", { class: "num" }, v.power), el("td", { class: "num" }, `${v.share.toFixed(1)}%`),
    el("td", {}, v.status === "jailed" ? `jailed until ${v.jailed_until}` : v.status),
    el("td", { class: "num" }, v.fixed ? "fixed" : v.bond)));
  box.replaceChildren(scroll(el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))));
}

function renderExperts(experts) {
  const parts = [];
  for (const [domain, list] of Object.entries(experts.domains)) {
    parts.push(el("h3", {}, `${domain} (${list.length})`));
    if (!list.length) {
      parts.push(el("p", { class: "empty" }, "No experts registered."));
      continue;
    }
    const head = el("tr", {}, el("th", {}, "expert"), el("th", { class: "num" }, "reputation"),
      el("th", { class: "num" }, `stake (${experts.denom})`), el("th", {}, "status"),
      el("th", { class: "num" }, "answered"), el("th", { class: "num" }, "earned"),
      el("th", { class: "num" }, "slashed"));
    const rows = list.map((x) => el("tr", { "data-expert": x.address },
      el("td", { class: "mono" }, searchLink(x.address, short(x.address))),
      el("td", { class: "num" }, fraction(x.reputation, experts.reputation_scale)),
      el("td", { class: "num" }, x.stake), el("td", {}, x.status), el("td", { class: "num" }, x.answered),
      el("td", { class: "num" }, x.earned), el("td", { class: "num" }, x.slashed)));
    parts.push(scroll(el("table", { "data-domain": domain }, el("thead", {}, head), el("tbody", {}, ...rows))));
  }
  document.getElementById("experts").replaceChildren(...parts);
}

function renderQuery(query) {
  const phase = el("span", { class: `phase${query.settled ? " settled" : ""}` }, query.phase);
  const meta = el("div", { class: "meta" }, `#${query.id} · ${query.domain} · `, phase,
    ` · round ${query.round}/${query.rounds} · fee ≤ ${query.max_fee} · asked at height ${query.created_height}`
    + (query.settled ? ` · settled at ${query.settled_height}` : ""));
  const parts = [meta, el("div", { class: "prompt" }, query.prompt)];
  if (query.settled) {
    const best = query.final_index >= 0 ? query.final_answer : "(no answer was revealed)";
    parts.push(el("div", { class: "final" }, "Final answer: ", el("span", { class: "final-answer" }, best)));
  }
  const head = el("tr", {}, el("th", {}, "respondent"), el("th", {}, "answer"),
    el("th", { class: "num" }, "score"), el("th", { class: "num" }, "paid"));
  const rows = query.respondents.map((r) => el("tr", { class: r.final ? "best" : "" },
    el("td", { class: "mono" }, searchLink(r.address, short(r.address))),
    el("td", {}, r.revealed ? r.answer : "(not revealed)"),
    el("td", { class: "num" }, r.score ?? "–"), el("td", { class: "num" }, r.paid ?? "–")));
  parts.push(scroll(el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))));
  if (query.settled && query.missed.length) {
    parts.push(el("div", { class: "meta" }, `missed a duty: ${query.missed.map(short).join(", ")}`));
  }
  return el("article", { class: "query", "data-query-id": query.id, "data-phase": query.phase }, ...parts);
}

function renderQueries(queries) {
  const box = document.getElementById("queries");
  if (!queries.length) box.replaceChildren(el("p", { class: "empty" }, "No queries here."));
  else box.replaceChildren(...queries.map(renderQuery));
}

let chosenDomain = null; // set once the user picks one; until then the first domain with history

function chooseDomain(domains, series) {
  const select = document.getElementById("chart-domain");
  if ([...select.options].map((o) => o.value).join() !== domains.join()) {
    select.replaceChildren(...domains.map((d) => el("option", { value: d }, d)));
  }
  const fallback = domains.find((d) => Object.keys(series[d] || {}).length) || domains[0] || "";
  select.value = domains.includes(chosenDomain) ? chosenDomain : fallback;
  return select.value;
}

function renderChart(reputation, experts, height) {
  const domains = Object.keys(experts.domains);
  const domain = chooseDomain(domains, reputation.series || {});
  const box = document.getElementById("reputation-chart");
  const series = Object.entries((reputation.series || {})[domain] || {});
  if (!series.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No reputation history in this domain yet."));
    return;
  }
  const W = 560, H = 240, L = 44, R = 10, T = 10, B = 28;
  const heights = series.flatMap(([, pts]) => pts.map((p) => p.height));
  // a loop, not Math.min(...heights): spread arguments overflow the call stack at a few hundred thousand points
  const x0 = heights.reduce((a, b) => Math.min(a, b));
  const x1 = heights.reduce((a, b) => Math.max(a, b), Math.max(height || 0, x0 + 1));
  const scale = reputation.reputation_scale;
  const x = (h) => L + ((h - x0) / (x1 - x0)) * (W - L - R);
  const y = (v) => T + (1 - v / scale) * (H - T - B);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img",
    "aria-label": `reputation over block height in ${domain}` });
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(v * scale), y2: y(v * scale) }));
    const label = svg("text", { x: L - 6, y: y(v * scale) + 4, "text-anchor": "end" });
    label.textContent = v.toFixed(2);
    chart.append(label);
  }
  for (const h of [x0, x1]) {
    const label = svg("text", { x: x(h), y: H - 8, "text-anchor": h === x0 ? "start" : "end" });
    label.textContent = `height ${h}`;
    chart.append(label);
  }
  const legend = el("div", { class: "legend" });
  series.forEach(([address, points], i) => {
    const colour = COLOURS[i % COLOURS.length];
    // A step line: reputation holds its value until the next change.
    const coords = [];
    points.forEach((p, j) => {
      if (j > 0) coords.push(`${x(p.height)},${y(points[j - 1].reputation)}`);
      coords.push(`${x(p.height)},${y(p.reputation)}`);
    });
    coords.push(`${x(x1)},${y(points[points.length - 1].reputation)}`);
    chart.append(svg("polyline", { class: "series", stroke: colour, points: coords.join(" "),
      "data-expert": address }));
    const last = points[points.length - 1].reputation;
    legend.append(el("span", { style: `--swatch: ${colour}`, title: address },
      `${short(address)} ${fraction(last, scale)}`));
  });
  box.replaceChildren(chart, legend);
}

function setLive(ok, why) {
  const live = document.getElementById("live");
  live.className = ok ? "live" : "offline";
  live.textContent = ok ? `live · ${new Date().toLocaleTimeString()}` : "node unreachable";
  live.title = why;
}

// Rebuilding a panel every poll would drop a user's text selection; only redraw what changed.
const shown = {};
function redrawIfChanged(name, data, draw) {
  const key = JSON.stringify(data);
  if (shown[name] === key) return;
  shown[name] = key;
  draw(data);
}

// Paged panels: the `before` cursor of the page shown, null to follow the newest as the chain grows.
const PAGED = {
  blocks: { draw: renderBlocks, number: (b) => b.height, noun: "heights" },
  queries: { draw: renderQueries, number: (x) => x.id, noun: "queries" },
};
const cursor = { blocks: null, queries: null };
const lastPage = {};

function renderPager(name, page) {
  const nav = document.querySelector(`.pager[data-panel="${name}"]`);
  nav.querySelector('[data-go="newer"]').disabled = page.newer === null;
  nav.querySelector('[data-go="older"]').disabled = page.older === null;
  const numbers = page[name].map(PAGED[name].number);
  const span = numbers.length ? `${PAGED[name].noun} ${numbers[0]}–${numbers[numbers.length - 1]} of ${page.latest}`
    : "nothing here";
  nav.querySelector(".where").textContent = (cursor[name] === null ? "newest · " : "") + span;
}

async function loadPage(name) {
  const asked = cursor[name];
  const page = await getJSON(asked === null ? `/api/${name}` : `/api/${name}?before=${asked}`);
  if (asked !== cursor[name]) return; // the user paged while this was in flight: a newer load draws
  lastPage[name] = page;
  redrawIfChanged(name, page[name], PAGED[name].draw);
  renderPager(name, page);
}

function turnPage(name, go) {
  const page = lastPage[name];
  if (!page || page[go] === null) return;
  // A newer cursor past the newest item is the head page: follow the chain again from there.
  cursor[name] = go === "newer" && page.newer > page.latest ? null : page[go];
  loadPage(name).catch((err) => setLive(false, errorText(err)));
}

function errorText(err) {
  return String(err && err.message ? err.message : err);
}

function renderAccount(found) {
  const parts = [keyValues([["address", found.address], ["balance", `${found.balance} ${found.denom}`],
    ["sequence (txs signed)", found.sequence]])];
  const x = found.expert;
  if (!x) {
    parts.push(el("p", { class: "empty" }, "Not a registered expert."));
  } else {
    const scale = x.reputation_scale;
    parts.push(el("h3", {}, "Expert"), keyValues([["status", x.status], ["stake", `${x.stake} ${found.denom}`],
      ["endpoint", x.endpoint], ["base model", x.base_model], ["adapter sha256", x.adapter_sha256],
      ["answered", x.answered], ["earned", x.earned], ["slashed", x.slashed],
      ["open assignments", `${x.open_assignments} of ${x.capacity}`],
      ["scorer reputation", fraction(x.scorer_reputation, scale)],
      ...x.domains.map((d) => [`reputation in ${d.domain}`, fraction(d.reputation, scale)])]));
  }
  return el("article", { "data-kind": "account", "data-address": found.address }, ...parts);
}

function renderTx(found) {
  const result = found.code === 0 ? "ok" : `failed: ${found.codespace}/${found.code} ${found.log}`;
  const parts = [keyValues([["hash", found.hash], ["height", found.height], ["index in block", found.index],
    ["result", result], ["gas used / wanted", `${found.gas_used} / ${found.gas_wanted}`],
    ["signer", !found.decoded ? "(undecodable tx)" : found.signer ? searchLink(found.signer) : "–"],
    ["sequence", found.sequence ?? "–"],
    ["fee paid", found.fee_paid || "–"], ["fee offered", found.fee_offered ?? "–"], ["memo", found.memo || "–"]])];
  for (const m of found.messages) {
    parts.push(el("h3", {}, m.type),
      el("pre", {}, m.fields ? JSON.stringify(m.fields, null, 2) : "(a message type this node cannot decode)"));
  }
  return el("article", { "data-kind": "tx", "data-hash": found.hash }, ...parts);
}

const RESULTS = {
  account: renderAccount,
  tx: renderTx,
  query: (found) => el("div", { "data-kind": "query" }, renderQuery(found.query)),
};

let searches = 0; // only the latest search may draw: an earlier, slower answer is dropped
async function search(text) {
  const mine = ++searches;
  const box = document.getElementById("search-result");
  document.getElementById("search-section").hidden = false;
  box.replaceChildren(el("p", { class: "empty" }, `Searching for ${text}…`));
  let body;
  try {
    body = await getJSON(`/api/search?q=${encodeURIComponent(text)}`);
    body = RESULTS[body.kind](body);
  } catch (err) {
    body = el("p", { class: "error", "data-kind": "error" }, errorText(err));
  }
  if (mine === searches) box.replaceChildren(body);
}

async function refresh() {
  try {
    const [status, experts, reputation, validators] = await Promise.all([
      getJSON("/api/status"), getJSON("/api/experts"), getJSON("/api/reputation"), getJSON("/api/validators"),
      loadPage("blocks"), loadPage("queries")]);
    renderStatus(status);
    // Without its height, the set only redraws when it changes (not every block).
    const { height: _, ...set } = validators;
    redrawIfChanged("validators", set, renderValidators);
    redrawIfChanged("experts", experts, renderExperts);
    renderChart(reputation, experts, status.height);
    latest = { reputation, experts, height: status.height };
    setLive(true, "");
  } catch (err) {
    setLive(false, errorText(err));
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

let latest = null;
document.getElementById("chart-domain").addEventListener("change", (event) => {
  chosenDomain = event.target.value;
  if (latest) renderChart(latest.reputation, latest.experts, latest.height);
});
for (const nav of document.querySelectorAll(".pager")) {
  nav.addEventListener("click", (event) => {
    const go = event.target.closest("[data-go]");
    if (go) turnPage(nav.dataset.panel, go.dataset.go);
  });
}
document.getElementById("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = document.getElementById("search").value.trim();
  if (text) search(text);
});
document.getElementById("search-close").addEventListener("click", () => {
  searches++;
  document.getElementById("search-section").hidden = true;
});
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-search]");
  if (!link) return;
  event.preventDefault();
  document.getElementById("search").value = link.dataset.search;
  search(link.dataset.search);
  window.scrollTo({ top: 0 });
});
refresh();
