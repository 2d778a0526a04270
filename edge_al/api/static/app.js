/* edge-al annotation page. Plain JS, no build step, no external resources.
 *
 * State lives in three places:
 *   - localStorage: the annotator key and name, and the OUTBOX of decisions not yet acknowledged
 *     by the server (so a reload, a dead network or an expired key loses nothing);
 *   - memory: the current item, a BUFFER of prefetched queue items (images already downloaded as
 *     blob URLs, since <img> cannot send an Authorization header), and the HISTORY of decisions
 *     made in this tab (for undo);
 *   - the server: leases keep other annotators off the items this page holds.
 *
 * API used (docs/api-contract.md): GET /v1/queue, GET /v1/samples/{id}/image, POST /v1/annotations,
 * POST /v1/annotations/undo, GET /v1/stats, GET /v1/labels/examples (thumbnails of labeled samples of
 * the guessed class). Every call sends "Authorization: Bearer <key>".
 */
(function () {
  "use strict";

  var LS_KEY = "edge-al.key";
  var LS_NAME = "edge-al.annotator";
  var LS_OUTBOX = "edge-al.outbox";
  var BUFFER_TARGET = 5;      // items kept ready beyond the current one
  var BUFFER_LOW = 3;         // refill when fewer than this are ready
  var STATS_EVERY_MS = 5000;
  var HISTORY_MAX = 50;
  var RECENT_SHOWN = 6;
  var BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];

  var cfg = { key: localStorage.getItem(LS_KEY) || "", name: localStorage.getItem(LS_NAME) || "" };
  var labels = [];             // class names, in the order the number keys use
  var current = null;          // the item on screen: {sample_id, predicted, confidence, probs, blobUrl, ...}
  var buffer = [];             // prefetched items, next first
  var history = [];            // [{item, action, label, opId, at}] newest last
  var outbox = loadOutbox();   // [{id, kind: "annotate"|"undo", body, tries}]
  var refilling = false;
  var queueEmpty = false;
  var authFailed = false;
  var serviceDown = false;
  var modelVersion = null;     // active version as last seen in /v1/stats
  var generation = 0;          // bumps when the buffer is dropped, so late refills are discarded
  var sending = false;
  var inFlight = null;         // the outbox ops being sent right now
  var retryTimer = null;
  var retryAt = 0;
  var statsTimer = null;
  var emptyTimer = null;
  var lastOutboxError = "";
  var refused = [];            // decisions the server refused for good (422): shown, not retried

  var $ = function (id) { return document.getElementById(id); };

  // ---------------------------------------------------------------- HTTP
  function ApiError(status, detail, kind) {
    this.status = status; this.detail = detail; this.kind = kind;
  }

  function api(method, path, body, opts) {
    var headers = { "Authorization": "Bearer " + cfg.key, "Accept": "application/json" };
    var init = { method: method, headers: headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (res) {
      if (opts && opts.raw && res.ok) { return res; }
      var ctype = res.headers.get("Content-Type") || "";
      var parsed = ctype.indexOf("json") >= 0 ? res.json().catch(function () { return null; }) : Promise.resolve(null);
      return parsed.then(function (doc) {
        if (res.ok) { return doc; }
        var detail = (doc && (doc.detail || doc.title)) || res.statusText || ("HTTP " + res.status);
        var err = new ApiError(res.status, detail, res.status === 401 || res.status === 403 ? "auth" : "http");
        err.doc = doc;
        throw err;
      });
    }, function (netErr) {
      throw new ApiError(0, "The service cannot be reached (" + (netErr && netErr.message || "network error") + ").", "network");
    }).then(function (doc) {
      if (serviceDown) {
        serviceDown = false; renderBanner();
        if (outbox.length && !sending) { setTimeout(flush, 0); }  // back: send now, not at the next backoff
      }
      return doc;
    }, function (err) {
      if (err.kind === "network") { serviceDown = true; renderBanner(); }
      else if (err.kind === "auth") { onAuthFailure(err); }
      else if (err.status >= 500 || err.status === 0) { serviceDown = true; renderBanner(); }
      throw err;
    });
  }

  function onAuthFailure(err) {
    if (!authFailed) {
      authFailed = true;
      authDetail = err.status === 403
        ? "Your key was accepted but does not allow annotating (403: " + err.detail + ")."
        : "Your key was refused (401: " + err.detail + "). It may have expired or been revoked.";
    }
    renderBanner();
  }
  var authDetail = "";

  // ---------------------------------------------------------------- banner and notices
  function renderBanner() {
    var banner = $("banner"), text = $("banner-text"), action = $("banner-action");
    if (authFailed) {
      banner.hidden = false; banner.dataset.kind = "auth";
      text.textContent = authDetail + " Nothing you did is lost: decisions wait in this browser until a valid key is entered.";
      action.hidden = false; action.textContent = "Enter a new key";
      action.onclick = function () { openLogin(); };
    } else if (serviceDown) {
      banner.hidden = false; banner.dataset.kind = "down";
      text.textContent = "The annotation service is not responding. Retrying in the background; your decisions are kept in this browser.";
      action.hidden = true;
    } else {
      banner.hidden = true;
    }
  }

  var noticeTimer = null;
  function notice(msg, kind, ms) {
    var n = $("notice");
    $("notice-text").textContent = msg;
    n.dataset.kind = kind || "info";
    n.hidden = false;
    clearTimeout(noticeTimer);
    if (ms) { noticeTimer = setTimeout(function () { n.hidden = true; }, ms); }
  }

  function say(msg) { $("sr-status").textContent = msg; }

  // ---------------------------------------------------------------- login
  function openLogin(errorText) {
    var dlg = $("login");
    $("login-name").value = cfg.name;
    $("login-key").value = "";
    var e = $("login-error");
    e.hidden = !errorText; e.textContent = errorText || "";
    if (!dlg.open) { dlg.showModal(); }
    (cfg.name ? $("login-key") : $("login-name")).focus();
  }

  function submitLogin(ev) {
    ev.preventDefault();
    var name = $("login-name").value.trim();
    var key = $("login-key").value.trim();
    var e = $("login-error");
    if (!name) { e.hidden = false; e.textContent = "Please enter your name: it is stored with each decision."; $("login-name").focus(); return; }
    if (!key && !cfg.key) { e.hidden = false; e.textContent = "Please enter your annotator key."; $("login-key").focus(); return; }
    var oldKey = cfg.key;
    if (key) { cfg.key = key; }
    $("login-submit").disabled = true;
    e.hidden = true;
    fetch("/v1/stats", { headers: { "Authorization": "Bearer " + cfg.key, "Accept": "application/json" }, cache: "no-store" })
      .then(function (res) {
        if (res.status === 401) { throw new Error("This key was not accepted (401). Check it with your administrator."); }
        if (res.status === 403) { throw new Error("This key is valid but does not have the annotator role (403)."); }
        if (!res.ok) { throw new Error("The service answered " + res.status + "; try again in a moment."); }
        return res.json();
      })
      .then(function (stats) {
        var nameChanged = name !== cfg.name;
        cfg.name = name;
        localStorage.setItem(LS_KEY, cfg.key);
        localStorage.setItem(LS_NAME, cfg.name);
        authFailed = false; renderBanner();
        $("login").close();
        $("who-name").textContent = cfg.name;
        if (nameChanged) { dropBuffer(); }
        applyStats(stats);
        start();
      }, function (err) {
        cfg.key = oldKey;
        e.hidden = false;
        e.textContent = err instanceof TypeError ? "The service cannot be reached. Check the network and try again." : err.message;
        $("login-key").focus();
      })
      .then(function () { $("login-submit").disabled = false; });
  }

  // ---------------------------------------------------------------- stats and chart
  function pollStats() {
    clearTimeout(statsTimer);
    if (!cfg.key || authFailed) { statsTimer = setTimeout(pollStats, STATS_EVERY_MS); return; }
    api("GET", "/v1/stats").then(applyStats, function () { /* shown by the banner */ })
      .then(function () { statsTimer = setTimeout(pollStats, STATS_EVERY_MS); });
  }

  function activeVersion(stats) {
    if (stats.active_model && stats.active_model.version) { return String(stats.active_model.version); }
    var models = stats.models || [];
    for (var i = 0; i < models.length; i++) { if (models[i].active) { return String(models[i].version); } }
    return null;
  }

  function applyStats(stats) {
    if (!stats) { return; }
    $("stat-labeled").textContent = fmtInt(stats.labeled);
    updateRetrain(stats.annotations_since_model, stats.retrain_after, stats.retrain_job);
    var v = activeVersion(stats);
    $("stat-model").textContent = v || "none";
    if (v && modelVersion && v !== modelVersion) {
      notice("Model " + v + " is live — the queue now follows its ranking.", "success", 15000);
      say("Model " + v + " is live.");
      dropBuffer();
      fillBuffer();
    }
    if (v && !modelVersion && queueEmpty) { fillBuffer(); }
    modelVersion = v || modelVersion;
    drawChart(stats.models || []);
  }

  function updateRetrain(since, after, job) {
    var el = $("stat-retrain");
    if (job && (job.state === "running" || job.state === "queued")) {
      var pct = typeof job.progress === "number" ? " " + Math.round(job.progress * 100) + "%" : "";
      el.textContent = job.state === "running" ? "retraining" + pct : "retrain queued";
      el.dataset.state = "busy";
      return;
    }
    el.dataset.state = "";
    if (typeof since !== "number" || typeof after !== "number") { el.textContent = "–"; return; }
    var left = Math.max(0, after - since);
    el.textContent = left === 0 ? "due now" : left + (left === 1 ? " label" : " labels");
  }

  var SVGNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, parent) {
    var el = document.createElementNS(SVGNS, tag);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) { el.setAttribute(k, attrs[k]); } }
    if (parent) { parent.appendChild(el); }
    return el;
  }

  function drawChart(models) {
    var chart = $("chart");
    // The curve joins the promoted versions; a version that was trained but kept out (not promoted, or
    // rolled back) is a hollow mark off the curve, so it does not read as the deployment's accuracy.
    var all = [];
    models.forEach(function (m) {
      var ba = m.metrics && typeof m.metrics.balanced_accuracy === "number" ? m.metrics.balanced_accuracy : null;
      if (ba !== null && typeof m.num_train_labels === "number") {
        var rough = m.validation && m.validation.trusted === false ? m.validation.note : "";
        all.push({ x: m.num_train_labels, y: ba, v: String(m.version), active: !!m.active, promoted: m.promoted !== false || !!m.active, rough: rough });
      }
    });
    all.sort(function (a, b) { return a.x - b.x; });
    var pts = all.filter(function (p) { return p.promoted; });
    var kept = all.filter(function (p) { return !p.promoted; });
    while (chart.firstChild) { chart.removeChild(chart.firstChild); }
    var W = 200, H = 48, L = 24, R = 6, T = 6, B = 12;
    var title = svg("title", { id: "chart-title" }, chart);
    if (!pts.length) {
      title.textContent = "No promoted model with a balanced accuracy yet";
      var t = svg("text", { x: W / 2, y: H / 2 + 3, "text-anchor": "middle", "class": "chart-empty" }, chart);
      t.textContent = "no metrics yet";
      return;
    }
    title.textContent = "Balanced accuracy vs number of labels, promoted models: " + pts.map(function (p) {
      return p.v + " " + Math.round(p.y * 100) + "% at " + p.x + " labels" + (p.rough ? " (rough: few validation images)" : "");
    }).join("; ") + (kept.length ? ". Not promoted: " + kept.map(function (p) { return p.v; }).join(", ") : "");
    var xmin = all[0].x, xmax = all[all.length - 1].x;
    if (xmax === xmin) { xmin -= 1; xmax += 1; }
    var ymin = Math.min.apply(null, all.map(function (p) { return p.y; }));
    var ymax = Math.max.apply(null, all.map(function (p) { return p.y; }));
    ymin = Math.max(0, Math.floor(ymin * 10) / 10 - 0.05);
    ymax = Math.min(1, Math.ceil(ymax * 10) / 10);
    if (ymax - ymin < 0.1) { ymin = Math.max(0, ymax - 0.1); }
    var sx = function (x) { return L + (x - xmin) / (xmax - xmin) * (W - L - R); };
    var sy = function (y) { return T + (1 - (y - ymin) / (ymax - ymin)) * (H - T - B); };
    svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, "class": "chart-axis" }, chart);
    svg("line", { x1: L, y1: T, x2: L, y2: H - B, "class": "chart-axis" }, chart);
    svg("text", { x: L - 3, y: T + 4, "text-anchor": "end", "class": "chart-tick" }, chart).textContent = Math.round(ymax * 100) + "%";
    svg("text", { x: L - 3, y: H - B + 1, "text-anchor": "end", "class": "chart-tick" }, chart).textContent = Math.round(ymin * 100) + "%";
    svg("text", { x: L, y: H - 2, "text-anchor": "start", "class": "chart-tick" }, chart).textContent = String(all[0].x);
    svg("text", { x: W - R, y: H - 2, "text-anchor": "end", "class": "chart-tick" }, chart).textContent = all[all.length - 1].x + " labels";
    if (pts.length > 1) {
      var area = "M" + sx(pts[0].x) + "," + (H - B);
      var line = "";
      pts.forEach(function (p, i) { line += (i ? "L" : "M") + sx(p.x).toFixed(1) + "," + sy(p.y).toFixed(1); area += "L" + sx(p.x).toFixed(1) + "," + sy(p.y).toFixed(1); });
      area += "L" + sx(pts[pts.length - 1].x) + "," + (H - B) + "Z";
      svg("path", { d: area, "class": "chart-area" }, chart);
      svg("path", { d: line, "class": "chart-line" }, chart);
    }
    pts.forEach(function (p) {
      var c = svg("circle", { cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: p.active ? 3.5 : 2.2, "class": p.active ? "chart-dot active" : "chart-dot",
        "data-version": p.v }, chart);
      svg("title", {}, c).textContent = p.v + ": " + (p.y * 100).toFixed(1) + "% balanced accuracy with " + p.x + " labels" +
        (p.rough ? " — rough: " + p.rough : "");
    });
    kept.forEach(function (p) {
      var c = svg("circle", { cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: 2.2, "class": "chart-dot kept", "data-version": p.v }, chart);
      svg("title", {}, c).textContent = p.v + " (not promoted): " + (p.y * 100).toFixed(1) + "% balanced accuracy with " + p.x + " labels";
    });
  }

  // ---------------------------------------------------------------- queue and prefetch
  function heldIds() {
    var ids = {};
    if (current) { ids[current.sample_id] = true; }
    buffer.forEach(function (it) { ids[it.sample_id] = true; });
    outbox.forEach(function (op) { if (op.kind === "annotate") { ids[op.body.sample_id] = true; } });
    history.forEach(function (h) { if (!h.undone) { ids[h.item.sample_id] = true; } });
    return ids;
  }

  function leaseExpired(it) {
    var t = it.lease_expires_at;
    if (t === undefined || t === null) { return false; }
    var ms = typeof t === "number" ? (t < 1e12 ? t * 1000 : t) : Date.parse(t);
    return isFinite(ms) && ms < Date.now() + 5000;
  }

  function fillBuffer() {
    if (refilling || !cfg.key || authFailed) { return; }
    buffer = buffer.filter(function (it) { if (leaseExpired(it)) { release(it); return false; } return true; });
    if (buffer.length >= BUFFER_LOW && current) { return; }
    refilling = true;
    var gen = generation;
    var held = heldIds();
    var want = BUFFER_TARGET + 1 - buffer.length - (current ? 1 : 0);
    // The server hands our own leased, undecided samples back first (and renews their leases):
    // ask for those plus `want` new ones, no more, so no extra samples are kept from other annotators.
    var ours = buffer.length + (current ? 1 : 0) + outbox.filter(function (o) { return o.kind === "annotate"; }).length;
    var n = Math.max(1, Math.min(100, want + ours));
    var url = "/v1/queue?n=" + n + "&strategy=hybrid&annotator=" + encodeURIComponent(cfg.name);
    api("GET", url).then(function (doc) {
      if (doc.labels && doc.labels.length) { setLabels(doc.labels); }
      // Decisions are recorded under the key's annotator (the server's holder), not the typed name.
      if (doc.holder && doc.holder !== $("who-name").textContent) {
        $("who-name").textContent = doc.holder;
        $("who-name").title = "Annotator: decisions are recorded under your key's name";
      }
      var fresh = (doc.items || []).filter(function (it) { return !held[it.sample_id]; }).slice(0, Math.max(0, want));
      if (gen !== generation) { return null; }
      queueEmpty = fresh.length === 0 && !current && buffer.length === 0;
      return Promise.all(fresh.map(loadImage)).then(function (items) {
        if (gen !== generation) { items.forEach(release); return; }
        items.forEach(function (it) { if (it) { buffer.push(it); } });
        if (!current) { advance(); }
        render();
      });
    }, function (err) {
      if (err.status === 503 && /no-active-model$/.test((err.doc && err.doc.type) || "")) { $("stage-empty-text").textContent = "No model is active yet. The queue appears as soon as one is."; }
      else if (err.kind !== "auth" && err.kind !== "network") { notice("Could not load the queue: " + err.detail, "error", 10000); }
    }).then(function () {
      refilling = false;
      render();
      clearTimeout(emptyTimer);
      if (!current || buffer.length < BUFFER_LOW) {
        // Empty queue, an error, or leases held elsewhere: look again shortly.
        emptyTimer = setTimeout(fillBuffer, current ? 2500 : 4000);
      }
    });
  }

  function loadImage(it) {
    var url = it.image_url || ("/v1/samples/" + it.sample_id + "/image");
    return api("GET", url, undefined, { raw: true }).then(function (res) { return res.blob(); }).then(function (blob) {
      it.blobUrl = URL.createObjectURL(blob);
      var img = new Image();
      img.src = it.blobUrl;
      return (img.decode ? img.decode() : Promise.resolve()).then(function () {
        it.naturalWidth = img.naturalWidth; it.naturalHeight = img.naturalHeight;
        return it;
      }, function () { it.broken = true; return it; });
    }, function (err) {
      if (err.status === 404) {
        notice("Sample " + it.sample_id + " is gone from the pool (404); skipped.", "warn", 8000);
      } else if (err.kind !== "auth" && err.kind !== "network") {
        notice("Could not load the image of sample " + it.sample_id + ": " + err.detail, "warn", 8000);
      }
      return null;
    });
  }

  function release(it) {
    if (it && it.blobUrl) { URL.revokeObjectURL(it.blobUrl); it.blobUrl = null; }
  }

  function dropBuffer() {
    generation++;
    buffer.forEach(release);
    buffer = [];
    refilling = false;
  }

  function advance() {
    current = buffer.shift() || null;
    render();
    if (buffer.length < BUFFER_LOW) { fillBuffer(); }
  }

  function setLabels(list) {
    var same = list.length === labels.length && list.every(function (l, i) { return l === labels[i]; });
    if (same) { return; }
    labels = list.slice();
    var box = $("classes");
    while (box.firstChild) { box.removeChild(box.firstChild); }
    labels.forEach(function (name, i) {
      var b = document.createElement("button");
      b.type = "button"; b.className = "btn btn-class"; b.dataset.label = name;
      var key = i < 9 ? String(i + 1) : (i === 9 ? "0" : "");
      var k = document.createElement("kbd"); k.textContent = key || "·"; if (!key) { k.className = "nokey"; }
      var s = document.createElement("span"); s.className = "name"; s.textContent = name; b.title = name;
      var p = document.createElement("span"); p.className = "prob";
      var bar = document.createElement("span"); bar.className = "bar"; bar.setAttribute("aria-hidden", "true");
      b.appendChild(k); b.appendChild(s); b.appendChild(p); b.appendChild(bar);
      b.addEventListener("click", function () { decide("correct", name); });
      box.appendChild(b);
    });
    render();
  }

  // ---------------------------------------------------------------- zoom and pan
  // Defects can be a few pixels wide: the image zooms (wheel, +/-) around the pointer or the centre and
  // pans (drag, arrows) while zoomed; every new image starts unzoomed.
  var ZOOM_MAX = 16, ZOOM_STEP = 1.25, PAN_STEP = 0.1;
  var zoom = { s: 1, x: 0, y: 0, sample: null };
  var drag = null;

  function clampPan() {
    var img = $("image");
    var mx = (zoom.s - 1) * img.offsetWidth / 2, my = (zoom.s - 1) * img.offsetHeight / 2;
    zoom.x = Math.max(-mx, Math.min(mx, zoom.x));
    zoom.y = Math.max(-my, Math.min(my, zoom.y));
  }

  function applyZoom() {
    clampPan();
    $("image").style.transform = zoom.s === 1 ? "" : "translate(" + zoom.x.toFixed(1) + "px, " + zoom.y.toFixed(1) + "px) scale(" + zoom.s.toFixed(3) + ")";
    $("stage-frame").classList.toggle("zoomed", zoom.s > 1);
    $("zoom-level").textContent = Math.round(zoom.s * 100) + "%";
  }

  // Zoom by `factor` keeping the image point under (clientX, clientY) in place (the centre without a point).
  function zoomBy(factor, clientX, clientY) {
    var img = $("image");
    if (img.hidden) { return; }
    var s2 = Math.max(1, Math.min(ZOOM_MAX, zoom.s * factor));
    var r = img.getBoundingClientRect();
    var cx = r.left + r.width / 2 - zoom.x, cy = r.top + r.height / 2 - zoom.y;   // the untransformed centre
    var px = clientX === undefined ? cx : clientX, py = clientY === undefined ? cy : clientY;
    var dx = px - cx, dy = py - cy;
    zoom.x = dx - (s2 / zoom.s) * (dx - zoom.x);
    zoom.y = dy - (s2 / zoom.s) * (dy - zoom.y);
    zoom.s = s2;
    if (s2 === 1) { zoom.x = 0; zoom.y = 0; }
    applyZoom();
  }

  function panBy(fx, fy) {
    var img = $("image");
    zoom.x += fx * img.offsetWidth * zoom.s;
    zoom.y += fy * img.offsetHeight * zoom.s;
    applyZoom();
  }

  function resetZoom() { zoom.s = 1; zoom.x = 0; zoom.y = 0; applyZoom(); }

  function initZoom() {
    var frame = $("stage-frame");
    frame.addEventListener("wheel", function (ev) {
      if ($("image").hidden) { return; }
      ev.preventDefault();
      zoomBy(ev.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, ev.clientX, ev.clientY);
    }, { passive: false });
    frame.addEventListener("pointerdown", function (ev) {
      if (zoom.s <= 1 || ev.button !== 0) { return; }
      drag = { id: ev.pointerId, x: ev.clientX, y: ev.clientY };
      frame.setPointerCapture(ev.pointerId);
      frame.classList.add("dragging");
      ev.preventDefault();
    });
    frame.addEventListener("pointermove", function (ev) {
      if (!drag || ev.pointerId !== drag.id) { return; }
      zoom.x += ev.clientX - drag.x; zoom.y += ev.clientY - drag.y;
      drag.x = ev.clientX; drag.y = ev.clientY;
      applyZoom();
    });
    var end = function (ev) {
      if (!drag || ev.pointerId !== drag.id) { return; }
      drag = null; frame.classList.remove("dragging");
    };
    frame.addEventListener("pointerup", end);
    frame.addEventListener("pointercancel", end);
    frame.addEventListener("dblclick", resetZoom);
  }

  // Keys of the zoom; true when the key was one. "0" resets only while zoomed in (otherwise it is the tenth class).
  function zoomKey(k) {
    if (!current) { return false; }
    if (k === "+" || k === "=") { zoomBy(ZOOM_STEP); return true; }
    if (k === "-" || k === "_") { zoomBy(1 / ZOOM_STEP); return true; }
    if (k === "r" || k === "R" || (k === "0" && zoom.s > 1)) { resetZoom(); return true; }
    var arrows = { ArrowLeft: [PAN_STEP, 0], ArrowRight: [-PAN_STEP, 0], ArrowUp: [0, PAN_STEP], ArrowDown: [0, -PAN_STEP] };
    if (arrows[k] && zoom.s > 1) { panBy(arrows[k][0], arrows[k][1]); return true; }
    return false;
  }

  // ---------------------------------------------------------------- labeled examples of the guess
  var EXAMPLES_N = 6, EXAMPLES_TTL_MS = 60000;
  var examples = {};           // label -> {at, items: [{sample_id, blobUrl}], loading}
  var examplesShown = null;    // the label whose examples are on screen

  function loadExamples(label) {
    var e = examples[label];
    if (e && (e.loading || Date.now() - e.at < EXAMPLES_TTL_MS)) { return; }
    var old = e && e.items;
    examples[label] = { at: Date.now(), items: old || [], loading: true };
    api("GET", "/v1/labels/examples?n=" + EXAMPLES_N + "&label=" + encodeURIComponent(label)).then(function (doc) {
      return Promise.all((doc.items || []).map(function (it) {
        return api("GET", it.image_url + "?size=128", undefined, { raw: true }).then(function (res) { return res.blob(); })
          .then(function (blob) { return { sample_id: it.sample_id, blobUrl: URL.createObjectURL(blob) }; }, function () { return null; });
      }));
    }).then(function (items) {
      (old || []).forEach(release);
      examples[label] = { at: Date.now(), items: items.filter(Boolean), loading: false };
      if (current && current.predicted === label) { examplesShown = null; renderExamples(); }
    }, function () { examples[label].loading = false; examples[label].at = 0; });
  }

  function renderExamples() {
    var label = current && current.predicted;
    var strip = $("examples-strip"), none = $("examples-none");
    $("examples").hidden = !label;
    if (!label || examplesShown === label) { if (label) { loadExamples(label); } return; }
    var e = examples[label];
    if (!e) { loadExamples(label); e = examples[label]; }
    while (strip.firstChild) { strip.removeChild(strip.firstChild); }
    var heading = $("examples-heading");
    heading.textContent = "Labeled examples of ";
    var cls = document.createElement("span"); cls.className = "cls-name"; cls.textContent = label;  // as spelled, not upper-cased
    heading.appendChild(cls);
    e.items.forEach(function (it) {
      var img = document.createElement("img");
      img.src = it.blobUrl; img.alt = "Labeled " + label + ", sample " + it.sample_id; img.title = label + " · sample #" + it.sample_id;
      img.dataset.sampleId = String(it.sample_id);
      strip.appendChild(img);
    });
    none.hidden = e.items.length > 0 || e.loading;
    none.textContent = "No labeled " + label + " yet: this one will be the first.";
    if (!e.loading) { examplesShown = label; }
  }

  // ---------------------------------------------------------------- decisions and undo
  function decide(action, label) {
    if (!current) { return; }
    var it = current;
    if (action === "accept") { label = it.predicted; }
    if (action === "correct" && label === it.predicted) { action = "accept"; }
    var body = { sample_id: it.sample_id, action: action, annotator: cfg.name };
    if (action !== "reject") { body.label = label; }
    var op = enqueue("annotate", body);
    history.push({ item: it, action: action, label: action === "reject" ? null : label, opId: op.id, at: Date.now() });
    while (history.length > HISTORY_MAX) { release(history.shift().item); }
    say((action === "reject" ? "Rejected" : (action === "accept" ? "Accepted " : "Corrected to ") + label) + ", sample " + it.sample_id + ".");
    advance();
    focusStage();
    flush();
  }

  function undo() {
    var h = null;
    for (var i = history.length - 1; i >= 0; i--) { if (!history[i].undone) { h = history[i]; break; } }
    if (!h) { notice("Nothing to undo.", "info", 3000); return; }
    h.undone = true;
    var idx = indexOfOp(h.opId);
    var inflight = inFlight && inFlight.some(function (o) { return o.id === h.opId; });
    if (idx >= 0 && !inflight) {
      outbox.splice(idx, 1); saveOutbox();     // never reached the server: just forget it
    } else {
      enqueue("undo", { sample_id: h.item.sample_id, annotator: cfg.name });
    }
    history.splice(history.indexOf(h), 1);
    if (current) { buffer.unshift(current); }
    current = h.item;
    say("Undone. Sample " + current.sample_id + " is back.");
    render();
    focusStage();
    flush();
  }

  // ---------------------------------------------------------------- outbox
  function loadOutbox() {
    try { var v = JSON.parse(localStorage.getItem(LS_OUTBOX) || "[]"); return Array.isArray(v) ? v : []; }
    catch (e) { return []; }
  }
  function saveOutbox() {
    try { localStorage.setItem(LS_OUTBOX, JSON.stringify(outbox)); } catch (e) { /* quota: kept in memory */ }
    renderOutbox();
  }
  var opSeq = 0;
  function enqueue(kind, body) {
    var op = { id: Date.now().toString(36) + "-" + (opSeq++), kind: kind, body: body, tries: 0 };
    outbox.push(op); saveOutbox();
    return op;
  }
  function indexOfOp(id) {
    for (var i = 0; i < outbox.length; i++) { if (outbox[i].id === id) { return i; } }
    return -1;
  }
  function removeOps(ops) {
    var ids = {}; ops.forEach(function (o) { ids[o.id] = true; });
    outbox = outbox.filter(function (o) { return !ids[o.id]; });
    saveOutbox();
  }

  // Sends the outbox in order: a run of annotations in one request, an undo on its own.
  function flush() {
    if (sending || !outbox.length || !cfg.key || authFailed) { renderOutbox(); return; }
    clearTimeout(retryTimer); retryAt = 0;
    sending = true;
    var batch = [];
    if (outbox[0].kind === "undo") { batch = [outbox[0]]; }
    else { for (var i = 0; i < outbox.length && outbox[i].kind === "annotate" && batch.length < 100; i++) { batch.push(outbox[i]); } }
    inFlight = batch;
    renderOutbox();
    var req = batch[0].kind === "undo"
      ? api("POST", "/v1/annotations/undo", batch[0].body)
      : api("POST", "/v1/annotations", { annotations: batch.map(function (o) { return o.body; }) });
    req.then(function (doc) {
      removeOps(batch);
      lastOutboxError = "";
      if (doc && typeof doc.annotations_since_model === "number") { updateRetrain(doc.annotations_since_model, doc.retrain_after, doc.retrain_job); }
      return true;
    }, function (err) {
      if (err.status === 422 && batch[0].kind === "annotate") {
        // Valid items were committed; the listed ones are refused for good (unknown label or sample).
        var bad = {};
        ((err.doc && err.doc.errors) || []).forEach(function (e) { if (typeof e.index === "number") { bad[e.index] = e.detail || err.detail; } });
        if (!Object.keys(bad).length) { batch.forEach(function (o, i) { bad[i] = err.detail; }); }
        batch.forEach(function (o, i) { if (bad[i] !== undefined) { refused.push({ op: o, detail: bad[i] }); markRefused(o, bad[i]); } });
        removeOps(batch);
        notice("The server refused " + Object.keys(bad).length + " decision(s): " + bad[Object.keys(bad)[0]], "error", 15000);
        return true;
      }
      if (err.status === 404 && batch[0].kind === "undo") { removeOps(batch); return true; }
      if (err.status === 409 || err.status === 422 || err.status === 400 || err.status === 404) {
        batch.forEach(function (o) { refused.push({ op: o, detail: err.detail }); markRefused(o, err.detail); });
        removeOps(batch);
        notice("The server refused a decision: " + err.detail, "error", 15000);
        return true;
      }
      batch.forEach(function (o) { o.tries = (o.tries || 0) + 1; });
      saveOutbox();
      lastOutboxError = err.kind === "auth" ? "waiting for a valid key" : (err.kind === "network" ? "service unreachable" : err.detail);
      if (err.kind !== "auth") {
        var delay = BACKOFF_MS[Math.min(BACKOFF_MS.length - 1, batch[0].tries - 1)];
        retryAt = Date.now() + delay;
        retryTimer = setTimeout(flush, delay);
      }
      return false;
    }).then(function (progressed) {
      sending = false; inFlight = null;
      renderOutbox(); renderRecent();
      if (progressed && outbox.length) { flush(); }
    });
  }

  function markRefused(op, detail) {
    history.forEach(function (h) { if (h.opId === op.id) { h.refused = detail; } });
  }

  function renderOutbox() {
    var box = $("outbox"), text = $("outbox-text"), retry = $("btn-retry");
    var n = outbox.filter(function (o) { return o.kind === "annotate"; }).length;
    var u = outbox.length - n;
    if (!outbox.length) {
      box.dataset.state = "ok";
      text.textContent = refused.length ? refused.length + " decision(s) refused by the server — see Recent" : "All decisions saved";
      if (refused.length) { box.dataset.state = "error"; }
      retry.hidden = true;
    } else {
      var what = (n ? n + (n === 1 ? " decision" : " decisions") : "") + (n && u ? " and " : "") + (u ? u + (u === 1 ? " undo" : " undos") : "");
      var tries = outbox[0].tries || 0;
      if (sending && tries === 0) {
        box.dataset.state = "sending";
        text.textContent = "Saving " + what + "…";
        retry.hidden = true;
      } else {
        box.dataset.state = "pending";
        var wait = retryAt ? Math.max(0, Math.ceil((retryAt - Date.now()) / 1000)) : 0;
        text.textContent = what + " not yet saved — " + (authFailed ? "waiting for a valid key" : (wait ? "retrying in " + wait + " s" : "retrying")) +
          (lastOutboxError && !authFailed && !serviceDown ? " (" + lastOutboxError + ")" : "");
        retry.hidden = authFailed || sending;
      }
    }
    renderRecent();
  }

  // ---------------------------------------------------------------- rendering
  function fmtInt(v) { return typeof v === "number" ? v.toLocaleString("en-US") : "–"; }
  function pct(v) { return typeof v === "number" ? Math.round(v * 100) + "%" : ""; }

  function render() {
    var img = $("image"), empty = $("stage-empty");
    var has = !!current;
    ["btn-accept", "btn-reject"].forEach(function (id) { $(id).disabled = !has; });
    Array.prototype.forEach.call($("classes").children, function (b) { b.disabled = !has; });
    $("btn-undo").disabled = !history.some(function (h) { return !h.undone; });
    if (has) {
      if (img.getAttribute("src") !== current.blobUrl) { img.src = current.blobUrl; }
      img.alt = "Sample " + current.sample_id + ", predicted " + current.predicted;
      img.hidden = false; empty.hidden = true;
      var small = (current.naturalWidth || 999) < 160 && (current.naturalHeight || 999) < 160;
      img.classList.toggle("pixelated", small);
      $("guess-label").textContent = current.predicted || "–";
      $("guess-conf").textContent = pct(current.confidence);
      $("guess-meter").style.width = (typeof current.confidence === "number" ? current.confidence * 100 : 0) + "%";
      $("guess-meter").dataset.level = current.confidence >= 0.8 ? "high" : (current.confidence >= 0.5 ? "mid" : "low");
      $("sample-id").textContent = "Sample #" + current.sample_id + (current.naturalWidth ? " · " + current.naturalWidth + "×" + current.naturalHeight + " px" : "");
      if (zoom.sample !== current.sample_id) { zoom.sample = current.sample_id; resetZoom(); }
      var reason = current.reason && current.reason.text;
      $("guess-reason").hidden = !reason;
      $("guess-reason-text").textContent = reason || "";
      $("guess-reason").dataset.code = (current.reason && current.reason.code) || "";
      var acc = $("btn-accept");
      acc.querySelector("span").textContent = "Accept " + (current.predicted || "guess");
      acc.setAttribute("aria-label", "Accept the model's guess, " + current.predicted + " (Enter)");
    } else {
      img.hidden = true; img.removeAttribute("src"); empty.hidden = false;
      if (!refilling || queueEmpty) {
        $("stage-empty-text").textContent = queueEmpty
          ? "Nothing to annotate right now. The queue is checked again every few seconds."
          : ($("stage-empty-text").textContent || "Loading the queue…");
      }
      $("guess-label").textContent = "–"; $("guess-conf").textContent = "";
      $("guess-meter").style.width = "0";
      $("sample-id").textContent = "";
      $("btn-accept").querySelector("span").textContent = "Accept guess";
      $("btn-accept").removeAttribute("aria-label");
      $("guess-reason").hidden = true;
      zoom.sample = null; resetZoom();
    }
    renderExamples();
    Array.prototype.forEach.call($("classes").children, function (b, i) {
      var name = b.dataset.label;
      var p = has && current.probs && typeof current.probs[name] === "number" ? current.probs[name] : null;
      b.querySelector(".prob").textContent = p === null ? "" : pct(p);
      b.querySelector(".bar").style.width = p === null ? "0" : (p * 100).toFixed(1) + "%";
      b.classList.toggle("is-guess", has && name === current.predicted);
      var key = i < 9 ? String(i + 1) : (i === 9 ? "0" : "");
      b.setAttribute("aria-label", (has && name === current.predicted ? "Confirm " : "Correct to ") + name +
        (key ? " (key " + key + ")" : "") + (p === null ? "" : ", model gives " + pct(p)));
    });
    var ready = buffer.length;
    $("buffer-info").textContent = has ? (ready ? ready + " more ready" : (refilling ? "loading more…" : "last one in the queue")) : "";
    renderRecent();
  }

  function renderRecent() {
    var list = $("recent");
    while (list.firstChild) { list.removeChild(list.firstChild); }
    var pending = {};
    outbox.forEach(function (o) { pending[o.id] = true; });
    history.slice(-RECENT_SHOWN).reverse().forEach(function (h) {
      var li = document.createElement("li");
      var state = h.refused ? "refused" : (pending[h.opId] ? "pending" : "saved");
      li.dataset.state = state;
      var what = document.createElement("span"); what.className = "what";
      what.textContent = "#" + h.item.sample_id + " " + (h.action === "reject" ? "rejected" : (h.action === "accept" ? "✓ " + h.label : "→ " + h.label));
      var st = document.createElement("span"); st.className = "state";
      st.textContent = state === "saved" ? "saved" : (state === "pending" ? "not yet saved" : "refused");
      if (h.refused) { st.title = h.refused; }
      li.appendChild(what); li.appendChild(st);
      list.appendChild(li);
    });
    if (!history.length) {
      var li = document.createElement("li"); li.className = "none"; li.textContent = "None yet in this session.";
      list.appendChild(li);
    }
  }

  function focusStage() {
    var a = document.activeElement;
    if (!a || a === document.body || a.closest(".panel") || a.closest(".stage")) { $("stage").focus({ preventScroll: true }); }
  }

  // ---------------------------------------------------------------- keyboard
  function onKey(ev) {
    if ($("login").open) { return; }
    var t = ev.target;
    var tag = t && t.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (t && t.isContentEditable)) { return; }
    if (ev.altKey || ev.metaKey) { return; }
    var k = ev.key;
    if (ev.ctrlKey && !(k === "z" || k === "Z")) { return; }
    // On a focused button, Enter and Space press that button (the browser does it): don't also accept.
    if ((k === "Enter" || k === " ") && (tag === "BUTTON" || tag === "A" || tag === "SUMMARY")) { return; }
    if (!ev.ctrlKey && zoomKey(k)) { ev.preventDefault(); return; }  // zoom keys may repeat; they decide nothing
    if (ev.repeat && k !== "z" && k !== "Z") { return; }  // a held key must not decide a run of images
    if (k === "Enter") { ev.preventDefault(); decide("accept"); }
    else if (/^[0-9]$/.test(k)) {
      var i = k === "0" ? 9 : Number(k) - 1;
      if (i < labels.length) { ev.preventDefault(); decide("correct", labels[i]); }
    }
    else if (k === "x" || k === "X") { ev.preventDefault(); decide("reject"); }
    else if (k === "z" || k === "Z") { ev.preventDefault(); undo(); }
  }

  // ---------------------------------------------------------------- start-up
  var started = false;
  function start() {
    flush();
    fillBuffer();
    if (!started) { started = true; pollStats(); setInterval(function () { if (retryAt) { renderOutbox(); } }, 1000); }
    else { pollStats(); }
    focusStage();
  }

  function init() {
    $("login-form").addEventListener("submit", submitLogin);
    $("login").addEventListener("cancel", function (ev) { if (!cfg.key || authFailed) { ev.preventDefault(); } });
    $("btn-key").addEventListener("click", function () { openLogin(); });
    $("btn-accept").addEventListener("click", function () { decide("accept"); });
    $("btn-reject").addEventListener("click", function () { decide("reject"); });
    $("btn-undo").addEventListener("click", function () { undo(); });
    $("btn-retry").addEventListener("click", function () { clearTimeout(retryTimer); retryAt = 0; flush(); });
    $("notice-close").addEventListener("click", function () { $("notice").hidden = true; });
    document.addEventListener("keydown", onKey);
    initZoom();
    window.addEventListener("online", function () { flush(); fillBuffer(); });
    window.addEventListener("beforeunload", function (ev) {
      // The outbox survives a reload; warn only because it could not be sent from a closed page.
      if (outbox.length) { ev.preventDefault(); ev.returnValue = ""; }
    });
    $("who-name").textContent = cfg.name;
    renderOutbox();
    render();
    if (!cfg.key || !cfg.name) { openLogin(); } else { start(); }
  }

  // Exposed for tests and for the curious: a read-only view of the page's state.
  window.edgeAl = {
    state: function () {
      return { current: current && current.sample_id, predicted: current && current.predicted, buffer: buffer.map(function (i) { return i.sample_id; }),
        outbox: outbox.length, history: history.length, model: modelVersion, labels: labels.slice(), sending: sending,
        zoom: { scale: zoom.s, x: zoom.x, y: zoom.y }, reason: current && current.reason ? current.reason.code : null };
    }
  };

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
