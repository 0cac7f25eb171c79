"use strict";
// Shared by the demo pages /demo/publish (WHIP) and /demo/watch (WHEP): the
// `window.ferry` object that tests read, the state and error display, and the one
// exchange with the edge: an SDP offer with every ICE candidate, POSTed to
// /{whip,whep}/{stream}; the 201 carries the answer and a Location to DELETE when done.
// Each page keeps its own media, codec and stats handling. Defines `window.FerryDemo`.
// Re-routing: a page that lost its edge asks the control plane (`control=URL,...`
// in the query, else the edge's own, from /demo/config.json) where to go next.
window.FerryDemo = (() => {
  const ICE_GATHER_MAX_MS = 2000;
  const POST_TIMEOUT_MS = 15000;
  const ROUTE_TIMEOUT_MS = 2000;
  const REROUTE_RETRY_MS = [250, 500, 1000, 2000];
  const REROUTE_MAX_ATTEMPTS = 60;

  const $ = (id) => document.getElementById(id);

  // Keep the '/' of stream names; escape everything else inside each segment.
  const streamPath = (s) => s.split("/").map(encodeURIComponent).join("/");

  function iceGathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); pc.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      const timer = setTimeout(done, ICE_GATHER_MAX_MS);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  // "HTTP 401 token_missing: an Authorization: Bearer token is required"
  // "HTTP 404 stream_not_found: no stream live/x on this edge"
  async function describeRefusal(response) {
    let text = "";
    try { text = await response.text(); } catch (e) { /* the status says enough */ }
    let detail = text;
    try {
      const body = JSON.parse(text);
      detail = [body.reason, body.error || body.message].filter(Boolean).join(": ") || text;
    } catch (e) { /* not JSON: show it as is */ }
    return `HTTP ${response.status}${detail ? " " + detail : ""}`;
  }

  // Calls `lost(why)` when a DTLS transport of `pc` closes or fails while `current()`
  // is still `pc`: how the edge ending a session (it died, drained, or was told to)
  // reaches the page. Call once per peer connection, after the answer is applied.
  function watchTransports(pc, current, lost) {
    const transports = new Set([...pc.getSenders(), ...pc.getReceivers()].map((x) => x.transport));
    for (const transport of transports) {
      if (!transport) continue;
      transport.addEventListener("statechange", () => {
        if (current() !== pc) return;
        if (transport.state === "closed" || transport.state === "failed") lost(`transport ${transport.state}`);
      });
    }
  }

  // One session of a page, set up from its query (stream=live/x, token=T).
  // `fields` are the page's own members of `window.ferry`, after state, error and
  // location and before stop. `release` stops the page's media, timers and peer
  // connection; the session resource on the edge is this module's business.
  function session({ fields, release }) {
    const params = new URLSearchParams(location.search);
    const stream = params.get("stream") || "live/demo";
    const token = params.get("token");

    const ferry = window.ferry = Object.assign(
      { state: "idle", error: null, location: null, endpoint: null, reconnects: 0 }, fields, { stop });
    let stopped = false;

    // Where to ask for a route: the query's control=, else the edge's config (read
    // now, while the edge that served this page is surely up).
    const routing = (async () => {
      const given = (params.get("control") || "").split(",").filter(Boolean);
      let config = { control_plane: [], region: "" };
      try {
        const response = await fetch("/demo/config.json");
        if (response.ok) config = await response.json();
      } catch (e) { /* a static edge, or served from elsewhere */ }
      return {
        control: given.length ? given : (config.control_plane || []),
        region: params.get("region") || config.region || "",
      };
    })();

    // Whether this page can re-route (a control plane is known).
    async function canRoute() { return (await routing).control.length > 0; }

    // The WHIP/WHEP URL of the edge routing picks now; throws when no voter answers.
    async function route(protocol) {
      const { control, region } = await routing;
      let last = "no control plane known";
      for (const base of control) {
        const query = `?kind=${protocol}` + (region ? `&region=${encodeURIComponent(region)}` : "");
        const abort = new AbortController();
        const timer = setTimeout(() => abort.abort(), ROUTE_TIMEOUT_MS);
        try {
          const response = await fetch(`${base.replace(/\/+$/, "")}/v1/route/${streamPath(stream)}${query}`,
            { signal: abort.signal });
          if (response.ok) return (await response.json()).url;
          last = `${base}: ${await describeRefusal(response)}`;
        } catch (e) {
          last = `${base}: ${e.message || e}`;
        } finally {
          clearTimeout(timer);
        }
      }
      throw new Error(`no route for ${stream}: ${last}`);
    }

    // After a lost session: asks routing for an edge and calls `attempt(endpoint)`
    // (resolves true once the session is up there) until it works, calling
    // `cleanup()` after each failed try and backing off. Resolves true when up again,
    // false when stopped or out of attempts (ferry.error says why).
    async function reroute(protocol, attempt, cleanup) {
      for (let i = 0; i < REROUTE_MAX_ATTEMPTS && !stopped && !over(); i++) {
        try {
          if (await attempt(await route(protocol))) { ferry.error = null; return true; }
        } catch (e) {
          ferry.error = e.message || String(e);
        }
        cleanup();
        const wait = REROUTE_RETRY_MS[Math.min(i, REROUTE_RETRY_MS.length - 1)];
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
      return false;
    }

    // 'ended' and 'error' are final: whichever comes first is what happened.
    const over = () => ferry.state === "ended" || ferry.state === "error";

    function setState(state) {
      if (over()) return;
      ferry.state = state;
      $("state").textContent = state;
    }

    function failFinal(message) {
      if (over()) return;
      ferry.error = String(message);
      $("error").textContent = ferry.error;
      $("error").hidden = false;
      setState("error");
      release();
    }

    function authHeaders(extra) {
      const headers = Object.assign({}, extra);
      if (token) headers.Authorization = "Bearer " + token;
      return headers;
    }

    // Offers what `peer()` sets up (it returns the RTCPeerConnection), POSTs the offer
    // to `endpoint` (default: this edge's /{protocol}/{stream}) and applies the answer;
    // `posting()` runs just before the POST, `answered()` just after the answer is
    // applied. Resolves true when the session is up; false when it failed (see
    // ferry.error) or was stopped meanwhile. A failure is final unless `retrying`.
    async function connect(protocol, { peer, posting = () => {}, answered = () => {}, endpoint, retrying = false }) {
      const url = endpoint || `/${protocol}/` + streamPath(stream);
      const fail = retrying ? (message) => { ferry.error = String(message); } : failFinal;
      let pc;
      let offer;
      try {
        pc = await peer();
        await pc.setLocalDescription(await pc.createOffer());
        await iceGathered(pc);
        offer = pc.localDescription.sdp;
      } catch (e) {
        fail(`cannot create the offer: ${e.message || e}`);
        return false;
      }
      if (stopped) return false;

      let response;
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), POST_TIMEOUT_MS);
      try {
        posting();
        response = await fetch(url, {
          method: "POST",
          headers: authHeaders({ "Content-Type": "application/sdp" }),
          body: offer,
          signal: abort.signal,
        });
      } catch (e) {
        fail(`POST ${url} failed: ${e.message || e}`);
        return false;
      } finally {
        clearTimeout(timer);
      }
      if (response.status !== 201) {
        fail(await describeRefusal(response));
        return false;
      }

      try {
        const where = response.headers.get("Location");
        if (!where) throw new Error("the 201 answer has no Location header");
        ferry.location = new URL(where, response.url || location.href).href;
        ferry.endpoint = new URL(response.url || url, location.href).href;
        if (stopped) {
          // stop() ran while the POST was in flight: end the session it just created.
          fetch(ferry.location, { method: "DELETE", headers: authHeaders() }).catch(() => {});
          return false;
        }
        await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
        answered();
      } catch (e) {
        fail(`cannot apply the answer: ${e.message || e}`);
        return false;
      }
      return true;
    }

    async function stop() {
      if (stopped) return;
      stopped = true;
      if (ferry.location) {
        try {
          await fetch(ferry.location, { method: "DELETE", headers: authHeaders() });
        } catch (e) {
          ferry.error = `DELETE failed: ${e.message || e}`;
        }
      }
      release();
      setState("ended");
    }

    // The page is going away: end the session without waiting for the answer.
    addEventListener("pagehide", () => {
      if (stopped || !ferry.location) return;
      stopped = true;
      fetch(ferry.location, { method: "DELETE", headers: authHeaders(), keepalive: true }).catch(() => {});
      release();
    });

    $("stream").textContent = stream;
    $("stop").addEventListener("click", () => { stop(); });

    return { ferry, params, stream, over, setState, fail: failFinal, connect, canRoute, reroute,
      stopped: () => stopped };
  }

  return { $, session, watchTransports };
})();
