/* Spendgate dashboard: fills in the page the gateway served, from the admin API reached through the session
 * (/dashboard/api/...). Every figure shown is one the admin API returned; this script only formats it.
 * Plain browser JavaScript, no build step; charts by the vendored Chart.js (static/vendor/). */
(function () {
  "use strict";

  const meta = (name) => document.querySelector('meta[name="spendgate-' + name + '"]').content;
  const BASE = meta("base");
  const CSRF = meta("csrf");
  const PAGE = meta("page");
  const PARAMS = JSON.parse(meta("params") || "{}");
  const main = document.getElementById("main");
  const query = new URLSearchParams(location.search);

  // ---- elements ------------------------------------------------------------------------------------------------

  /** h("p", {class: "x"}, "text", child): an element; strings become text nodes (never parsed as HTML). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else if (name === "style") Object.assign(el.style, value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function replace(target, ...children) {
    target.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  }

  // ---- the admin API, through the session ----------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, field) {
      super(message);
      this.status = status;
      this.field = field || null;
    }
  }

  async function api(path, options) {
    const opts = options || {};
    const method = opts.method || "GET";
    const url = new URL(BASE + "/api" + path, location.origin);
    for (const [name, value] of Object.entries(opts.query || {})) {
      if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
    }
    const headers = { accept: "application/json" };
    if (method !== "GET") headers["x-spendgate-csrf"] = CSRF;
    if (opts.body !== undefined) headers["content-type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method, headers, credentials: "same-origin",
        body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      });
    } catch (err) {
      throw new ApiError(0, "The gateway did not answer (" + err.message + "). Check that it is running.");
    }
    if (response.status === 401) {
      location.assign(BASE + "/login?reason=expired&next=" + encodeURIComponent(location.pathname + location.search));
      throw new ApiError(401, "Your session has ended.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      throw new ApiError(response.status, "The gateway answered " + response.status + " without a JSON body.");
    }
    if (!response.ok || !data.success) {
      const error = (data && data.error) || {};
      throw new ApiError(response.status, error.message || "The gateway answered " + response.status + ".", error.field);
    }
    return data;
  }

  /** Every page of a list endpoint (the lists the dashboard reads are short: accounts, gateways, rules). */
  async function all(path, q) {
    const items = [];
    let cursor = null;
    for (let i = 0; i < 50; i++) {
      const page = await api(path, { query: Object.assign({}, q, { limit: 500, cursor }) });
      items.push(...page.result);
      cursor = page.result_info && page.result_info.next_cursor;
      if (!cursor) break;
    }
    return items;
  }

  // ---- numbers, money and time ---------------------------------------------------------------------------------
  //
  // Money arrives as decimal strings; it is rounded as text (BigInt), never through a float: at least 2 decimals,
  // up to 4 below one dollar (so a request's $0.0042 stays visible), "< $0.0001" for smaller non-zero amounts.
  // The exact amount is in the element's title.

  function roundDecimal(text, places) {
    const negative = text.startsWith("-");
    const [whole, frac = ""] = text.replace(/^[-+]/, "").split(".");
    const digits = BigInt((whole || "0") + frac);
    const scale = frac.length;
    let scaled;
    if (scale <= places) {
      scaled = digits * 10n ** BigInt(places - scale);
    } else {
      const divisor = 10n ** BigInt(scale - places);
      scaled = digits / divisor;
      if ((digits % divisor) * 2n >= divisor) scaled += 1n; // half up
    }
    let s = scaled.toString().padStart(places + 1, "0");
    const intPart = s.slice(0, s.length - places);
    const fracPart = places ? s.slice(s.length - places) : "";
    return { negative: negative && scaled !== 0n, intPart, fracPart };
  }

  function groupThousands(intPart) {
    return intPart.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  /** "$1,234.57", "$0.0042", "< $0.0001", "$0.00"; "—" for an unknown amount (null). */
  function usdText(value) {
    if (value === null || value === undefined || value === "") return "—";
    const text = String(value);
    const abs = text.replace(/^[-+]/, "");
    const [whole, frac = ""] = abs.split(".");
    const isZero = /^0*$/.test(whole + frac);
    if (isZero) return "$0.00";
    const sign = text.startsWith("-") ? "-" : "";
    if (BigInt(whole || "0") >= 1n) {
      const r = roundDecimal(text, 2);
      return (r.negative ? "-" : "") + "$" + groupThousands(r.intPart) + "." + r.fracPart;
    }
    const r = roundDecimal(text, 4);
    if (/^0*$/.test(r.intPart + r.fracPart)) return sign + "< $0.0001";
    let fracPart = r.fracPart.replace(/0+$/, "");
    if (fracPart.length < 2) fracPart = fracPart.padEnd(2, "0");
    return (r.negative ? "-" : "") + "$" + groupThousands(r.intPart) + "." + fracPart;
  }

  function usd(value, testid) {
    const known = value !== null && value !== undefined;
    return h("span", {
      class: "money" + (known ? "" : " unknown"), "data-testid": testid, "data-usd": known ? value : null,
      title: known ? "$" + value + " USD (exact)" : "unknown: no price for this model",
    }, usdText(value));
  }

  const integerFormat = new Intl.NumberFormat("en-US");
  function count(value, testid) {
    const shown = value === null || value === undefined ? "—" : integerFormat.format(BigInt(value));
    return h("span", { class: "count", "data-testid": testid }, shown);
  }

  function percent(part, whole) {
    const p = Number(part), w = Number(whole);
    if (!w) return "—";
    const share = (100 * p) / w;
    return share > 0 && share < 0.1 ? "< 0.1%" : share.toFixed(1) + "%";
  }

  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  /** "2026-05-04 13:22 UTC" (with seconds when asked). */
  function when(iso, seconds) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    const s = d.toISOString();
    return s.slice(0, 10) + " " + s.slice(11, seconds ? 19 : 16) + " UTC";
  }

  function shortDay(d) {
    return MONTHS[d.getUTCMonth()] + " " + d.getUTCDate();
  }

  function bucketLabel(iso, interval) {
    const d = new Date(iso);
    if (interval === "hour") return shortDay(d) + " " + String(d.getUTCHours()).padStart(2, "0") + ":00";
    if (interval === "week") return "Week of " + shortDay(d);
    return shortDay(d);
  }

  function ms(value) {
    if (value === null || value === undefined) return "—";
    const n = Number(value);
    return n >= 1000 ? (n / 1000).toFixed(2) + " s" : Math.round(n) + " ms";
  }

  function isoDate(d) {
    return d.toISOString().slice(0, 10);
  }

  // ---- shared pieces of a page ---------------------------------------------------------------------------------

  function errorBox(what, err) {
    const status = err && err.status ? " (HTTP " + err.status + ")" : "";
    return h("div", { class: "error-box", role: "alert", "data-testid": "error" },
      h("strong", {}, "Could not load " + what + "."), " ", (err && err.message) || String(err), status);
  }

  function empty(title, ...detail) {
    return h("div", { class: "empty", "data-testid": "empty" }, h("p", { class: "empty-title" }, title),
      detail.length ? h("p", { class: "muted" }, detail) : null);
  }

  function card(title, body, extra) {
    return h("section", Object.assign({ class: "card" }, extra || {}), title ? h("h2", {}, title) : null, body);
  }

  function stat(label, value, note, testid) {
    return h("div", { class: "stat", "data-testid": testid }, h("div", { class: "stat-label" }, label),
      h("div", { class: "stat-value" }, value), note ? h("div", { class: "stat-note" }, note) : null);
  }

  function pageHeader(title, subtitle, actions) {
    return h("div", { class: "page-header" },
      h("div", {}, h("h1", {}, title), subtitle ? h("p", { class: "muted" }, subtitle) : null), actions || null);
  }

  function table(columns, rows, opts) {
    const o = opts || {};
    return h("div", { class: "table-wrap" }, h("table", { class: "table", "data-testid": o.testid },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.label)))),
      h("tbody", {}, rows.map((row, i) => {
        const tr = h("tr", o.rowAttrs ? o.rowAttrs(row, i) : {},
          columns.map((c) => h("td", { class: c.num ? "num" : null }, c.cell(row, i))));
        return tr;
      }))));
  }

  function link(path, text, extra) {
    return h("a", Object.assign({ href: withAccount(BASE + path) }, extra || {}), text);
  }

  function withAccount(href) {
    if (!state.account) return href;
    const url = new URL(href, location.origin);
    url.searchParams.set("account", state.account);
    return url.pathname + url.search;
  }

  /** The page's URL with `changes` applied to its query (null removes a parameter). */
  function navigate(changes, path) {
    const url = new URL(path ? BASE + path : location.href, location.origin);
    for (const [name, value] of Object.entries(changes)) {
      if (value === null || value === undefined || value === "") url.searchParams.delete(name);
      else url.searchParams.set(name, value);
    }
    if (state.account) url.searchParams.set("account", state.account);
    location.assign(url.pathname + url.search);
  }

  function field(label, control, hint) {
    return h("label", { class: "field" }, h("span", { class: "field-label" }, label), control,
      hint ? h("span", { class: "field-hint" }, hint) : null);
  }

  function select(name, options, value, attrs) {
    return h("select", Object.assign({ name }, attrs || {}),
      options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)));
  }

  function input(name, value, attrs) {
    return h("input", Object.assign({ name, value: value || "" }, attrs || {}));
  }

  function identityText(identity) {
    if (!identity) return "—";
    return identity.email || identity.user_id || (identity.service_token ? "service: " + identity.service_token : "—");
  }

  /** How a dimension is named in a sentence: "user", "metadata “team”". */
  function dimensionName(dimension) {
    if (dimension.startsWith("metadata.")) return "metadata “" + dimension.slice("metadata.".length) + "”";
    return (DIMENSION_LABELS[dimension] || dimension).toLowerCase();
  }

  /** A group's or a bucket's key, for people: "alice", "openai · gpt-4o", "(no user)". */
  function keyText(key, emptyText) {
    if (!key || typeof key !== "object") return String(key);
    if (key.other) return "Everything else";
    const names = Object.keys(key);
    const parts = names.map((k) => {
      const v = key[k];
      const value = v === null || v === undefined || v === "" ? "(no " + dimensionName(k) + ")"
        : Array.isArray(v) ? v.join(", ") : String(v);
      return names.length === 1 ? value : (DIMENSION_LABELS[k] || k) + ": " + value;
    });
    return parts.length ? parts.join(" · ") : emptyText || "All requests";
  }

  // ---- account picker ------------------------------------------------------------------------------------------

  const state = { account: null, accounts: [], gateways: [] };

  async function loadAccounts() {
    const picker = document.getElementById("account");
    state.accounts = (await all("/accounts")).map((a) => a.id);
    const wanted = query.get("account") || localStorage.getItem("spendgate.account");
    state.account = state.accounts.includes(wanted) ? wanted : state.accounts[0] || null;
    if (state.account) localStorage.setItem("spendgate.account", state.account);
    replace(picker, state.accounts.length
      ? state.accounts.map((id) => h("option", { value: id, selected: id === state.account }, id))
      : [h("option", {}, "No accounts")]);
    picker.disabled = state.accounts.length < 2;
    picker.addEventListener("change", () => {
      localStorage.setItem("spendgate.account", picker.value);
      state.account = picker.value;
      const path = PAGE === "log" ? "/logs" : location.pathname.slice(BASE.length) || "/";
      navigate({ cursor: null }, path);
    });
    for (const a of document.querySelectorAll(".nav a")) a.href = withAccount(a.getAttribute("href"));
    document.querySelector(".brand").href = withAccount(document.querySelector(".brand").getAttribute("href"));
  }

  async function loadGateways() {
    state.gateways = (await all("/accounts/" + enc(state.account) + "/gateways")).map((g) => g.id);
    return state.gateways;
  }

  const enc = encodeURIComponent;
  const acct = () => "/accounts/" + enc(state.account);

  // ---- page: credits (overview) --------------------------------------------------------------------------------

  function forecastText(forecast) {
    if (!forecast) return null;
    const rate = forecast.rate_usd_per_day;
    if (forecast.exhausted_at) {
      return h("span", { class: "forecast warn", "data-testid": "forecast" }, "At ", usd(rate), "/day, runs out ",
        when(forecast.exhausted_at));
    }
    return h("span", { class: "forecast ok", "data-testid": "forecast" }, "At ", usd(rate), "/day, does not run out");
  }

  async function overviewPage() {
    const credits = card("Credits", h("p", { class: "loading" }, "Loading…"), { "data-testid": "credits-card" });
    const topup = card("Add credits", topupForm(), { "data-testid": "topup-card" });
    const auto = card("Auto top-up", h("p", { class: "loading" }, "Loading…"), { "data-testid": "auto-topup-card" });
    const limit = card("Account spending limit", h("p", { class: "loading" }, "Loading…"));
    const statement = card("Recent transfers", h("p", { class: "loading" }, "Loading…"));
    replace(main, pageHeader("Credits", "Unified billing: what the account has loaded, what requests in flight hold, " +
      "and what is left to spend on the gateway's own provider keys."),
      h("div", { class: "grid two" }, credits, h("div", { class: "stack" }, topup, auto)),
      h("div", { class: "grid two" }, limit, statement));
    await Promise.all([renderCredits(credits, auto), renderLimit(limit), renderStatement(statement)]);
  }

  async function renderCredits(creditsCard, autoCard) {
    let c;
    try {
      c = (await api(acct() + "/credits")).result;
    } catch (err) {
      replace(creditsCard, h("h2", {}, "Credits"), errorBox("the credit balance", err));
      replace(autoCard, h("h2", {}, "Auto top-up"), errorBox("the auto top-up settings", err));
      return;
    }
    replace(creditsCard, h("h2", {}, "Credits"),
      h("div", { class: "stats" },
        stat("Available to spend", usd(c.available_usd, "credits-available"), "balance minus holds", "stat-available"),
        stat("Balance", usd(c.balance_usd, "credits-balance"), "posted transfers"),
        stat("Held for requests in flight", usd(c.pending_usd, "credits-pending"), "released or charged when they finish")),
      h("div", { class: "forecast-row" }, h("span", { class: "muted" }, "Forecast: "),
        c.forecast ? forecastText(c.forecast) : h("span", { class: "muted", "data-testid": "forecast" },
          "not available from this gateway's API"),
        c.forecast && c.forecast.exhausted_at && c.auto_topup
          ? h("span", { class: "muted small" }, " (before auto top-ups, which are on)") : null));
    renderAutoTopup(autoCard, c.auto_topup);
  }

  function newKey() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return "dashboard-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function topupForm() {
    let key = newKey(); // one key per intended top-up: a retried click never loads twice
    const amount = input("amount_usd", "", { inputmode: "decimal", placeholder: "50.00", required: true,
      pattern: "\\d+(\\.\\d{1,9})?", "data-testid": "topup-amount", "aria-label": "Amount in USD" });
    const message = h("p", { class: "form-message", role: "status" });
    const confirmRow = h("div", { class: "confirm", hidden: true });
    const form = h("form", { class: "inline-form" },
      h("div", { class: "row" }, h("span", { class: "prefix" }, "$"), amount,
        h("button", { type: "submit", class: "primary", "data-testid": "topup-submit" }, "Add credits")),
      confirmRow, message);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = amount.value.trim();
      if (!/^\d+(\.\d{1,9})?$/.test(value) || /^0*(\.0*)?$/.test(value)) {
        message.className = "form-message error";
        message.textContent = "Enter an amount in dollars, for example 50 or 12.50.";
        return;
      }
      replace(confirmRow, h("span", {}, "Add ", h("strong", {}, usdText(value)), " to account ",
        h("strong", {}, state.account), "?"),
      h("button", { type: "button", class: "primary", "data-testid": "topup-confirm", onclick: async () => {
        confirmRow.hidden = true;
        message.className = "form-message";
        message.textContent = "Adding…";
        try {
          const done = (await api(acct() + "/credits/topups", { method: "POST",
            body: { amount_usd: value, idempotency_key: key } })).result;
          key = newKey();
          amount.value = "";
          message.className = "form-message ok";
          message.textContent = (done.replayed ? "Already added earlier: " : "Added ") + usdText(done.amount_usd) +
            ". Available now: " + usdText(done.credits.available_usd) + ".";
          const fresh = document.querySelector('[data-testid="credits-card"]');
          const auto = document.querySelector('[data-testid="auto-topup-card"]');
          await renderCredits(fresh, auto);
          const statement = document.querySelector('[data-testid="statement-card"]');
          if (statement) await renderStatement(statement);
        } catch (err) {
          message.className = "form-message error";
          message.textContent = "Not added: " + err.message + " Trying again is safe; it never loads twice.";
        }
      } }, "Confirm"),
      h("button", { type: "button", onclick: () => { confirmRow.hidden = true; } }, "Cancel"));
      confirmRow.hidden = false;
    });
    return h("div", {}, h("p", { class: "muted" }, "Loads credits into this account's balance (a top-up in the ledger)."),
      form);
  }

  function renderAutoTopup(autoCard, settings) {
    const threshold = input("threshold_usd", settings ? settings.threshold_usd : "", { inputmode: "decimal",
      placeholder: "10.00", "data-testid": "auto-threshold", "aria-label": "Threshold in USD" });
    const amount = input("amount_usd", settings ? settings.amount_usd : "", { inputmode: "decimal",
      placeholder: "50.00", "data-testid": "auto-amount", "aria-label": "Recharge amount in USD" });
    const message = h("p", { class: "form-message", role: "status" });
    const current = settings
      ? h("p", { "data-testid": "auto-topup-status" }, h("span", { class: "badge ok" }, "On"), " When available credit falls below ",
        usd(settings.threshold_usd, "auto-topup-threshold"), ", add ", usd(settings.amount_usd, "auto-topup-amount"), ".")
      : h("p", { "data-testid": "auto-topup-status" }, h("span", { class: "badge" }, "Off"),
        " Credits are added only by hand.");
    const save = async (event) => {
      event.preventDefault();
      try {
        const result = (await api(acct() + "/credits/auto-topup", { method: "PUT",
          body: { threshold_usd: threshold.value.trim(), amount_usd: amount.value.trim() } })).result;
        renderAutoTopup(autoCard, result.auto_topup);
        autoCard.querySelector(".form-message").className = "form-message ok";
        autoCard.querySelector(".form-message").textContent = "Saved.";
      } catch (err) {
        message.className = "form-message error";
        message.textContent = "Not saved: " + err.message;
      }
    };
    const off = async () => {
      try {
        const result = (await api(acct() + "/credits/auto-topup", { method: "DELETE" })).result;
        renderAutoTopup(autoCard, result.auto_topup);
      } catch (err) {
        message.className = "form-message error";
        message.textContent = "Not turned off: " + err.message;
      }
    };
    replace(autoCard, h("h2", {}, "Auto top-up"), current,
      h("form", { class: "inline-form", onsubmit: save },
        h("div", { class: "row" }, field("Below", h("span", { class: "with-prefix" }, "$", threshold)),
          field("add", h("span", { class: "with-prefix" }, "$", amount)),
          h("button", { type: "submit", "data-testid": "auto-save" }, settings ? "Update" : "Turn on"),
          settings ? h("button", { type: "button", class: "link danger", onclick: off }, "Turn off") : null)),
      message);
  }

  function limitForecast(limit) {
    const f = limit.forecast;
    if (!f) return null;
    const text = f.exhausted_at
      ? h("span", { class: "forecast warn", "data-testid": "limit-forecast" }, "At ", usd(f.rate_usd_per_day),
        "/day, the limit is reached ", when(f.exhausted_at))
      : h("span", { class: "forecast ok", "data-testid": "limit-forecast" }, "At ", usd(f.rate_usd_per_day),
        "/day, ", limit.strategy === "fixed" ? "not reached before the window resets" : "not reached at this rate");
    return h("div", { class: "forecast-row" }, h("span", { class: "muted" }, "Forecast: "), text);
  }

  async function renderLimit(limitCard) {
    try {
      const limit = (await api(acct() + "/billing/spending-limit")).result;
      if (!limit) {
        replace(limitCard, h("h2", {}, "Account spending limit"),
          empty("No account spending limit.", "Unified-billing spend is capped only by the credit balance and the " +
            "gateways' spend limits."));
        return;
      }
      const per = { daily: "day", weekly: "week", monthly: "month" }[limit.duration] || limit.duration;
      replace(limitCard, h("h2", {}, "Account spending limit"),
        h("p", {}, usd(limit.amount_usd), " per ", per, " (", limit.strategy === "fixed" ? "calendar window, UTC" :
          "rolling window", ")"),
        meter(limit.spent_usd, limit.pending_usd, limit.amount_usd),
        h("div", { class: "stats" }, stat("Spent", usd(limit.spent_usd)), stat("Held", usd(limit.pending_usd)),
          stat("Remaining", usd(limit.remaining_usd))),
        limitForecast(limit));
    } catch (err) {
      replace(limitCard, h("h2", {}, "Account spending limit"), errorBox("the spending limit", err));
    }
  }

  const CODE_LABELS = { topup: "Top-up", auto_topup: "Auto top-up", usage: "Usage", refund: "Refund",
    adjustment: "Adjustment" };

  async function renderStatement(statementCard) {
    statementCard.setAttribute("data-testid", "statement-card");
    try {
      const page = await api(acct() + "/credits/statement", { query: { limit: 10 } });
      const rows = page.result.slice().sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
      replace(statementCard, h("h2", {}, "Recent transfers"), rows.length
        ? table([
          { label: "Time", cell: (r) => when(r.created_at) },
          { label: "Kind", cell: (r) => CODE_LABELS[r.code] || r.code },
          { label: "Amount", num: true, cell: (r) => usd(r.amount_usd) },
        ], rows, { testid: "statement" })
        : empty("No transfers yet.", "Top-ups and the usage of unified-billing requests appear here."));
    } catch (err) {
      replace(statementCard, h("h2", {}, "Recent transfers"), errorBox("the statement", err));
    }
  }

  function meter(spent, pending, budget) {
    const b = Number(budget) || 0;
    const s = b ? Math.min(100, (100 * Number(spent)) / b) : 0;
    const p = b ? Math.min(100 - s, (100 * Number(pending)) / b) : 0;
    const level = s + p >= 90 ? " high" : s + p >= 50 ? " mid" : "";
    return h("div", { class: "meter-row" },
      h("div", { class: "meter" + level, title: "spent (dark) and held for requests in flight (light)" },
        h("div", { class: "meter-spent", style: { width: s + "%" } }),
        h("div", { class: "meter-pending", style: { width: p + "%" } })),
      h("span", { class: "meter-label" }, percent(Number(spent) + Number(pending), b)));
  }

  // ---- page: spend over time -----------------------------------------------------------------------------------

  const DIMENSIONS = [
    ["model", "Model"], ["provider", "Provider"], ["gateway", "Gateway"], ["cf.user_id", "User"],
    ["cf.user.email", "Email"], ["cf.user.groups", "Group"], ["cf.service_token", "Service token"],
    ["billing_mode", "Billing mode"], ["status_code", "Status code"], ["metadata", "Metadata key…"],
  ];
  const DIMENSION_LABELS = Object.fromEntries(DIMENSIONS);
  const RANGES = [["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"], ["90d", "Last 90 days"],
    ["custom", "Custom…"]];
  const PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16",
    "#64748b", "#d97706"];
  const OTHER_COLOR = "#cbd5e1";

  /** The time range a page's query asks for: ?range=24h|7d|30d|90d or ?range=custom&from=YYYY-MM-DD&to=YYYY-MM-DD. */
  function rangeFromQuery(defaultRange) {
    const range = query.get("range") || defaultRange;
    const now = new Date();
    if (range === "custom") {
      const from = query.get("from"), to = query.get("to");
      const start = from ? new Date(from + "T00:00:00Z") : null;
      // the whole of the `to` day
      const end = to ? new Date(new Date(to + "T00:00:00Z").getTime() + 86400000) : null;
      return { range, from: start && !isNaN(start) ? start.toISOString() : null,
        to: end && !isNaN(end) ? end.toISOString() : null, fromDay: from || "", toDay: to || "" };
    }
    const hours = { "24h": 24, "7d": 168, "30d": 720, "90d": 2160 }[range] || 720;
    const start = new Date(now.getTime() - hours * 3600000);
    // from the start of the hour, so that hourly bars are whole hours
    start.setUTCMinutes(0, 0, 0);
    return { range, from: start.toISOString(), to: null, fromDay: isoDate(start), toDay: isoDate(now) };
  }

  function rangeControls(r) {
    const from = input("from", r.fromDay, { type: "date", "data-testid": "filter-from" });
    const to = input("to", r.toDay, { type: "date", "data-testid": "filter-to" });
    const rangeSelect = select("range", RANGES, r.range, { "data-testid": "filter-range" });
    const custom = h("span", { class: "custom-range", hidden: r.range !== "custom" }, field("From", from), field("To", to));
    rangeSelect.addEventListener("change", () => { custom.hidden = rangeSelect.value !== "custom"; });
    return [field("Period", rangeSelect), custom];
  }

  function formValues(form) {
    const values = {};
    for (const [name, value] of new FormData(form).entries()) values[name] = String(value).trim();
    return values;
  }

  // The filters the spend page and the log explorer share, by their query parameter in the admin API.
  const FILTERS = [
    ["provider", "Provider", "any"], ["model", "Model", "any"], ["user_id", "User id", "any"],
    ["email", "Email", "any"], ["group", "Group", "any"], ["service_token", "Service token", "any"],
    ["guardrail", "Guardrail found", "any category"],
  ];

  /** What the gateway's own checks did to a request: a cache hit, a rate limit, guardrail findings. */
  const RATE_LIMITED = "Rate limit exceeded";
  const SIDE = { prompt: "prompt", response: "answer" };
  const ACTION = { flag: "flagged", redact: "redacted", block: "blocked" };

  function guardrailFindings(l) {
    const found = [];
    for (const side of ["prompt", "response"]) {
      for (const [category, action] of Object.entries((l.guardrails || {})[side] || {})) {
        found.push({ side, category, action });
      }
    }
    return found;
  }

  function checkBadges(l) {
    const badges = [];
    if (l.cached) badges.push(h("span", { class: "badge ok", "data-testid": "check-cache",
      title: "answered from the response cache: nothing went upstream" }, "cache hit"));
    if (l.status_code === 429 && l.error === RATE_LIMITED) badges.push(h("span", { class: "badge bad",
      "data-testid": "check-rate", title: "refused by one of the gateway's rate limits" }, "rate limited"));
    for (const f of guardrailFindings(l)) {
      badges.push(h("span", { class: "badge " + (f.action === "block" ? "bad" : "warn"), "data-testid": "check-guardrail",
        title: "a guardrail found " + f.category + " in the " + SIDE[f.side] }, f.category + " " + ACTION[f.action] +
        " (" + SIDE[f.side] + ")"));
    }
    return badges.length ? h("span", { class: "checks" }, badges) : h("span", { class: "muted" }, "—");
  }

  // the analytics API takes the logs API's filters, but for the guardrails
  const SPEND_FILTERS = FILTERS.filter(([name]) => name !== "guardrail");

  function filterFields(values, filters = FILTERS) {
    return filters.map(([name, label, placeholder]) => field(label, input(name, values[name], { placeholder,
      "data-testid": "filter-" + name, autocomplete: "off" })));
  }

  function metadataField(values) {
    return field("Metadata", h("span", { class: "pair" },
      input("meta_key", values.meta_key, { placeholder: "key", "data-testid": "filter-meta-key", autocomplete: "off" }),
      h("span", {}, "="),
      input("meta_value", values.meta_value, { placeholder: "value", "data-testid": "filter-meta-value",
        autocomplete: "off" })));
  }

  function filterQuery(values, filters = FILTERS) {
    const q = {};
    for (const [name] of filters) if (values[name]) q[name] = values[name];
    if (values.meta_key && values.meta_value) q["metadata." + values.meta_key] = values.meta_value;
    return q;
  }

  function currentValues(names) {
    const values = {};
    for (const name of names) values[name] = query.get(name) || "";
    return values;
  }

  let chart = null;

  async function spendPage() {
    const r = rangeFromQuery("30d");
    const values = currentValues(["gateway", "group_by", "meta_group", "interval", "meta_key", "meta_value",
      ...SPEND_FILTERS.map((f) => f[0])]);
    const groupBy = values.group_by || "model";
    const interval = values.interval || (r.range === "24h" ? "hour" : r.range === "90d" ? "week" : "day");
    const gateways = await loadGateways().catch(() => []);

    const metaGroup = input("meta_group", values.meta_group, { placeholder: "e.g. team", autocomplete: "off",
      "data-testid": "group-meta-key" });
    const metaGroupField = h("span", { hidden: groupBy !== "metadata" }, field("Metadata key", metaGroup));
    const groupSelect = select("group_by", DIMENSIONS, groupBy, { "data-testid": "group-by" });
    groupSelect.addEventListener("change", () => { metaGroupField.hidden = groupSelect.value !== "metadata"; });
    const form = h("form", { class: "filters", "data-testid": "spend-filters" },
      h("div", { class: "row" }, rangeControls(r),
        field("Gateway", select("gateway", [["", "All gateways"], ...gateways.map((g) => [g, g])], values.gateway,
          { "data-testid": "filter-gateway" })),
        field("Stack by", groupSelect), metaGroupField,
        field("Bars per", select("interval", [["hour", "Hour"], ["day", "Day"], ["week", "Week"]], interval,
          { "data-testid": "filter-interval" }))),
      h("div", { class: "row" }, filterFields(values, SPEND_FILTERS), metadataField(values)),
      h("div", { class: "row actions" }, h("button", { type: "submit", class: "primary", "data-testid": "apply" }, "Apply"),
        h("a", { href: withAccount(BASE + "/spend"), class: "button-link" }, "Reset"),
        h("span", { class: "muted small", "data-testid": "filter-note" }, "Filters narrow every figure on this page " +
          "(totals, groups, chart, CSV and the spend rate), as they narrow the request logs.")));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const v = formValues(form);
      navigate({ range: v.range, from: v.range === "custom" ? v.from : null,
        to: v.range === "custom" ? v.to : null, gateway: v.gateway, group_by: v.group_by,
        meta_group: v.group_by === "metadata" ? v.meta_group : null, interval: v.interval,
        meta_key: v.meta_key || null, meta_value: v.meta_value || null,
        ...Object.fromEntries(SPEND_FILTERS.map(([name]) => [name, v[name] || null])) });
    });

    const results = h("div", {}, h("p", { class: "loading" }, "Loading…"));
    replace(main, pageHeader("Spend", "Cost over time, stacked by the dimension you choose. Counted from the request logs."),
      card(null, form), results);

    const dimension = groupBy === "metadata" ? (values.meta_group ? "metadata." + values.meta_group : null) : groupBy;
    if (!dimension) {
      replace(results, empty("Name a metadata key to stack by.", "For example team, project or user_id: any key " +
        "clients send in cf-aig-metadata."));
      return;
    }
    const q = Object.assign({ from: r.from, to: r.to, gateway: values.gateway, group_by: dimension, interval,
      limit: 8 }, filterQuery(values, SPEND_FILTERS));
    let data;
    try {
      data = (await api(acct() + "/analytics", { query: q })).result;
    } catch (err) {
      if (err.status === 404 && /no admin endpoint/.test(err.message)) {
        replace(results, empty("Spend analytics are not available on this gateway.",
          "This version of the gateway does not answer GET /admin/accounts/{account}/analytics."));
      } else {
        replace(results, errorBox("spend", err));
      }
      return;
    }
    renderSpend(results, data, dimension, q);
  }

  function renderSpend(results, data, dimension, q) {
    const t = data.totals;
    const csv = new URL(BASE + "/api" + acct() + "/analytics", location.origin);
    for (const [k, v] of Object.entries(Object.assign({}, q, { format: "csv", limit: 1000 }))) {
      if (v) csv.searchParams.set(k, v);
    }
    const period = when(data.from) + " – " + when(data.to);
    const totals = h("div", { class: "stats wide", "data-testid": "spend-totals" },
      stat("Cost", usd(t.cost_usd, "total-cost")), stat("Requests", count(t.requests, "total-requests")),
      stat("Errors", count(t.errors, "total-errors"), t.requests ? percent(t.errors, t.requests) + " of requests" : null),
      stat("Tokens in", count(t.tokens_in, "total-tokens-in")), stat("Tokens out", count(t.tokens_out, "total-tokens-out")),
      data.forecast ? stat("Spend rate", [usd(data.forecast.rate_usd_per_day, "burn-rate"), " / day"],
        data.forecast.exhausted_at ? "at the unified-billing part of it, credits run out " +
          when(data.forecast.exhausted_at) : "all billing modes") : null);
    if (!Number(t.requests)) {
      replace(results, card(null, totals),
        empty("No requests in this period.", "Try a longer period, another gateway, or fewer filters."));
      return;
    }
    const canvas = h("canvas", { "data-testid": "spend-chart", role: "img",
      "aria-label": "Cost per " + data.interval + ", stacked by " + (DIMENSION_LABELS[dimension] || dimension) });
    const groups = data.groups || [];
    replace(results,
      card(null, [h("div", { class: "card-head" }, h("span", { class: "muted" }, period),
        h("a", { href: csv.pathname + csv.search, class: "button-link", download: "spend.csv" }, "Download CSV")), totals]),
      card("Cost per " + data.interval + " by " + (DIMENSION_LABELS[dimension] || dimension),
        h("div", { class: "chart-box" }, canvas)),
      card("By " + (DIMENSION_LABELS[dimension] || dimension), table([
        { label: DIMENSION_LABELS[dimension] || dimension, cell: (g, i) => h("span", { class: "key" },
          h("span", { class: "swatch", style: { background: g.key && g.key.other ? OTHER_COLOR : PALETTE[i % PALETTE.length] } }),
          keyText(g.key)) },
        { label: "Requests", num: true, cell: (g) => logsOf(g, q, dimension) },
        { label: "Errors", num: true, cell: (g) => count(g.errors) },
        { label: "Tokens in", num: true, cell: (g) => count(g.tokens_in) },
        { label: "Tokens out", num: true, cell: (g) => count(g.tokens_out) },
        { label: "Cost", num: true, cell: (g) => usd(g.cost_usd, "group-cost") },
        { label: "Share", num: true, cell: (g) => percent(g.cost_usd, t.cost_usd) },
      ], groups, { testid: "spend-groups", rowAttrs: (g) => ({ "data-key": JSON.stringify(g.key) }) }),
      { "data-testid": "spend-groups-card" }));
    drawSpendChart(canvas, groups, data.interval);
  }

  // a group's requests in the log explorer, where the logs can filter by its dimension
  const LOG_FILTER = { provider: "provider", model: "model", "cf.user_id": "user_id", "cf.user.email": "email",
    "cf.user.groups": "group", "cf.service_token": "service_token", gateway: "gateway" };

  function logsOf(g, q, dimension) {
    const shown = count(g.requests);
    const value = g.key ? g.key[dimension] : null;
    if (!g.key || g.key.other || value === null || value === undefined) return shown;
    const params = new URLSearchParams();
    if (LOG_FILTER[dimension]) params.set(LOG_FILTER[dimension], String(value));
    else if (dimension.startsWith("metadata.")) {
      params.set("meta_key", dimension.slice("metadata.".length));
      params.set("meta_value", String(value));
    } else return shown;
    if (q.gateway && dimension !== "gateway") params.set("gateway", q.gateway);
    const r = query.get("range");
    if (r) params.set("range", r);
    for (const name of ["from", "to"]) if (query.get(name)) params.set(name, query.get(name));
    return link("/logs?" + params.toString(), shown, { title: "Open these requests in the request logs" });
  }

  function drawSpendChart(canvas, groups, interval) {
    const starts = [];
    for (const g of groups) for (const p of g.series || []) if (!starts.includes(p.start)) starts.push(p.start);
    starts.sort();
    const datasets = groups.map((g, i) => {
      const byStart = new Map((g.series || []).map((p) => [p.start, Number(p.cost_usd || 0)]));
      return {
        label: keyText(g.key), data: starts.map((s) => byStart.get(s) || 0), stack: "cost",
        backgroundColor: g.key && g.key.other ? OTHER_COLOR : PALETTE[i % PALETTE.length], borderWidth: 0,
      };
    });
    if (chart) chart.destroy();
    chart = new window.Chart(canvas, {
      type: "bar",
      data: { labels: starts.map((s) => bucketLabel(s, interval)), datasets },
      options: {
        animation: false, maintainAspectRatio: false, responsive: true,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: true, grid: { display: false } },
          y: { stacked: true, beginAtZero: true, title: { display: true, text: "USD" },
            ticks: { callback: (v) => usdText(String(v)) } },
        },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12 } },
          tooltip: { callbacks: { label: (ctx) => ctx.dataset.label + ": " + usdText(ctx.parsed.y.toFixed(6)) } },
        },
      },
    });
  }

  // ---- page: spend limits --------------------------------------------------------------------------------------

  function scopeText(scope) {
    const parts = Object.entries(scope || {}).map(([dim, how]) => {
      const name = dimensionName(dim);
      if (how && how.split) return "a budget for each " + name;
      if (how && "equals" in how) return "only " + name + " " + how.equals;
      return name;
    });
    return parts.length ? parts.join(", ") : "one budget for all requests";
  }

  function actionText(action) {
    if (action === "block" || !action) return "Blocks requests (429) when exhausted";
    if (action === "monitor") return "Monitor only: never blocks";
    if (action.fallback_model) return "Falls back to " + action.fallback_model + " when exhausted";
    return JSON.stringify(action);
  }

  function bucketForecast(b, rule) {
    if (!b.forecast) return h("span", { class: "muted" }, "—");
    if (b.forecast.exhausted_at) {
      return h("span", { class: "forecast warn" }, "Runs out ", when(b.forecast.exhausted_at),
        h("br"), h("span", { class: "small muted" }, usdText(b.forecast.rate_usd_per_day), "/day"));
    }
    return h("span", { class: "forecast ok" }, rule.window_type === "rolling" ? "Not used up at this rate" :
      "Lasts until the reset",
      h("br"), h("span", { class: "small muted" }, usdText(b.forecast.rate_usd_per_day), "/day"));
  }

  function ruleCard(gateway, rule) {
    const per = { daily: "day", weekly: "week", monthly: "month" }[rule.window] || rule.window;
    const windowText = (rule.window_type || "fixed") === "rolling"
      ? "rolling " + { daily: "24 hours", weekly: "7 days", monthly: "30 days" }[rule.window]
      : "resets " + { daily: "daily at 00:00 UTC", weekly: "Mondays 00:00 UTC", monthly: "on the 1st, 00:00 UTC" }[rule.window];
    const buckets = rule.buckets || [];
    return h("section", { class: "card rule", "data-testid": "rule", "data-rule-id": rule.id },
      h("div", { class: "card-head" }, h("h2", {}, rule.name), h("span", { class: "badge" }, "gateway " + gateway)),
      h("p", {}, h("strong", {}, usd(rule.budget_usd, "rule-budget")), " per ", per, " (", windowText, ") · ",
        scopeText(rule.scope), " · ", actionText(rule.action),
        rule.alert_at && rule.alert_at.length ? " · alerts at " + rule.alert_at.map((a) =>
          typeof a === "number" ? Math.round(a * 100) + "%" : a).join(", ") : ""),
      buckets.length ? table([
        { label: "Bucket", cell: (b) => keyText(b.key, Object.keys(rule.scope || {}).length
          ? "Every matching request (one budget)" : "Every request (one budget)") },
        { label: "Window from", cell: (b) => when(b.window_start) },
        { label: "Used", cell: (b) => meter(b.spent_usd, b.pending_usd, rule.budget_usd) },
        { label: "Spent", num: true, cell: (b) => usd(b.spent_usd, "bucket-spent") },
        { label: "Held", num: true, cell: (b) => usd(b.pending_usd, "bucket-pending") },
        { label: "Remaining", num: true, cell: (b) => usd(b.remaining_usd, "bucket-remaining") },
        { label: "Forecast", cell: (b) => bucketForecast(b, rule) },
      ], buckets, { testid: "buckets", rowAttrs: (b) => ({ "data-testid": "bucket", "data-key": JSON.stringify(b.key) }) })
        : empty("No spend in this window yet.", "A bucket appears when the first matching request is made."));
  }

  async function rulesPage() {
    const values = currentValues(["gateway"]);
    const body = h("div", {}, h("p", { class: "loading" }, "Loading…"));
    replace(main, pageHeader("Spend limits", "Each rule's budget, and every bucket it keeps: spent, held for requests in " +
      "flight, remaining, and when the current rate would exhaust it."), body);
    let gateways;
    try {
      gateways = await loadGateways();
    } catch (err) {
      replace(body, errorBox("the gateways", err));
      return;
    }
    const shown = values.gateway ? [values.gateway] : gateways;
    const picker = select("gateway", [["", "All gateways"], ...gateways.map((g) => [g, g])], values.gateway,
      { "data-testid": "filter-gateway" });
    picker.addEventListener("change", () => navigate({ gateway: picker.value }));
    const sections = await Promise.all(shown.map(async (g) => {
      try {
        return [g, await all(acct() + "/gateways/" + enc(g) + "/spend-limits"), null];
      } catch (err) {
        return [g, [], err];
      }
    }));
    const cards = [];
    for (const [g, rules, err] of sections) {
      if (err) cards.push(errorBox("the rules of gateway " + g, err));
      for (const rule of rules) cards.push(ruleCard(g, rule));
    }
    replace(body, h("div", { class: "filters row" }, field("Gateway", picker)),
      cards.length ? cards : empty("No spend limits" + (values.gateway ? " on gateway " + values.gateway : "") + ".",
        "Add a rule with POST /admin/accounts/" + state.account + "/gateways/{gateway}/spend-limits or " +
        "`spendgate limits create`; its buckets appear here."));
  }

  // ---- page: anomalies -----------------------------------------------------------------------------------------

  async function anomaliesPage() {
    const r = rangeFromQuery("30d");
    const values = currentValues(["gateway"]);
    const form = h("form", { class: "filters" }, h("div", { class: "row" }, rangeControls(r),
      h("button", { type: "submit", class: "primary" }, "Apply")));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const v = formValues(form);
      navigate({ range: v.range, from: v.range === "custom" ? v.from : null, to: v.range === "custom" ? v.to : null });
    });
    const body = h("div", {}, h("p", { class: "loading" }, "Loading…"));
    replace(main, pageHeader("Anomalies", "Identities whose cost on one day was unusually high: more than twice their own " +
      "30-day 95th percentile and above the account's 99th percentile across identities. Flags never block."),
    card(null, form), body);
    let data;
    try {
      data = (await api(acct() + "/analytics/anomalies", { query: { from: r.fromDay, to: r.toDay,
        gateway: values.gateway } })).result;
    } catch (err) {
      if (err.status === 404 && /no admin endpoint/.test(err.message)) {
        replace(body, empty("Anomaly detection is not available on this gateway.",
          "This version of the gateway does not answer GET /admin/accounts/{account}/analytics/anomalies."));
      } else {
        replace(body, errorBox("anomalies", err));
      }
      return;
    }
    const rows = data.anomalies || [];
    const period = "From " + data.from + " to " + data.to + " (whole days, UTC).";
    if (!rows.length) {
      replace(body, card(null, [h("p", { class: "muted" }, period),
        empty("No unusual spend in this period.", "Every person and service token stayed within its usual daily cost.")]));
      return;
    }
    replace(body, card(null, [h("p", { class: "muted" }, period), table([
      { label: "Who", cell: (a) => anomalyIdentity(a.identity) },
      { label: "Day", cell: (a) => a.day },
      { label: "Requests", num: true, cell: (a) => count(a.requests) },
      { label: "Cost that day", num: true, cell: (a) => h("strong", {}, usd(a.cost_usd, "anomaly-cost")) },
      { label: "Flagged above", num: true, cell: (a) => usd(a.threshold_usd) },
      { label: "Their usual day (p95)", num: true, cell: (a) => usd(a.identity_p95_usd) },
      { label: "Account p99", num: true, cell: (a) => usd(a.account_p99_usd) },
    ], rows, { testid: "anomalies" })]));
  }

  function anomalyIdentity(identity) {
    if (!identity || typeof identity !== "object") return identity ? String(identity) : "—";
    if (identity["cf.service_token"]) return ["Service token ", h("code", {}, identity["cf.service_token"])];
    return Object.entries(identity).map(([k, v]) => (DIMENSION_LABELS[k] || k) + " " + v).join(", ");
  }

  // ---- page: request logs --------------------------------------------------------------------------------------

  const STATUS_CLASS = (code) => (code >= 500 ? "bad" : code >= 400 ? "warn" : "ok");

  async function logsPage() {
    const values = currentValues(["gateway", "range", "from", "to", "status_code", "success", "cached", "cursor",
      "meta_key", "meta_value", ...FILTERS.map((f) => f[0])]);
    let gateways;
    try {
      gateways = await loadGateways();
    } catch (err) {
      replace(main, pageHeader("Request logs"), errorBox("the gateways", err));
      return;
    }
    // the gateway asked for; else the first one an operator named (every account also has `default`)
    const gateway = gateways.includes(values.gateway) ? values.gateway
      : gateways.find((g) => g !== "default") || gateways[0];
    const r = rangeFromQuery("30d");
    const form = h("form", { class: "filters", "data-testid": "log-filters" },
      h("div", { class: "row" },
        field("Gateway", select("gateway", gateways.map((g) => [g, g]), gateway, { "data-testid": "filter-gateway" })),
        rangeControls(r),
        field("Status", input("status_code", values.status_code, { placeholder: "e.g. 429", inputmode: "numeric",
          "data-testid": "filter-status", size: 5 })),
        field("Outcome", select("success", [["", "Any"], ["true", "Succeeded"], ["false", "Failed or refused"]],
          values.success, { "data-testid": "filter-success" })),
        field("Cache", select("cached", [["", "Any"], ["true", "Cache hits"], ["false", "Not from the cache"]],
          values.cached, { "data-testid": "filter-cached" }))),
      h("div", { class: "row" }, filterFields(values), metadataField(values)),
      h("div", { class: "row actions" }, h("button", { type: "submit", class: "primary", "data-testid": "apply" }, "Apply"),
        h("a", { href: withAccount(BASE + "/logs"), class: "button-link" }, "Reset")));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const v = formValues(form);
      navigate(Object.assign({ gateway: v.gateway, range: v.range, from: v.range === "custom" ? v.from : null,
        to: v.range === "custom" ? v.to : null, status_code: v.status_code, success: v.success, cached: v.cached,
        cursor: null,
        meta_key: v.meta_key, meta_value: v.meta_value },
      Object.fromEntries(FILTERS.map(([name]) => [name, v[name] || null]))));
    });
    const body = h("div", {}, h("p", { class: "loading" }, "Loading…"));
    replace(main, pageHeader("Request logs", "One row per request, newest first, blocked ones included."),
      card(null, form), body);
    if (!gateway) {
      replace(body, empty("This account has no gateways yet."));
      return;
    }
    const q = Object.assign({ from: r.from, to: r.to, status_code: values.status_code, success: values.success,
      cached: values.cached, cursor: values.cursor, limit: 50 }, filterQuery(values));
    let page;
    try {
      page = await api(acct() + "/gateways/" + enc(gateway) + "/logs", { query: q });
    } catch (err) {
      replace(body, errorBox("the logs", err));
      return;
    }
    const rows = page.result;
    const next = page.result_info && page.result_info.next_cursor;
    const pager = h("div", { class: "pager" },
      values.cursor ? h("a", { href: "#", class: "button-link", onclick: (e) => { e.preventDefault(); navigate({ cursor: null }); } },
        "← Newest") : null,
      next ? h("a", { href: "#", class: "button-link", "data-testid": "older", onclick: (e) => {
        e.preventDefault(); navigate({ cursor: next });
      } }, "Older →") : null);
    if (!rows.length) {
      replace(body, card(null, [empty(values.cursor ? "No older requests." : "No requests match these filters.",
        "Requests appear here as soon as the gateway has written their log rows."), pager]));
      return;
    }
    replace(body, card(null, [table([
      { label: "Time", cell: (l) => link("/logs/" + enc(gateway) + "/" + enc(l.id), when(l.created_at, true),
        { "data-testid": "log-link" }) },
      { label: "Status", cell: (l) => h("span", { class: "badge " + STATUS_CLASS(l.status_code) }, String(l.status_code)) },
      { label: "Checks", cell: checkBadges },
      { label: "Provider / model", cell: (l) => [h("span", { class: "muted" }, l.provider || "—", " / "), l.model || "—",
        l.step ? h("span", { class: "badge warn", title: "served by fallback number " + l.step }, "fallback " + l.step) : null] },
      { label: "Who", cell: (l) => identityText(l.identity) },
      { label: "Billing", cell: (l) => l.billing_mode === "unified" ? "Unified" : l.billing_mode === "byok" ? "Own key" : "—" },
      { label: "Tokens in / out", num: true, cell: (l) => [count(l.tokens_in), " / ", count(l.tokens_out)] },
      { label: "Cost", num: true, cell: (l) => logCost(l, "log-cost") },
      { label: "Duration", num: true, cell: (l) => ms(l.duration_ms) },
    ], rows, { testid: "logs", rowAttrs: (l) => ({ "data-testid": "log-row", "data-log-id": l.id }) }), pager]));
  }

  /** A request's cost; a refused or failed one without a cost was not charged (not "no price"). */
  function logCost(l, testid) {
    if (l.cost_usd === null && !l.success) {
      return h("span", { class: "money unknown", "data-testid": testid, title: "refused or failed: nothing was charged" },
        "not charged");
    }
    return usd(l.cost_usd, testid);
  }

  // ---- page: one request ---------------------------------------------------------------------------------------

  function facts(pairs, testid) {
    return h("dl", { class: "facts", "data-testid": testid }, pairs.filter(Boolean).map(([label, value, id]) =>
      [h("dt", {}, label), h("dd", { "data-testid": id }, value === null || value === undefined || value === "" ? "—" : value)]));
  }

  function body(label, text) {
    if (text === null || text === undefined) return null;
    let shown = text;
    if (typeof text === "string") {
      try {
        shown = JSON.stringify(JSON.parse(text), null, 2);
      } catch (err) {
        shown = text;
      }
    } else {
      shown = JSON.stringify(text, null, 2);
    }
    return h("details", { class: "payload" }, h("summary", {}, label), h("pre", {}, shown));
  }

  async function logPage() {
    const gateway = PARAMS.gateway, id = PARAMS.log_id;
    const back = link("/logs?gateway=" + enc(gateway), "← Request logs");
    replace(main, h("p", {}, back), h("p", { class: "loading" }, "Loading…"));
    let l;
    try {
      l = (await api(acct() + "/gateways/" + enc(gateway) + "/logs/" + enc(id))).result;
    } catch (err) {
      replace(main, h("p", {}, back), err.status === 404
        ? empty("No such request on gateway " + gateway + ".", "It may belong to another account, or have been " +
          "removed by the gateway's log retention.")
        : errorBox("the request", err));
      return;
    }
    const identity = l.identity || {};
    const metadata = Object.entries(l.metadata || {});
    const findings = guardrailFindings(l);
    replace(main, h("p", {}, back),
      pageHeader(h("span", {}, (l.provider || "?") + " / " + (l.model || "?"), " ",
        h("span", { class: "badge " + STATUS_CLASS(l.status_code), "data-testid": "detail-status" }, String(l.status_code))),
      when(l.created_at, true) + " · gateway " + gateway + " · request " + l.id),
      l.error ? h("div", { class: "error-box" }, h("strong", {}, "Refused or failed: "), l.error) : null,
      h("div", { class: "grid two" },
        card("Cost and tokens", facts([
          ["Cost", logCost(l, "detail-cost"), null],
          ["Priced by", l.cost_usd === null ? (l.success ? "no known price for this model" : "—")
            : l.custom_cost ? "the client's custom cost header" : "price catalog or gateway override"],
          ["Billing", l.billing_mode === "unified" ? "Unified billing (gateway's key, paid from credits)" :
            l.billing_mode === "byok" ? "Own key (BYOK)" : null],
          ["Tokens in", count(l.tokens_in, "detail-tokens-in")],
          ["Tokens out", count(l.tokens_out, "detail-tokens-out")],
          ["Cache read / write", [count(l.tokens_cache_read), " / ", count(l.tokens_cache_write)]],
        ], "detail-cost-facts")),
        card("Who", facts([
          ["User id", identity.user_id, "detail-user"],
          ["Email", identity.email],
          ["Groups", identity.groups && identity.groups.length ? identity.groups.join(", ") : null],
          ["Service token", identity.service_token],
        ], "detail-identity")),
        card("Route", facts([
          ["Step", l.step === 0 ? "0 (the model asked for)" : l.step ? l.step + " (fallback)" : null, "detail-step"],
          [l.success ? "Served by" : "Asked for", (l.provider || "—") + " / " + (l.model || "—")],
          ["Path", h("code", {}, l.path || "—")],
          ["Status", String(l.status_code) + (l.success ? " (succeeded)" : " (failed or refused)")],
          ["Cached answer", l.cached ? "yes" : "no"],
          ["Duration", ms(l.duration_ms)],
          ["Time to first byte", ms(l.ttfb_ms)],
          ["Request / response size", (l.request_size ?? "—") + " / " + (l.response_size ?? "—") + " bytes"],
        ], "detail-route")),
        card("Zero data retention", facts([
          ["Applied", l.zdr_applied ? "yes" : "no", "detail-zdr"],
          ["Why", l.zdr_reason],
        ], "detail-zdr-facts")),
        card("Cache, rate limits and guardrails", facts([
          ["Response cache", l.cached ? "hit: answered from the cache, nothing went upstream" : "not from the cache",
            "detail-cache"],
          ["Rate limits", l.status_code === 429 && l.error === RATE_LIMITED ? "refused: no room in a rate limit"
            : "not refused by a rate limit", "detail-rate"],
          ["Guardrails", findings.length
            ? findings.map((f) => f.category + " " + ACTION[f.action] + " in the " + SIDE[f.side]).join("; ")
            : "nothing found", "detail-guardrails"],
        ], "detail-checks"))),
      card("Metadata", metadata.length ? facts(metadata.map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]),
        "detail-metadata") : empty("No metadata.", "Clients add it with the cf-aig-metadata header.")),
      card("Payloads", (l.request_body === undefined && l.response_body === undefined) ||
        (l.request_body === null && l.response_body === null)
        ? empty("Bodies were not logged for this request.", "Payload logging is off for this gateway or request, or " +
          "zero data retention applied.")
        : [body("Request body", l.request_body), body("Response body", l.response_body)]));
  }

  // ---- start ---------------------------------------------------------------------------------------------------

  const PAGES = { overview: overviewPage, spend: spendPage, rules: rulesPage, anomalies: anomaliesPage, logs: logsPage,
    log: logPage };

  function sessionNote() {
    const expires = Number(meta("session-expires")) * 1000;
    const note = document.getElementById("session-note");
    if (note && expires) note.textContent = "Signed in until " + when(new Date(expires).toISOString()) + ".";
  }

  async function render() {
    try {
      await loadAccounts();
    } catch (err) {
      replace(main, errorBox("the accounts", err));
      return;
    }
    if (!state.account) {
      replace(main, empty("No accounts yet.", "Create one with POST /admin/accounts {\"id\": \"acme\"} or " +
        "`spendgate accounts create acme`; then send a first request through the gateway."));
      return;
    }
    try {
      await PAGES[PAGE]();
    } catch (err) {
      replace(main, errorBox("this page", err));
    }
  }

  async function start() {
    sessionNote();
    try {
      await render();
    } finally {
      document.body.setAttribute("data-ready", "true"); // the browser tests wait for it
    }
  }

  window.spendgateDashboard = { usdText }; // for the browser tests' formatting check
  start();
})();
