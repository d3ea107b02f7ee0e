/*
 * vtp progress page: the job list with live per-rendition progress, a job view with an HLS
 * player, and an upload form. Plain JavaScript, no build step, nothing from a CDN.
 *
 * Live updates come from the ws-relay function: a WebSocket at ./ws first; when it cannot open
 * or drops abnormally (the OpenFaaS CE gateway strips `Upgrade`, so behind /function/ws-relay/
 * it never opens), Server-Sent Events at ./events, resumed from the last event id. A stream
 * that opens is not always live: CE gateways before 2024 (0.25.4) buffer `text/event-stream`
 * and deliver it minutes late, in bursts. So when the SSE snapshot has not come STALL_MS after
 * asking, or a cheap check of ./poll shows events the stream still has not delivered one check
 * later, the page stops the stream and polls ./poll (the events since the last id) every
 * second instead, and says so. When all of that is down, it polls ./api/jobs. Every URL is
 * relative to the page's base (derived from this script's own URL), so the page works on the
 * function's port and behind the gateway alike.
 *
 * The player uses hls.js when static/hls.min.js is there (hls.js 1.7.4, Apache-2.0, vendored
 * from the npm package; see static/README.md), loaded only when a player is needed, and the
 * browser's native HLS otherwise.
 *
 * The state logic (JobStore, formatting) is pure and exposed on `window.vtp` for tests.
 */
(function () {
  "use strict";

  const JOB_FIELD = "_job";
  // The lifecycle's states, generated from vtp/lifecycle.py (static/lifecycle.js), never
  // retyped here: which states end a rendition or a job, and which wait for a retry.
  const LIFECYCLE = window.VTP_LIFECYCLE;
  if (!LIFECYCLE) throw new Error("static/lifecycle.js must load before app.js");
  const TERMINAL = new Set([...LIFECYCLE.rendition.terminal, ...LIFECYCLE.job.terminal]);
  const WAITING = new Set(LIFECYCLE.rendition.retrying);
  // Failures that carry no percent of their own: keep how far the attempt got.
  const NO_PROGRESS = new Set([...WAITING, ...[...TERMINAL].filter((s) => s !== "succeeded")]);
  const STATE_RANK = Object.fromEntries(
    LIFECYCLE.rendition.states.map((s) => [s, TERMINAL.has(s) ? 2 : s === "queued" ? 0 : 1]),
  );
  const WS_OPEN_TIMEOUT_MS = 5000;
  const WS_RETRIES = 4; // reopen attempts of a WebSocket that worked before falling back
  const STABLE_MS = 30000; // a WebSocket cut after this long was working: reopen it
  const ABNORMAL = new Set([1002, 1006, 1015]);
  const SILENCE_LIMIT_MS = 45000; // the server pings every 15 s of silence
  // The two windows that tell a live SSE stream from a buffered one, settable before this
  // script loads (`window.VTP_PAGE_TUNING = {stallMs, lagCheckMs}`) by a page that embeds
  // it, or by a test that would rather not wait 5 s.
  const TUNING = window.VTP_PAGE_TUNING || {};
  const STALL_MS = TUNING.stallMs ?? 5000; // an SSE stream whose snapshot has not come by then is not live
  const LAG_CHECK_MS = TUNING.lagCheckMs ?? 5000; // how often a live SSE stream is checked against ./poll
  const LIVE_POLL_MS = 1000; // ./poll interval once the stream gave way to it
  const POLL_FAILURES = 3; // failed ./poll calls in a row before settling for ./api polling
  const STALLED = "the gateway buffers the event stream";
  const POLL_MS = 4000;
  const FIND_JOB_TIMEOUT_MS = 90000;
  // Uploads: how often a part (or a whole form POST) is sent before the upload gives up, the
  // first wait between tries (doubled each time, capped), and how many parts go at once.
  const UPLOAD_TRIES = TUNING.uploadTries ?? 4;
  const UPLOAD_RETRY_MS = TUNING.uploadRetryMs ?? 1000;
  const UPLOAD_RETRY_MAX_MS = 8000;
  const PARTS_AT_ONCE = 3;
  const LIST_LIMIT = 50;

  // --- pure helpers ------------------------------------------------------------------------

  /** Order of two Redis stream ids ("ms-seq"); null/undefined sort first. */
  function compareIds(a, b) {
    if (a == null || a === "") return b == null || b === "" ? 0 : -1;
    if (b == null || b === "") return 1;
    const [am, as = "0"] = String(a).split("-");
    const [bm, bs = "0"] = String(b).split("-");
    // Millisecond timestamps fit in a double exactly; sequence numbers are small.
    const dm = Number(am) - Number(bm);
    if (dm !== 0) return dm < 0 ? -1 : 1;
    const ds = Number(as) - Number(bs);
    return ds === 0 ? 0 : ds < 0 ? -1 : 1;
  }

  function isTerminal(state) {
    return TERMINAL.has(state);
  }

  function num(value) {
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }

  /**
   * A rendition encoded in chunks: one segment per chunk under its bar, each as wide as its
   * share of the source and filled as far as that chunk got.
   */
  function renderChunks(row, chunks) {
    const entries = Object.entries(chunks || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
    let strip = row.querySelector(".chunks");
    if (!entries.length) {
      if (strip) strip.remove();
      return;
    }
    if (!strip) {
      strip = el("div", { class: "chunks", "aria-hidden": "true" });
      row.querySelector(".bar").after(strip);
    }
    strip.replaceChildren(
      ...entries.map(([n, c]) => {
        const seg = el("span", { class: "chunk", "data-state": c.state, title: `chunk ${n}: ${c.state}` });
        seg.style.flexGrow = String(c.seconds);
        const fill = el("span", { class: "fill" });
        fill.style.width = `${c.percent}%`;
        seg.append(fill);
        return seg;
      }),
    );
  }

  function fmtPercent(p) {
    const v = num(p) ?? 0;
    return (v >= 100 ? "100" : v.toFixed(1)) + "%";
  }

  function fmtFps(fps) {
    const v = num(fps);
    return v == null ? "–" : `${v >= 10 ? v.toFixed(0) : v.toFixed(1)} fps`;
  }

  function fmtSpeed(speed) {
    const v = num(speed);
    return v == null ? "–" : `${v.toFixed(2)}×`;
  }

  function fmtEta(seconds) {
    const v = num(seconds);
    if (v == null) return "–";
    const s = Math.max(0, Math.round(v));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const ss = String(s % 60).padStart(2, "0");
    return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
  }

  function fmtBytes(n) {
    const v = num(n);
    if (v == null) return "";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let x = v;
    let i = 0;
    while (x >= 1024 && i < units.length - 1) {
      x /= 1024;
      i += 1;
    }
    return `${i === 0 ? x : x.toFixed(1)} ${units[i]}`;
  }

  function fmtTime(ms) {
    return ms == null ? "–" : new Date(ms).toLocaleString();
  }

  function shortId(id) {
    return String(id).slice(0, 8);
  }

  /** "1080p" -> 1080, for ordering renditions from small to large. */
  function renditionOrder(name) {
    const m = /^(\d+)/.exec(String(name));
    return m ? Number(m[1]) : Number.MAX_SAFE_INTEGER;
  }

  function parseTime(value) {
    if (value == null) return null;
    if (typeof value === "number") return value > 1e12 ? value : value * 1000;
    const t = Date.parse(value);
    return Number.isNaN(t) ? null : t;
  }

  // --- the model: jobs and their renditions, fed by events, snapshots and job views ---------

  class JobStore {
    constructor() {
      this.jobs = new Map();
      this.lastEventId = null;
    }

    job(id) {
      let job = this.jobs.get(id);
      if (!job) {
        job = {
          id,
          state: "queued",
          error: null,
          source: null,
          urls: {},
          createdMs: null,
          finishedMs: null,
          firstSeenMs: Date.now(),
          lastId: null, // id of the last job-level event applied
          hasView: false,
          renditions: new Map(),
        };
        this.jobs.set(id, job);
      }
      return job;
    }

    rendition(job, name) {
      let r = job.renditions.get(name);
      if (!r) {
        r = {
          name,
          state: "queued",
          percent: 0,
          fps: null,
          speed: null,
          eta: null,
          error: null,
          attempt: null,
          width: null,
          height: null,
          urls: {},
          lastId: null,
        };
        job.renditions.set(name, r);
        // Keep the ladder in order whatever order the events came in.
        const sorted = [...job.renditions.values()].sort(
          (a, b) => renditionOrder(a.name) - renditionOrder(b.name) || (a.name < b.name ? -1 : 1),
        );
        job.renditions = new Map(sorted.map((x) => [x.name, x]));
      }
      return r;
    }

    noteId(id) {
      if (id && compareIds(id, this.lastEventId) > 0) this.lastEventId = id;
    }

    /**
     * Apply one ProgressEvent. Returns what changed, for the caller to decide what to fetch:
     * {applied, jobId, isNew, jobEnded, renditionEnded}. Events older than the last one applied
     * to the same rendition (a replay after a snapshot, a duplicate) are ignored; a terminal
     * state is never left again, but by an operator's redrive (`reopened` events).
     */
    applyEvent(ev) {
      const out = { applied: false, jobId: null, isNew: false, jobEnded: false, renditionEnded: false, ready: false };
      if (!ev || typeof ev !== "object" || !ev.job_id || !ev.state) return out;
      out.jobId = ev.job_id;
      out.isNew = !this.jobs.has(ev.job_id);
      this.noteId(ev.id);
      const job = this.job(ev.job_id);
      if (!job.createdMs && num(ev.ts) != null) job.firstSeenMs = Math.min(job.firstSeenMs, ev.ts * 1000);
      const target = ev.rendition == null || ev.rendition === JOB_FIELD ? job : this.rendition(job, ev.rendition);
      if (ev.chunk != null && target !== job) {
        // One chunk's own progress: a segment of its rendition's bar. The rendition's own
        // event (no chunk) carries the aggregate state and percent.
        const c = (target.chunks ||= {});
        const prev = c[ev.chunk];
        if (prev && ev.id && prev.id && compareIds(ev.id, prev.id) <= 0) return out;
        if (prev && isTerminal(prev.state) && !isTerminal(ev.state) && !ev.reopened) return out;
        const pct = ev.state === "succeeded" ? 100 : num(ev.percent) ?? 0;
        c[ev.chunk] = { id: ev.id, state: ev.state, percent: pct, seconds: num(ev.chunk_seconds) || 1 };
        out.applied = true;
        return out;
      }
      if (ev.id && target.lastId && compareIds(ev.id, target.lastId) <= 0) return out;
      if (isTerminal(target.state) && !isTerminal(ev.state) && !ev.reopened) return out;
      const wasTerminal = isTerminal(target.state);
      if (ev.id) target.lastId = ev.id;
      target.state = ev.state;
      if (target === job) {
        if (ev.error !== undefined) job.error = ev.error;
        if (ev.reopened) job.error = null;
        // "rendition.ready": the master playlist lists more renditions (playable early).
        if (Array.isArray(ev.ready)) {
          job.ready = ev.ready.slice();
          out.ready = true;
        }
        out.jobEnded = !wasTerminal && isTerminal(ev.state);
      } else {
        const pct = num(ev.percent);
        if (ev.state === "succeeded") target.percent = 100;
        // A failure reported by the sweeper or a callback carries no percent: keep how far
        // the attempt got.
        else if (pct != null && (pct > 0 || !NO_PROGRESS.has(ev.state))) {
          target.percent = pct;
        }
        target.fps = num(ev.fps);
        target.speed = num(ev.speed);
        target.eta = ev.state === "succeeded" ? 0 : num(ev.eta_seconds);
        target.error = ev.error ?? null;
        if (ev.attempt != null) target.attempt = ev.attempt;
        out.renditionEnded = !wasTerminal && isTerminal(ev.state);
        // A rendition at work means the job is at work, even before its own event arrives.
        if (job.state === "queued" && ev.state === "running") job.state = "running";
      }
      out.applied = true;
      return out;
    }

    /** A snapshot {job_id: {rendition|_job: ProgressEvent}}; returns the per-event results. */
    applySnapshot(jobs) {
      const results = [];
      if (!jobs || typeof jobs !== "object") return results;
      for (const [jobId, fields] of Object.entries(jobs)) {
        if (!fields || typeof fields !== "object") continue;
        for (const [field, ev] of Object.entries(fields)) {
          if (!ev || typeof ev !== "object") continue;
          const rendition = field === JOB_FIELD ? null : ev.rendition ?? field.split("#")[0];
          results.push(this.applyEvent({ ...ev, job_id: ev.job_id || jobId, rendition }));
        }
      }
      return results;
    }

    /** A job view (Pipeline.describe_job): the database's truth plus output URLs. */
    applyView(view) {
      if (!view || !view.id) return null;
      const job = this.job(view.id);
      job.hasView = true;
      job.source = view.source || job.source;
      job.urls = view.urls || {};
      if (Array.isArray(view.ready)) job.ready = view.ready.slice();
      job.createdMs = parseTime(view.created_at) ?? job.createdMs;
      job.finishedMs = parseTime(view.finished_at) ?? job.finishedMs;
      if (isTerminal(view.state) || !isTerminal(job.state)) {
        if (isTerminal(view.state) || (STATE_RANK[view.state] ?? 0) >= (STATE_RANK[job.state] ?? 0)) {
          job.state = view.state;
        }
      }
      if (view.error) job.error = view.error;
      // Work waiting for a slot (fair share, vtp.jobs.scheduling): null once nothing waits.
      job.queue = isTerminal(job.state) ? null : view.queue || null;
      job.priority = view.priority ?? job.priority;
      for (const rv of view.renditions || []) {
        const r = this.rendition(job, rv.name);
        r.width = rv.width ?? r.width;
        r.height = rv.height ?? r.height;
        r.urls = rv.urls || {};
        r.crf = rv.crf ?? r.crf;
        r.codec = rv.codec ?? r.codec;
        r.channels = rv.channels ?? r.channels;
        r.quality = rv.quality ?? r.quality;
        if (rv.kind === "audio" || rv.kind === "text") {
          r.track = { label: rv.label, language: rv.language, isDefault: rv.default, loudness: rv.loudness };
        }
        if (rv.attempts != null && r.attempt == null) r.attempt = rv.attempts;
        if (rv.progress && typeof rv.progress === "object") {
          this.applyEvent({ ...rv.progress, job_id: job.id, rendition: rv.name });
        }
        if (isTerminal(rv.state)) {
          r.state = rv.state;
          r.error = rv.error ?? r.error;
          if (rv.state === "succeeded") {
            r.percent = 100;
            r.eta = 0;
          }
        } else if (!r.lastId && !isTerminal(r.state)) {
          r.state = rv.state;
          r.error = rv.error ?? null;
        }
      }
      return job;
    }

    /** Whole-job progress: the mean of the renditions' (a finished job is 100). */
    jobPercent(job) {
      if (job.state === "succeeded") return 100;
      const rs = [...job.renditions.values()];
      if (!rs.length) return 0;
      return rs.reduce((sum, r) => sum + (r.state === "succeeded" ? 100 : r.percent || 0), 0) / rs.length;
    }

    /** Jobs newest first, optionally only those in `state`. */
    list(state) {
      const key = (j) => j.createdMs ?? j.firstSeenMs;
      return [...this.jobs.values()]
        .filter((j) => !state || j.state === state)
        .sort((a, b) => key(b) - key(a) || (a.id < b.id ? -1 : 1));
    }
  }

  // --- live connection: WebSocket, then SSE, then polling --------------------------------------

  /**
   * Access (vtp/access.py). The page's calls carry one of:
   * - a signed link to one job (`vtp link JOB` gives `.../ws-relay/?job=<id>&link=<token>`): it
   *   opens that job only, and goes with every call (a header where one can be set, the URL
   *   of WebSocket and EventSource, which cannot);
   * - the session cookie the relay sets once shown a credential (`signIn`), which the browser
   *   sends by itself, to fetches, WebSockets and EventSource alike.
   * A credential in the page's address (`?token=`, as pages were once opened) is exchanged for
   * the cookie at once and taken out of the address and the history.
   */
  const PARAMS = new URLSearchParams(location.search);
  const LINK = PARAMS.get("link");
  const LINK_JOB = LINK ? PARAMS.get("job") : null;

  function withAccess(url) {
    if (LINK) url.searchParams.set("link", LINK);
    return url;
  }

  /** Show the relay a credential; it answers the session cookie. */
  async function signIn(token) {
    const res = await fetch(new URL("api/session", BASE), {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      cache: "no-store",
    });
    let body = null;
    try {
      body = await res.json();
    } catch {
      /* not JSON */
    }
    if (!res.ok) throw new Error((body && body.error) || `HTTP ${res.status}`);
    return body;
  }

  /** A credential in the address: into the cookie, out of the address bar and the history. */
  async function exchangeAddressToken() {
    const token = PARAMS.get("token");
    if (!token) return;
    const clean = new URL(location.href);
    clean.searchParams.delete("token");
    history.replaceState(history.state, "", clean.toString());
    try {
      await signIn(token);
    } catch (err) {
      console.warn(`the credential in the address was refused: ${err.message}`);
    }
  }

  class LiveClient {
    /**
     * handlers: onSnapshot(jobs), onEvent(ev), onMode(mode, detail), onOpen(), lastEventId(),
     * active() (whether any followed job is still in flight).
     * Modes: connecting, websocket, sse, poll (live, by ./poll), reconnecting, polling (by
     * ./api, nothing live), offline.
     */
    constructor(base, handlers, opts = {}) {
      this.base = base;
      this.h = handlers;
      this.WebSocket = opts.WebSocket || window.WebSocket;
      this.EventSource = opts.EventSource || window.EventSource;
      this.transport = null;
      this.ws = null;
      this.es = null;
      this.retries = 0;
      this.wsWorked = false; // a WebSocket opened at least once on this page
      this.wsRetries = 0;
      this.timers = new Set();
      this.stopped = false;
      this.log = []; // transport history, for people and tests: [{t, what}]
      this.fetch = opts.fetch || ((...a) => window.fetch(...a));
      this.sseStalled = false; // SSE opened here but was not live: poll instead
      this.pollFailures = 0;
    }

    start() {
      const forced = this.forced();
      if (forced === "poll") this.connectPoll("asked for");
      else if (this.WebSocket && !forced) this.connectWs();
      else this.connectSse(forced ? "asked for" : "WebSocket not available");
    }

    stop() {
      this.stopped = true;
      for (const t of this.timers) clearTimeout(t);
      this.timers.clear();
      if (this.ws) this.ws.close(1000);
      if (this.es) this.es.close();
    }

    /** `?transport=sse` or `?transport=poll` skips the transports before it. */
    forced() {
      const t = new URLSearchParams(location.search).get("transport");
      return t === "sse" || t === "poll" ? t : null;
    }

    later(fn, ms) {
      const t = setTimeout(() => {
        this.timers.delete(t);
        if (!this.stopped) fn();
      }, ms);
      this.timers.add(t);
      return t;
    }

    cancel(t) {
      if (t == null) return;
      clearTimeout(t);
      this.timers.delete(t);
    }

    backoff() {
      this.retries += 1;
      return Math.min(15000, 500 * 2 ** Math.min(this.retries, 5)) * (0.75 + Math.random() * 0.5);
    }

    note(what, mode, detail) {
      this.log.push({ t: Date.now(), what });
      if (mode) this.h.onMode(mode, detail || "");
    }

    wsUrl() {
      const url = new URL("ws", this.base);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      url.searchParams.set("job", LINK_JOB || "all");
      const last = this.h.lastEventId();
      if (last) url.searchParams.set("last_id", last);
      withAccess(url);
      return url.toString();
    }

    connectWs() {
      this.transport = "websocket";
      this.note("websocket-connecting", "connecting", "WebSocket");
      let opened = false;
      let openedAt = 0;
      let ws;
      try {
        ws = new this.WebSocket(this.wsUrl());
      } catch (err) {
        this.note("websocket-error", null);
        this.connectSse(`WebSocket could not start: ${err.message}`);
        return;
      }
      this.ws = ws;
      let silence = null;
      const armSilence = () => {
        this.cancel(silence);
        silence = this.later(() => {
          this.note("websocket-silent", null);
          ws.close(4000, "silent");
        }, SILENCE_LIMIT_MS);
      };
      const openTimer = this.later(() => {
        if (!opened) {
          this.note("websocket-open-timeout", null);
          ws.close();
        }
      }, WS_OPEN_TIMEOUT_MS);
      ws.onopen = () => {
        opened = true;
        openedAt = Date.now();
        this.wsWorked = true;
        this.wsRetries = 0;
        this.cancel(openTimer);
        this.retries = 0;
        armSilence();
        this.note("websocket-open", "websocket", "WebSocket");
        if (this.h.onOpen) this.h.onOpen("websocket");
      };
      ws.onmessage = (msg) => {
        armSilence();
        let data;
        try {
          data = JSON.parse(msg.data);
        } catch {
          return;
        }
        if (data.type === "snapshot") this.h.onSnapshot(data.jobs);
        else if (data.type === "event") this.h.onEvent(data.event);
      };
      ws.onerror = () => {}; // close follows with the code that matters
      ws.onclose = (e) => {
        this.cancel(openTimer);
        this.cancel(silence);
        if (this.ws === ws) this.ws = null;
        if (this.stopped) return;
        const lived = opened ? Date.now() - openedAt : 0;
        if (!opened && this.wsWorked && this.wsRetries < WS_RETRIES) {
          // It worked before on this page, so nothing strips Upgrade: the server is down or
          // restarting. Try again (resuming from the last id) before settling for SSE.
          this.wsRetries += 1;
          this.note("websocket-failed-retrying", "reconnecting", "WebSocket");
          this.later(() => this.connectWs(), this.backoff());
        } else if (!opened) {
          this.note("websocket-failed", null);
          this.connectSse("WebSocket did not open");
        } else if (ABNORMAL.has(e.code) && lived < STABLE_MS) {
          // Cut soon after opening: something on the way (a proxy) does not carry it.
          this.note(`websocket-abnormal-${e.code}`, null);
          this.connectSse(`WebSocket closed abnormally (${e.code})`);
        } else {
          // A clean close (server restart, our silence watchdog), or a long-lived one cut:
          // the WebSocket works here, so open it again, resuming from the last event id.
          this.note(`websocket-closed-${e.code}`, "reconnecting", "WebSocket");
          this.later(() => this.connectWs(), this.backoff());
        }
      };
    }

    sseUrl() {
      const url = new URL("events", this.base);
      url.searchParams.set("job", LINK_JOB || "all");
      const last = this.h.lastEventId();
      if (last) url.searchParams.set("last_id", last);
      withAccess(url);
      return url.toString();
    }

    connectSse(reason) {
      if (this.sseStalled) {
        this.connectPoll(STALLED);
        return;
      }
      this.transport = "sse";
      if (this.es) this.es.close();
      if (!this.EventSource) {
        this.connectPoll(reason || "Server-Sent Events not available");
        return;
      }
      this.note("sse-connecting", "connecting", `Server-Sent Events (${reason || "fallback"})`);
      const es = new this.EventSource(this.sseUrl());
      this.es = es;
      // Is it live? Its snapshot must come soon, and then keep up with what ./poll shows.
      let snapshotCame = false;
      let streamLast = this.h.lastEventId();
      let lagMark = null;
      const stalled = (why) => {
        if (this.es !== es || this.stopped) return;
        this.note(`sse-stalled-${why}`, null);
        this.sseStalled = true;
        es.close();
        this.es = null;
        this.connectPoll(STALLED);
      };
      this.later(() => {
        if (!snapshotCame) stalled("no-snapshot");
      }, STALL_MS);
      const checkLag = async () => {
        if (this.es !== es || this.stopped) return;
        if (!this.h.active || this.h.active()) {
          try {
            const answer = await this.pollOnce(streamLast);
            if (lagMark && compareIds(streamLast, lagMark) < 0) {
              stalled("behind");
              return;
            }
            lagMark = answer.events && answer.events.length ? answer.last_id : null;
          } catch {
            /* ./poll unreachable: nothing to compare with; the stream may be fine */
          }
        }
        this.later(checkLag, LAG_CHECK_MS);
      };
      es.onopen = () => {
        this.retries = 0;
        this.note("sse-open", "sse", reason ? `Server-Sent Events · ${reason}` : "Server-Sent Events");
        if (this.h.onOpen) this.h.onOpen("sse");
      };
      es.addEventListener("snapshot", (e) => {
        if (!snapshotCame) this.later(checkLag, LAG_CHECK_MS);
        snapshotCame = true;
        try {
          const jobs = JSON.parse(e.data).jobs;
          for (const fields of Object.values(jobs || {})) {
            for (const ev of Object.values(fields || {})) {
              if (ev && ev.id && compareIds(ev.id, streamLast) > 0) streamLast = ev.id;
            }
          }
          this.h.onSnapshot(jobs);
        } catch {
          /* a malformed snapshot is ignored; events still follow */
        }
      });
      const onProgress = (e) => {
        let ev;
        try {
          ev = JSON.parse(e.data);
        } catch {
          return;
        }
        if (ev && typeof ev === "object" && ev.job_id) {
          if (!ev.id && e.lastEventId) ev.id = e.lastEventId;
          if (ev.id && compareIds(ev.id, streamLast) > 0) streamLast = ev.id;
          this.h.onEvent(ev);
        }
      };
      es.addEventListener("progress", onProgress);
      es.onmessage = onProgress; // unnamed events, in case a proxy or server sends them so
      es.onerror = () => {
        if (this.es !== es || this.stopped) return;
        if (es.readyState === this.EventSource.CLOSED) {
          // The browser gave up (an HTTP error, a wrong content type): retry ourselves, from
          // the last event id, and poll meanwhile.
          this.note("sse-closed", "polling", "live updates lost; retrying");
          this.es = null;
          this.later(() => this.connectSse(reason), this.backoff());
        } else {
          // The browser reconnects by itself with Last-Event-ID.
          this.note("sse-reconnecting", "reconnecting", "Server-Sent Events");
        }
      };
    }

    pollUrl(lastId) {
      const url = new URL("poll", this.base);
      url.searchParams.set("job", LINK_JOB || "all");
      if (lastId) url.searchParams.set("last_id", lastId);
      withAccess(url);
      return url.toString();
    }

    /** One GET of ./poll: {jobs, events, last_id, more} (see functions/ws-relay/vtp_relay/poll.py). */
    async pollOnce(lastId) {
      const resp = await this.fetch(this.pollUrl(lastId), { cache: "no-store" });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      return resp.json();
    }

    /** The live transport of last resort: the events since the last id, once a second. */
    connectPoll(reason) {
      this.transport = "poll";
      let opened = false;
      const step = async () => {
        if (this.stopped || this.transport !== "poll") return;
        let answer;
        try {
          answer = await this.pollOnce(this.h.lastEventId());
        } catch (err) {
          this.pollFailures += 1;
          if (this.pollFailures >= POLL_FAILURES) {
            this.note("poll-failed", "polling", "live updates unavailable");
          } else {
            this.note("poll-retrying", "reconnecting", "polling");
          }
          this.later(step, this.backoff());
          return;
        }
        this.pollFailures = 0;
        this.retries = 0;
        if (!opened) {
          opened = true;
          this.note("poll-open", "poll", reason);
          if (this.h.onOpen) this.h.onOpen("poll");
        }
        if (answer.jobs) this.h.onSnapshot(answer.jobs);
        for (const ev of answer.events || []) {
          if (ev && ev.job_id) this.h.onEvent(ev);
        }
        this.later(step, answer.more ? 0 : LIVE_POLL_MS);
      };
      this.note("poll-connecting", "connecting", `polling (${reason})`);
      step();
    }
  }

  // --- everything below touches the DOM -----------------------------------------------------

  const script = document.currentScript;
  const BASE = new URL("..", script && script.src ? script.src : location.href);
  const store = new JobStore();
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c != null) node.append(c);
    return node;
  }

  async function api(path, opts = {}) {
    const headers = { Accept: "application/json", ...(opts.headers || {}) };
    if (LINK) headers.Authorization = `Bearer ${LINK}`;
    const res = await fetch(new URL(path, BASE), { ...opts, headers, cache: "no-store" });
    let body = null;
    try {
      body = await res.json();
    } catch {
      /* not JSON */
    }
    if (res.status === 401) lockOut();
    if (!res.ok) {
      const err = new Error((body && (body.error || body.detail)) || `HTTP ${res.status}`);
      err.status = res.status;
      throw err;
    }
    return body;
  }

  // --- views fetched from the API, at most one request per job at a time ----------------------

  const fetching = new Map(); // job id -> {again: bool}

  function ensureView(jobId) {
    if (location.protocol === "file:") return;
    const pending = fetching.get(jobId);
    if (pending) {
      pending.again = true;
      return;
    }
    const state = { again: false };
    fetching.set(jobId, state);
    api(`api/jobs/${encodeURIComponent(jobId)}`)
      .then((view) => {
        store.applyView(view);
        schedule();
      })
      .catch((err) => {
        if (err.status === 404 && route.jobId === jobId && !store.jobs.get(jobId)?.hasView) {
          detailMissing = `No job ${jobId}.`;
          schedule();
        }
      })
      .finally(() => {
        fetching.delete(jobId);
        if (state.again) ensureView(jobId);
      });
  }

  async function refreshList() {
    const params = new URLSearchParams({ limit: String(LIST_LIMIT) });
    const state = $("state-filter").value;
    if (state) params.set("state", state);
    try {
      const body = await api(`api/jobs?${params}`);
      for (const view of body.jobs || []) store.applyView(view);
      schedule();
      return true;
    } catch {
      return false;
    }
  }

  // --- live updates into the store ------------------------------------------------------------

  const announcer = () => $("announcer");

  function afterApply(result) {
    if (!result.applied || !result.jobId) return;
    const job = store.jobs.get(result.jobId);
    if (result.isNew || !job.hasView || result.jobEnded || result.renditionEnded || result.ready) {
      ensureView(result.jobId);
    }
    if (result.jobEnded) {
      announcer().textContent =
        `Job ${shortId(job.id)} ${job.state}` + (job.error ? `: ${job.error}` : "");
    }
  }

  let pollTimer = null;
  let locked = null; // why this page may not read, once the relay said 401

  /** The relay wants a read token this page lacks: say how to get in, and stop asking. */
  function lockOut() {
    if (locked) return;
    locked = LINK
      ? "this link is not accepted (expired, or altered): ask for a new one"
      : "this deployment requires a credential: sign in";
    const signin = $("signin-form");
    if (signin && !LINK) signin.hidden = false;
    live.stop();
    if (pollTimer) clearInterval(pollTimer);
    pollTimer = null;
    const conn = $("conn");
    conn.dataset.mode = "locked";
    $("conn-text").textContent = locked;
    conn.title = locked;
    $("jobs-empty").textContent = `No jobs shown: ${locked}.`;
    detailMissing = `No job shown: ${locked}.`;
    schedule();
  }

  function setMode(mode, detail) {
    if (locked) return;
    const conn = $("conn");
    conn.dataset.mode = mode;
    const text = {
      connecting: `connecting${detail ? ` · ${detail}` : ""}…`,
      websocket: "live · WebSocket",
      sse: `live · ${detail || "Server-Sent Events"}`,
      poll: `live · polling every second${detail ? ` (${detail})` : ""}`,
      reconnecting: `reconnecting${detail ? ` · ${detail}` : ""}…`,
      polling: `polling${detail ? ` · ${detail}` : ""}`,
      offline: "offline",
    }[mode] || mode;
    $("conn-text").textContent = text;
    conn.title = text;
    // Poll the API while no live transport is open; stop once one is.
    const live = mode === "websocket" || mode === "sse" || mode === "poll";
    if (location.protocol === "file:") return;
    if (!live && !pollTimer && mode !== "connecting") {
      pollTimer = setInterval(poll, POLL_MS);
    } else if (live && pollTimer) {
      clearInterval(pollTimer);
      pollTimer = null;
    }
  }

  async function poll() {
    const ok = await refreshList();
    if (route.jobId) ensureView(route.jobId);
    const mode = $("conn").dataset.mode;
    if (!ok && mode === "polling") setMode("offline");
    else if (ok && mode === "offline") setMode("polling", "live updates unavailable");
  }

  const live = new LiveClient(BASE, {
    onSnapshot(jobs) {
      for (const r of store.applySnapshot(jobs)) afterApply(r);
      schedule();
    },
    onEvent(ev) {
      afterApply(store.applyEvent(ev));
      schedule();
    },
    onMode: setMode,
    onOpen() {
      // Catch up on what happened while no transport was open (the snapshot covers only
      // recent jobs).
      refreshList();
    },
    lastEventId: () => store.lastEventId,
    active: () => [...store.jobs.values()].some((j) => !isTerminal(j.state)),
  });

  // --- routing ----------------------------------------------------------------------------

  const route = { jobId: null };
  let detailMissing = null;

  function parseRoute() {
    const m = /^#\/jobs\/([^/?#]+)/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }

  function onRoute() {
    const jobId = parseRoute();
    const changed = jobId !== route.jobId;
    route.jobId = jobId;
    detailMissing = locked ? `No job shown: ${locked}.` : null;
    $("list-view").hidden = !!jobId;
    $("detail-view").hidden = !jobId;
    if (jobId) {
      document.title = `vtp · job ${shortId(jobId)}`;
      ensureView(jobId);
    } else {
      document.title = "vtp · live transcoding progress";
      teardownPlayer();
    }
    schedule();
    if (changed) {
      const heading = jobId ? $("detail-title") : $("jobs-title");
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: false });
    }
  }

  // --- rendering --------------------------------------------------------------------------

  let frame = 0;

  function schedule() {
    if (!frame) frame = requestAnimationFrame(render);
  }

  function render() {
    frame = 0;
    if (route.jobId) renderDetail();
    else renderList();
  }

  /** One rendition row: created once, then only its text and attributes change. */
  function renditionRow(container, job, r) {
    const jobId = job.id;
    let row = container.querySelector(`:scope > [data-rendition="${CSS.escape(r.name)}"]`);
    if (!row) {
      const bar = el(
        "div",
        {
          class: "bar",
          role: "progressbar",
          "aria-valuemin": "0",
          "aria-valuemax": "100",
          "aria-label": `${r.name} of job ${shortId(jobId)}`,
        },
        el("div", { class: "fill" }),
      );
      row = el(
        "div",
        { class: "rend", "data-rendition": r.name },
        el("span", { class: "rname" }, el("strong", { text: r.name }), el("small", { class: "dims" })),
        bar,
        el("span", { class: "pct" }),
        el(
          "span",
          { class: "stats" },
          el("span", { class: "fps", title: "frames per second" }),
          el("span", { class: "speed", title: "speed (× realtime)" }),
          el("span", { class: "eta", title: "time left" }),
          el("span", { class: "attempt" }),
          el("span", { class: "quality" }),
        ),
        el("span", { class: "badge" }),
        el("p", { class: "rerror", role: "alert", hidden: true }),
      );
      container.append(row);
    }
    const pct = r.state === "succeeded" ? 100 : r.percent || 0;
    row.dataset.state = r.state;
    row.querySelector(".dims").textContent = dimsText(r);
    const bar = row.querySelector(".bar");
    bar.setAttribute("aria-valuenow", pct.toFixed(1));
    bar.setAttribute("aria-valuetext", `${fmtPercent(pct)}, ${r.state}`);
    bar.querySelector(".fill").style.width = `${pct}%`;
    renderChunks(row, r.chunks);
    row.querySelector(".pct").textContent = fmtPercent(pct);
    const running = r.state === "running";
    // A sound track's encode reports 0 fps (it has no frames): no rate shown for it.
    row.querySelector(".fps").textContent = running && num(r.fps) > 0 ? fmtFps(r.fps) : "";
    row.querySelector(".speed").textContent = running ? fmtSpeed(r.speed) : "";
    row.querySelector(".eta").textContent = running && r.eta != null ? `ETA ${fmtEta(r.eta)}` : "";
    row.querySelector(".attempt").textContent = r.attempt && r.attempt > 1 ? `attempt ${r.attempt}` : "";
    const q = row.querySelector(".quality");
    q.textContent = qualityText(r);
    q.title = qualityTitle(r);
    q.classList.toggle("flagged", Boolean(r.quality && r.quality.flagged));
    // In the master while the job runs: playable before the others are done.
    const playable = Boolean(job && !isTerminal(job.state) && (job.ready || []).includes(r.name));
    row.dataset.ready = playable ? "true" : "false";
    row.querySelector(".badge").textContent = playable ? `${r.state} · playable` : r.state;
    const err = row.querySelector(".rerror");
    err.hidden = !r.error;
    err.textContent = r.error || "";
    return row;
  }

  /** What a rendition is, after its name: " 1280×720" (" · HEVC" beside H.264), " stereo"
   *  for a sound track; nothing for what has neither, never "null". */
  function dimsText(r) {
    if (r.width && r.height) {
      const codec = r.codec && r.codec !== "h264" ? ` · ${r.codec.toUpperCase()}` : "";
      return ` ${r.width}×${r.height}${codec}`;
    }
    if (r.channels > 0) return ` ${{ 1: "mono", 2: "stereo" }[r.channels] || `${r.channels} ch`}`;
    return "";
  }

  /** A score as its metric is read: VMAF in points to one decimal, SSIM (older jobs) to four. */
  function scoreText(q, value) {
    return String(q.metric || "vmaf") === "vmaf" ? value.toFixed(1) : value.toFixed(4);
  }

  /** "VMAF 94.6" once measured (the prediction before), with the factor it was encoded at. */
  function qualityText(r) {
    if (r.track) return trackText(r.track);
    const q = r.quality;
    if (!q) return "";
    const metric = String(q.metric || "vmaf").toUpperCase();
    const crf = typeof r.crf === "number" ? ` · CRF ${r.crf}` : "";
    if (typeof q.score === "number") return `${metric} ${scoreText(q, q.score)}${q.flagged ? " ⚠" : ""}${crf}`;
    if (typeof q.predicted === "number") return `${metric} ~${scoreText(q, q.predicted)}${crf}`;
    return crf.slice(3);
  }

  /** A sound track: "English (en) · default · −16 LUFS, was −23.1". */
  function trackText(t) {
    const parts = [t.label || "Audio"];
    if (t.language) parts[0] += ` (${t.language})`;
    if (t.isDefault) parts.push("default");
    const loud = t.loudness;
    if (loud && typeof loud.target === "number") {
      const was = loud.measured && typeof loud.measured.integrated === "number"
        ? `, was ${loud.measured.integrated.toFixed(1)}` : "";
      parts.push(`${loud.target} LUFS${was}`);
    }
    return parts.join(" · ");
  }

  function qualityTitle(r) {
    if (r.track) return "a sound track of the source, encoded once for every video rendition";
    const q = r.quality;
    if (!q) return "";
    const parts = [];
    if (typeof q.target === "number") parts.push(`target ${q.target}`);
    if (typeof q.predicted === "number") parts.push(`predicted ${scoreText(q, q.predicted)}`);
    if (typeof q.worst === "number") parts.push(`worst segment ${scoreText(q, q.worst)}`);
    if (typeof q.ssim === "number") parts.push(`SSIM ${q.ssim.toFixed(4)}`);
    if (q.flagged) parts.push("below its target by more than the margin");
    if (q.error) parts.push(`not measured: ${q.error}`);
    return parts.join("; ");
  }

  function renderRenditions(container, job) {
    const rows = [...job.renditions.values()].map((r) => renditionRow(container, job, r));
    rows.forEach((row, i) => {
      if (container.children[i] !== row) container.insertBefore(row, container.children[i] || null);
    });
    const probing = !rows.length && !isTerminal(job.state);
    const note = container.querySelector(":scope > .muted:not(.queue)");
    if (probing && !note) container.append(el("p", { class: "muted", text: "Probing the source…" }));
    else if (!probing && note) note.remove();
    const waiting = queueText(job);
    let line = container.querySelector(":scope > .queue");
    if (waiting && !line) {
      line = el("p", { class: "muted queue", role: "status" });
      container.prepend(line);
    }
    if (line) {
      line.hidden = !waiting;
      line.textContent = waiting || "";
    }
  }

  /** "Waiting: 3 jobs ahead, starts in about 40 s", as `vtp status` says it (queue_line). */
  function queueText(job) {
    const q = job.queue;
    if (!q || isTerminal(job.state)) return "";
    const named = { 25: "low", 50: "normal", 75: "high" }[job.priority ?? 50] ?? String(job.priority);
    const extra = named !== "normal" ? ` (priority ${named})` : "";
    if (q.in_flight) return `${q.in_flight} running or queued, ${q.waiting || 0} waiting${extra}`;
    const ahead = q.ahead || 0;
    let text = `Waiting: ${ahead} job${ahead === 1 ? "" : "s"} ahead`;
    if (q.start_in_s != null) text += `, starts in about ${Math.max(1, Math.round(q.start_in_s))} s`;
    return text + extra;
  }

  function sourceText(job) {
    return job.source ? job.source.key : "";
  }

  function renderList() {
    const list = $("jobs");
    const jobs = store.list($("state-filter").value).slice(0, 100);
    $("jobs-empty").hidden = jobs.length > 0;
    const keep = new Set(jobs.map((j) => j.id));
    for (const li of [...list.children]) if (!keep.has(li.dataset.jobId)) li.remove();
    jobs.forEach((job, i) => {
      let li = list.querySelector(`:scope > [data-job-id="${CSS.escape(job.id)}"]`);
      if (!li) {
        li = el(
          "li",
          { class: "job card", "data-job-id": job.id },
          el(
            "div",
            { class: "job-head" },
            el("a", { class: "job-link", href: `#/jobs/${encodeURIComponent(job.id)}` },
              el("code", { text: shortId(job.id) })),
            el("span", { class: "source" }),
            el("span", { class: "job-pct" }),
            el("span", { class: "badge job-state" }),
          ),
          el("p", { class: "error job-error", role: "alert", hidden: true }),
          el("div", { class: "renditions" }),
        );
      }
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
      li.dataset.state = job.state;
      const src = sourceText(job);
      const link = li.querySelector(".job-link");
      link.setAttribute("aria-label", `Job ${shortId(job.id)}${src ? `, ${src}` : ""}, ${job.state}`);
      li.querySelector(".source").textContent = src;
      li.querySelector(".source").title = job.source ? `s3://${job.source.bucket}/${job.source.key}` : "";
      li.querySelector(".job-pct").textContent = job.renditions.size ? fmtPercent(store.jobPercent(job)) : "";
      li.querySelector(".job-state").textContent = job.state;
      const err = li.querySelector(".job-error");
      err.hidden = !job.error;
      err.textContent = job.error || "";
      renderRenditions(li.querySelector(".renditions"), job);
    });
  }

  function fact(dl, label, value) {
    dl.append(el("dt", { text: label }), el("dd", {}, value));
  }

  function renderDetail() {
    const jobId = route.jobId;
    $("detail-id").textContent = jobId;
    const job = store.jobs.get(jobId);
    $("detail-missing").hidden = !detailMissing;
    $("detail-missing").textContent = detailMissing || "";
    $("detail-body").hidden = !!detailMissing && !job;
    const view = $("detail-view");
    if (!job) {
      view.dataset.state = "";
      return;
    }
    view.dataset.state = job.state;
    const done = [...job.renditions.values()].filter((r) => isTerminal(r.state)).length;
    const sig = JSON.stringify([job.id, job.state, job.source, job.createdMs, job.finishedMs, done,
      job.renditions.size, Math.floor(store.jobPercent(job))]);
    const dl = $("detail-facts");
    if (dl.dataset.sig !== sig) {
      dl.dataset.sig = sig;
      renderFacts(dl, job, done);
    }
    $("detail-error").hidden = !job.error;
    $("detail-error").textContent = job.error || "";
    renderRenditions($("detail-renditions"), job);
    renderOutputs(job);
    // Playable early: the master lists the renditions ready so far while the job runs.
    const early = !isTerminal(job.state) && (job.ready || []).length > 0;
    if ((job.state === "succeeded" || early) && job.urls && job.urls.master) setupPlayer(job);
    else if (job.state === "failed") $("player-note").textContent = "The job failed: nothing to play.";
  }

  function renderFacts(dl, job, done) {
    dl.replaceChildren();
    fact(dl, "State", el("span", { class: "badge job-state", "data-state": job.state, text: job.state }));
    fact(dl, "Progress", fmtPercent(store.jobPercent(job)));
    if (job.source) fact(dl, "Source", el("code", { text: `s3://${job.source.bucket}/${job.source.key}` }));
    fact(dl, "Created", fmtTime(job.createdMs ?? job.firstSeenMs));
    if (job.finishedMs) fact(dl, "Finished", fmtTime(job.finishedMs));
    fact(dl, "Renditions", `${done} of ${job.renditions.size} done`);
  }

  function renderOutputs(job) {
    const ul = $("outputs");
    const sig = JSON.stringify([job.id, job.urls, [...job.renditions.values()].map((r) => r.urls)]);
    if (ul.dataset.sig === sig) return;
    ul.dataset.sig = sig;
    ul.replaceChildren();
    const link = (href, text) =>
      el("li", {}, el("a", { href, target: "_blank", rel: "noopener noreferrer", text }));
    if (job.urls.master) ul.append(link(job.urls.master, "master playlist (HLS)"));
    if (job.urls.dash) ul.append(link(job.urls.dash, "manifest (DASH)"));
    if (job.urls.poster) ul.append(link(job.urls.poster, "poster"));
    if (job.urls.storyboard) ul.append(link(job.urls.storyboard, "storyboard (WebVTT)"));
    for (const r of job.renditions.values()) {
      if (r.urls.playlist) ul.append(link(r.urls.playlist, `${r.name} playlist`));
      if (r.urls.mp4) ul.append(link(r.urls.mp4, `${r.name} MP4`));
    }
  }

  // --- player -------------------------------------------------------------------------------

  // `format`: what the viewer chose to play a job that has both (HLS or DASH).
  const player = { jobId: null, key: null, hls: null, dash: null, format: "hls" };
  const scripts = {};

  /** A vendored player library (static/hls.min.js, static/dash.all.min.js), loaded once
   * and only when a player needs it; resolves to its global, or null. */
  function loadScript(file, global) {
    if (window[global]) return Promise.resolve(window[global]);
    if (!scripts[file]) {
      scripts[file] = new Promise((resolve) => {
        const s = document.createElement("script");
        s.src = new URL(`static/${file}`, BASE).toString();
        s.onload = () => resolve(window[global] || null);
        s.onerror = () => resolve(null);
        document.head.append(s);
      });
    }
    return scripts[file];
  }

  // --- storyboard: thumbnails on seek-bar hover -------------------------------------------

  const storyboard = { url: null, cues: [] };

  /** The storyboard's WebVTT index: cues of `sheet.jpg#xywh=x,y,w,h`, resolved to URLs. */
  async function loadStoryboard(url) {
    if (storyboard.url === url) return;
    storyboard.url = url;
    storyboard.cues = [];
    try {
      const r = await fetch(url);
      if (!r.ok) return;
      const text = await r.text();
      const stamp = (t) => t.split(":").reduce((acc, part) => acc * 60 + parseFloat(part), 0);
      const cues = [];
      for (const block of text.split(/\n\n+/)) {
        const m = /([\d:.]+)\s+-->\s+([\d:.]+)\s*\n(\S+)#xywh=(\d+),(\d+),(\d+),(\d+)/.exec(block);
        if (!m) continue;
        cues.push({ start: stamp(m[1]), end: stamp(m[2]), src: new URL(m[3], url).toString(),
          x: +m[4], y: +m[5], w: +m[6], h: +m[7] });
      }
      if (storyboard.url === url) storyboard.cues = cues;
    } catch (_e) {
      /* no preview: the player works without it */
    }
  }

  /** Over the controls' strip at the bottom of the player: the thumbnail for the time
   * under the pointer, above it. */
  function onPlayerHover(e) {
    const video = $("player");
    const preview = $("storyboard-preview");
    const rect = video.getBoundingClientRect();
    const overBar = e.clientY >= rect.bottom - 48 && e.clientY <= rect.bottom;
    if (!overBar || !storyboard.cues.length || !(video.duration > 0)) {
      preview.hidden = true;
      return;
    }
    const frac = Math.min(1, Math.max(0, (e.clientX - rect.left) / rect.width));
    const at = frac * video.duration;
    const cue = storyboard.cues.find((c) => at >= c.start && at < c.end) || storyboard.cues[storyboard.cues.length - 1];
    const thumb = preview.querySelector(".thumb");
    thumb.style.width = `${cue.w}px`;
    thumb.style.height = `${cue.h}px`;
    thumb.style.backgroundImage = `url("${cue.src}")`;
    thumb.style.backgroundPosition = `-${cue.x}px -${cue.y}px`;
    preview.querySelector(".at").textContent = fmtClock(at);
    preview.style.left = `${e.clientX - rect.left}px`;
    preview.dataset.cue = String(storyboard.cues.indexOf(cue));
    preview.hidden = false;
  }

  function fmtClock(seconds) {
    const s = Math.floor(seconds);
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  function teardownPlayer() {
    const video = $("player");
    $("storyboard-preview").hidden = true;
    if (player.hls) player.hls.destroy();
    if (player.dash) player.dash.destroy();
    player.hls = null;
    player.dash = null;
    player.jobId = null;
    player.key = null;
    video.removeAttribute("src");
    video.removeAttribute("poster");
    for (const k of ["engine", "manifestParsed", "levels", "error"]) delete video.dataset[k];
    video.hidden = true;
    $("player-note").textContent = "The player appears when the job has succeeded.";
  }

  /** Which master the player plays: the job's, with the renditions ready when it was set
   * up (early), or final. A new one (more renditions ready) is loaded where playback was. */
  function playerKey(job) {
    const format = wantsDash(job) ? "dash" : "hls";
    return `${job.id}|${job.state === "succeeded" ? "final" : (job.ready || []).join(",")}|${format}`;
  }

  /** DASH when the job has a manifest (it is written at the job's end) and the viewer
   * chose it; HLS otherwise, early playback included. */
  function wantsDash(job) {
    return player.format === "dash" && Boolean(job.urls.dash);
  }

  function showFormats(job) {
    const box = $("player-formats");
    box.hidden = !job.urls.dash;
    for (const b of box.querySelectorAll("button")) {
      b.setAttribute("aria-pressed", String(b.dataset.format === (wantsDash(job) ? "dash" : "hls")));
    }
  }

  /** dash.js on the job's manifest: the same segments as the HLS playlists list. */
  async function setupDash(job, key, video, note, resume) {
    const dashjs = await loadScript("dash.all.min.js", "dashjs");
    if (player.key !== key) return;
    if (!dashjs || !dashjs.supportsMediaSource()) {
      video.dataset.engine = "none";
      note.textContent = "This browser cannot play DASH here.";
      return;
    }
    const dash = dashjs.MediaPlayer().create();
    player.dash = dash;
    video.dataset.engine = "dash.js";
    const events = dashjs.MediaPlayer.events;
    dash.on(events.STREAM_INITIALIZED, () => {
      const reps = dash.getRepresentationsByType("video");
      video.dataset.manifestParsed = "true";
      video.dataset.levels = String(reps.length);
      const sizes = reps.map((r) => `${r.height}p`).join(", ");
      note.textContent = `Adaptive stream: ${reps.length} rendition${reps.length === 1 ? "" : "s"} (${sizes}), played with dash.js.`;
      if (resume && resume.at > 0) video.currentTime = resume.at;
      if (resume && resume.playing) video.play().catch(() => {});
    });
    dash.on(events.ERROR, (e) => {
      const what = (e && e.error && (e.error.message || e.error.code)) || "fatal";
      video.dataset.error = String(what);
      note.textContent = `The player failed: ${what}.`;
    });
    dash.initialize(video, job.urls.dash, false);
    video.hidden = false;
  }

  async function setupPlayer(job) {
    const key = playerKey(job);
    if (player.key === key) return;
    const video = $("player");
    const resume = player.jobId === job.id ? { at: video.currentTime, playing: !video.paused } : null;
    teardownPlayer();
    player.jobId = job.id;
    player.key = key;
    const note = $("player-note");
    const early = job.state !== "succeeded";
    video.dataset.early = early ? "true" : "false";
    const master = job.urls.master;
    if (job.urls.poster) video.poster = job.urls.poster;
    video.setAttribute("aria-label", `Transcoded video of job ${shortId(job.id)}`);
    note.textContent = "Loading the stream…";
    showFormats(job);
    if (job.urls.storyboard) loadStoryboard(job.urls.storyboard);
    if (wantsDash(job)) return setupDash(job, key, video, note, resume);
    const Hls = await loadScript("hls.min.js", "Hls");
    if (player.key !== key) return; // the route or the master changed while loading
    if (Hls && Hls.isSupported()) {
      const hls = new Hls({ enableWorker: true });
      player.hls = hls;
      video.dataset.engine = "hls.js";
      hls.on(Hls.Events.MANIFEST_PARSED, (_e, data) => {
        video.dataset.manifestParsed = "true";
        video.dataset.levels = String(data.levels.length);
        const sizes = data.levels.map((l) => `${l.height}p`).join(", ");
        note.textContent = early
          ? `Playable early: ${sizes} ready so far, the others are still encoding (played with hls.js).`
          : `Adaptive stream: ${data.levels.length} rendition${data.levels.length === 1 ? "" : "s"} (${sizes}), played with hls.js.`;
        if (resume && resume.at > 0) video.currentTime = resume.at;
        if (resume && resume.playing) video.play().catch(() => {});
      });
      let mediaRecoveries = 0;
      hls.on(Hls.Events.ERROR, (_e, data) => {
        if (!data.fatal) return;
        if (data.type === Hls.ErrorTypes.NETWORK_ERROR) {
          hls.startLoad();
        } else if (data.type === Hls.ErrorTypes.MEDIA_ERROR && mediaRecoveries < 2) {
          mediaRecoveries += 1;
          hls.recoverMediaError();
        } else {
          video.dataset.error = data.details || "fatal";
          note.textContent = `The player failed: ${data.details || data.type}.`;
          hls.destroy();
          player.hls = null;
        }
      });
      hls.loadSource(master);
      hls.attachMedia(video);
      video.hidden = false;
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.dataset.engine = "native";
      video.src = master;
      video.hidden = false;
      note.textContent = "Adaptive stream, played by the browser's own HLS support.";
      video.addEventListener("loadedmetadata", () => (video.dataset.manifestParsed = "true"), { once: true });
    } else {
      video.dataset.engine = "none";
      note.textContent = "This browser cannot play HLS here; open the master playlist in a player.";
    }
  }

  // --- upload -------------------------------------------------------------------------------

  const SUFFIX_TYPES = {
    mp4: "video/mp4", m4v: "video/mp4", mov: "video/quicktime", mkv: "video/x-matroska",
    webm: "video/webm", avi: "video/x-msvideo", mpg: "video/mpeg", mpeg: "video/mpeg", ts: "video/mp2t",
  };

  function contentTypeOf(file) {
    if (file.type) return file.type;
    const ext = (/\.([^.]+)$/.exec(file.name) || [])[1];
    return SUFFIX_TYPES[(ext || "").toLowerCase()] || "application/octet-stream";
  }

  function uploadStatus(text, kind) {
    const p = $("upload-status");
    p.textContent = text;
    p.dataset.kind = kind || "info";
  }

  function uploadProgress(pct) {
    const bar = $("upload-bar");
    bar.hidden = pct == null;
    if (pct == null) return;
    bar.setAttribute("aria-valuenow", pct.toFixed(0));
    bar.querySelector(".fill").style.width = `${pct}%`;
  }

  /** Send `body` to the storage; XMLHttpRequest because fetch reports no upload progress.
   * Rejects with an Error whose `status` is the HTTP status (0: the connection dropped) and
   * whose message carries S3's error code when there is one. */
  function sendToStorage(method, url, body, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(method, url);
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) onProgress(e.loaded, e.total);
      };
      const fail = (message, status) => {
        const err = new Error(message);
        err.status = status;
        reject(err);
      };
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) return resolve(xhr);
        const code = (/<Code>([^<]+)<\/Code>/.exec(xhr.responseText || "") || [])[1];
        fail(`the storage refused the upload (HTTP ${xhr.status}${code ? `, ${code}` : ""})`, xhr.status);
      };
      xhr.onerror = () => fail("the connection to the storage dropped", 0);
      xhr.onabort = () => fail("the upload was cancelled", -1);
      xhr.send(body);
    });
  }

  /** Whether sending the same thing again may work: the connection dropped, the storage
   * failed (5xx), or a URL expired (403: a part's next try gets a fresh one). */
  function worthRetrying(err, fresh) {
    return err.status === 0 || err.status >= 500 || err.status === 408 || err.status === 429 ||
      (fresh && err.status === 403);
  }

  async function withRetries(what, attempt, fresh) {
    for (let n = 1; ; n++) {
      try {
        return await attempt();
      } catch (err) {
        if (n >= UPLOAD_TRIES || !worthRetrying(err, fresh)) throw err;
        const wait = Math.min(UPLOAD_RETRY_MS * 2 ** (n - 1), UPLOAD_RETRY_MAX_MS);
        uploadStatus(`${what} failed (${err.message}); sending it again (try ${n + 1} of ${UPLOAD_TRIES})…`);
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  /** A ticket of kind "post": a form, its signed fields first and the file last (the store
   * reads no field after the file). The store itself checks the signed policy: the key, the
   * type, the size bound, the expiry. */
  async function postForm(ticket, file, onProgress) {
    await withRetries("The upload", () => {
      const form = new FormData();
      for (const [name, value] of Object.entries(ticket.fields)) form.append(name, value);
      form.append("file", file);
      onProgress(0);
      return sendToStorage("POST", ticket.url, form, (loaded, total) => onProgress(loaded / total));
    }, false);
  }

  /** A ticket of kind "multipart": the parts go up a few at a time, each to a URL asked for
   * just before it is sent, and a part that fails is sent again alone (the rest of the file
   * is not); then the relay completes the upload, if its parts add up to no more than the
   * bound. Any failure aborts the upload, so no parts are left behind. */
  async function putParts(ticket, file, onProgress) {
    const ref = { bucket: ticket.bucket, key: ticket.key, upload_id: ticket.upload_id };
    const post = (path, body) =>
      api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const sent = new Array(ticket.part_count + 1).fill(0);
    const report = () => onProgress(sent.reduce((a, b) => a + b, 0) / file.size);
    let next = 1;
    let failed = false;
    const sendPart = (n) => {
      const blob = file.slice((n - 1) * ticket.part_size, Math.min(n * ticket.part_size, file.size));
      return withRetries(`Part ${n} of ${ticket.part_count}`, async () => {
        sent[n] = 0;
        report();
        const { parts } = await post(ticket.parts_url, { ...ref, numbers: [n] });
        await sendToStorage("PUT", parts[0].url, blob, (loaded) => {
          sent[n] = loaded;
          report();
        });
        sent[n] = blob.size;
        report();
      }, true);
    };
    const worker = async () => {
      while (!failed && next <= ticket.part_count) await sendPart(next++);
    };
    try {
      const workers = Array.from({ length: Math.min(PARTS_AT_ONCE, ticket.part_count) }, worker);
      await Promise.all(workers);
      return await post(ticket.complete_url, ref);
    } catch (err) {
      failed = true;
      post(ticket.abort_url, ref).catch(() => {});
      throw err;
    }
  }

  async function findJob(bucket, key) {
    const deadline = Date.now() + FIND_JOB_TIMEOUT_MS;
    const params = new URLSearchParams({ bucket, key });
    while (Date.now() < deadline) {
      try {
        const body = await api(`api/jobs?${params}`);
        if (body.jobs && body.jobs.length) return body.jobs[0];
      } catch {
        /* retry */
      }
      await new Promise((r) => setTimeout(r, 750));
    }
    throw new Error("no job appeared for the upload within 90 s");
  }

  async function onUpload(e) {
    e.preventDefault();
    const input = $("upload-file");
    const button = $("upload-button");
    const file = input.files && input.files[0];
    if (!file) {
      uploadStatus("Choose a video file first.", "error");
      input.focus();
      return;
    }
    button.disabled = true;
    uploadProgress(0);
    try {
      uploadStatus("Asking for an upload URL…");
      const ticket = await api("api/uploads", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ filename: file.name, content_type: contentTypeOf(file), size: file.size }),
      });
      const progress = (share) => uploadProgress(Math.min(100, 100 * share));
      if (ticket.kind === "multipart") {
        uploadStatus(`Uploading ${file.name} (${fmtBytes(file.size)}) in ${ticket.part_count} parts…`);
        await putParts(ticket, file, progress);
      } else {
        uploadStatus(`Uploading ${file.name} (${fmtBytes(file.size)})…`);
        await postForm(ticket, file, progress);
      }
      uploadProgress(100);
      uploadStatus(`Uploaded ${file.name}. Waiting for its job…`);
      const view = await findJob(ticket.bucket, ticket.key);
      store.applyView(view);
      uploadStatus(`Job ${shortId(view.id)} created from ${file.name}; following its progress.`, "ok");
      form().reset();
      uploadProgress(null);
      location.hash = `#/jobs/${encodeURIComponent(view.id)}`;
    } catch (err) {
      uploadStatus(`Upload failed: ${err.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  const form = () => $("upload-form");

  // --- start --------------------------------------------------------------------------------

  window.vtp = {
    JobStore, LiveClient, compareIds, fmtPercent, fmtFps, fmtSpeed, fmtEta, fmtBytes, store, live,
    player, storyboard, base: BASE.toString(),
  };

  async function onSignIn(ev) {
    ev.preventDefault();
    const input = $("signin-token");
    try {
      await signIn(input.value.trim());
      input.value = "";
      location.reload();
    } catch (err) {
      $("signin-status").textContent = `Not signed in: ${err.message}`;
    }
  }

  async function start() {
    await exchangeAddressToken();
    if (LINK_JOB && !parseRoute()) location.hash = `#/jobs/${encodeURIComponent(LINK_JOB)}`;
    if (LINK) {
      // A viewer's link shows its one job: no list to go back to, nothing to upload.
      document.querySelector("section.upload").hidden = true;
      for (const a of document.querySelectorAll("a.back")) a.hidden = true;
    }
    $("signin-form").addEventListener("submit", onSignIn);
    form().addEventListener("submit", onUpload);
    $("state-filter").addEventListener("change", () => {
      refreshList();
      schedule();
    });
    window.addEventListener("hashchange", onRoute);
    // On the player's frame, in the capture phase: the native controls may keep the
    // pointer's events to themselves once they reach them.
    const stage = $("player").parentElement;
    stage.addEventListener("pointermove", onPlayerHover, true);
    stage.addEventListener("pointerleave", () => ($("storyboard-preview").hidden = true));
    for (const b of $("player-formats").querySelectorAll("button")) {
      b.addEventListener("click", () => {
        player.format = b.dataset.format;
        const job = store.jobs.get(route.jobId);
        if (job) renderDetail();
      });
    }
    onRoute();
    if (location.protocol === "file:") {
      setMode("offline");
      return; // opened from disk (tests of the pure logic): no server to talk to
    }
    if (!LINK) refreshList(); // a link opens one job: there is no list to see
    live.start();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
