// The review page: send one file to /v1/scan and show the verdict. Plain DOM, no libraries;
// every value from the server is set as text, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "audioguard-token";

function headers() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${response.status} ${body.error.code}: ${body.error.message}`;
  } catch (_) { /* not JSON: fall through */ }
  return `${response.status} ${response.statusText}`;
}

async function loadPolicies() {
  const select = $("policy");
  try {
    const response = await fetch("v1/policies", { headers: headers() });
    if (!response.ok) return;
    const body = await response.json();
    select.replaceChildren();
    for (const policy of body.policies) {
      const option = document.createElement("option");
      option.value = policy.name;
      option.textContent = policy.name === body.default ? `${policy.name} (default)` : policy.name;
      option.selected = policy.name === body.default;
      select.append(option);
    }
  } catch (_) { /* the scan itself will report a network problem */ }
}

async function scan(file) {
  $("error").hidden = true;
  $("result").hidden = true;
  $("status").textContent = `Scanning ${file.name} (${(file.size / 1e6).toFixed(1)} MB)…`;
  const form = new FormData();
  form.append("file", file, file.name);
  if ($("policy").value) form.append("policy", $("policy").value);
  if ($("meta").value.trim()) form.append("meta", $("meta").value.trim());
  let response;
  try {
    response = await fetch("v1/scan", { method: "POST", headers: headers(), body: form });
  } catch (err) {
    $("status").textContent = "";
    showError(`The service could not be reached (${err.message}).`);
    return;
  }
  if (!response.ok) {
    $("status").textContent = "";
    showError(await errorText(response));
    return;
  }
  const verdict = await response.json();
  $("status").textContent = `Scanned ${file.name}.`;
  render(verdict, file);
}

function percent(p) {
  return p === null || p === undefined ? "no detector" : `${(100 * p).toFixed(1)} %`;
}

function render(v, file) {
  const decision = $("decision");
  decision.textContent = v.decision;
  decision.className = `badge ${v.decision}`;
  $("filename").textContent = v.path || file.name;
  $("rule").textContent = v.matched_rules.length ? v.matched_rules.join(", ") : "none (policy default)";
  $("message").textContent = v.message || "";
  $("probability").textContent = percent(v.synthetic_probability);
  $("duration").textContent = `${Number(v.duration).toFixed(2)} s`;
  $("policyname").textContent = v.policy ? `${v.policy.name} v${v.policy.version}` : "";
  $("model").textContent = v.model || "none";
  $("sha").textContent = v.sha256 || "";
  $("trace").textContent = JSON.stringify(v.trace || [], null, 2);
  const marks = $("watermarks");
  marks.replaceChildren();
  for (const w of v.watermarks || []) {
    const item = document.createElement("li");
    const who = w.key_id ? `${w.backend} (key ${w.key_id})` : w.backend;
    if (w.error) item.textContent = `${who}: not checked (${w.error})`;
    else if (w.detected) item.textContent = `${who}: DETECTED, p-value ${Number(w.p_value).toExponential(2)}` + (w.payload ? `, payload ${w.payload}` : "");
    else item.textContent = `${who}: not found`;
    marks.append(item);
  }
  if (!marks.children.length) marks.append(Object.assign(document.createElement("li"), { textContent: "no watermark checks configured" }));
  const player = $("player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(file);
  drawTimeline(v);
  $("result").hidden = false;
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, val] of Object.entries(attrs)) node.setAttribute(k, val);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Probability (0..1, up) against time (seconds, right): a band per segment and a line through
// the segment centres, with the policy's usual thresholds as dashed lines.
function drawTimeline(v) {
  const W = 900, H = 220, left = 40, right = 10, top = 10, bottom = 30;
  const width = W - left - right, height = H - top - bottom;
  const duration = Math.max(Number(v.duration) || 0, 1e-3);
  const x = (t) => left + (width * Math.min(Math.max(t, 0), duration)) / duration;
  const y = (p) => top + height * (1 - p);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "synthetic-voice probability along the clip", id: "timeline-svg" });
  for (const p of [0, 0.5, 0.9, 1]) {
    svg.append(el("line", { x1: left, x2: W - right, y1: y(p), y2: y(p), class: p === 0 ? "axis" : "grid" }));
    if (p < 1) svg.append(el("text", { x: left - 6, y: y(p) + 4, "text-anchor": "end" }, p.toFixed(1)));
  }
  const step = niceStep(duration);
  for (let t = 0; t <= duration + 1e-9; t += step) {
    svg.append(el("line", { x1: x(t), x2: x(t), y1: y(0), y2: y(0) + 4, class: "axis" }));
    svg.append(el("text", { x: x(t), y: H - 10, "text-anchor": "middle" }, `${+t.toFixed(2)} s`));
  }
  const segments = v.segments || [];
  if (!segments.length) {
    svg.append(el("text", { x: left + width / 2, y: top + height / 2, "text-anchor": "middle" },
      v.synthetic_probability === null ? "no detector scores (the service runs without the detector)" : "no segment scores"));
  }
  const points = [];
  for (const s of segments) {
    const band = el("rect", { x: x(s.start), y: y(s.synthetic_probability), width: Math.max(x(s.end) - x(s.start), 1), height: y(0) - y(s.synthetic_probability), class: "segment" });
    band.append(el("title", {}, `${s.start.toFixed(2)}–${s.end.toFixed(2)} s: ${percent(s.synthetic_probability)}`));
    svg.append(band);
    points.push(`${x((s.start + s.end) / 2)},${y(s.synthetic_probability)}`);
  }
  if (points.length > 1) svg.append(el("polyline", { points: points.join(" "), class: "curve" }));
  const playhead = el("line", { x1: x(0), x2: x(0), y1: top, y2: y(0), class: "playhead" });
  svg.append(playhead);
  const player = $("player");
  player.ontimeupdate = () => { playhead.setAttribute("x1", x(player.currentTime)); playhead.setAttribute("x2", x(player.currentTime)); };
  svg.addEventListener("click", (event) => {
    const box = svg.getBoundingClientRect();
    const seconds = ((event.clientX - box.left) / box.width * W - left) / width * duration;
    if (seconds >= 0 && seconds <= duration) player.currentTime = seconds;
  });
  $("timeline").replaceChildren(svg);
}

function niceStep(duration) {
  const raw = duration / 8;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
}

function setup() {
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("token").addEventListener("change", () => {
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    loadPolicies();
  });
  $("file").addEventListener("change", () => { if ($("file").files.length) scan($("file").files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) scan(e.dataTransfer.files[0]);
  });
  loadPolicies();
}

setup();
