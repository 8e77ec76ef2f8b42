// The console end to end, in Debian's Chromium (never a downloaded browser), as a marketer
// and an operator would use it: against a real `qrpool up` (embedded store, real HTTP), with
// axe-core on every view and screenshots at desktop and phone width under target/.
//
//   node --test web-console/tests/browser      (scripts/test runs it after `cargo test`)
//
// QRPOOL_BIN names the binary (default target/debug/qrpool); CHROMIUM the browser
// (default /usr/bin/chromium).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import JSZip from "jszip";
import jsQR from "jsqr";
import { PNG } from "pngjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../../..");
const bin = process.env.QRPOOL_BIN ?? join(repo, "target/debug/qrpool");
const shots = join(process.env.CARGO_TARGET_DIR ?? join(repo, "target"), "console-screenshots");
const geoip = join(repo, "tests/data/geoip/GeoIP2-City-Test.mmdb");
const axeSource = readFileSync(join(here, "node_modules/axe-core/axe.min.js"), "utf8");

// Phones in three countries behind a proxy we trust (MaxMind's test database places them).
const SCANNERS = [
  { ip: "81.2.69.142", country: "GB", ua: "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1" },
  { ip: "216.160.83.56", country: "US", ua: "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36" },
  { ip: "89.160.20.112", country: "SE", ua: "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36" },
];

let work, server, base, browser, keys = {}, hostile;

function makeKey(env, tenant, scopes) {
  const out = execFileSync(bin, ["keys", "create", "--tenant", tenant, "--scope", scopes], { env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  return out.split("\n")[0].trim();
}

async function waitFor(check, what, seconds = 30) {
  const until = Date.now() + seconds * 1000;
  let last;
  while (Date.now() < until) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`timed out waiting for ${what}: ${last}`);
}

// A port the kernel says is free now. Another process may still take it before qrpool binds
// it (outgoing connections draw from the same range), so `startQrpool` tries again then.
async function freePort() {
  const probe = createServer();
  await new Promise((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

// `qrpool up` on a free port, ready when `/readyz` says so. If it exits first, the error
// carries what it printed (not a minute of "fetch failed"); a port taken in between is
// retried on another.
async function startQrpool(env) {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const child = spawn(bin, ["up"], {
      env: { ...env, QRPOOL_SERVER__LISTEN: `127.0.0.1:${port}` },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let printed = "";
    child.stderr.on("data", (chunk) => {
      printed += chunk;
      process.stderr.write(chunk);
    });
    const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    const ready = waitFor(async () => (await fetch(`${url}/readyz`)).ok, "qrpool up", 60);
    const first = await Promise.race([ready.then(() => null), exited]);
    if (first === null) return { child, base: url };
    ready.catch(() => {});
    const why = `qrpool up exited (${first.code ?? first.signal}) before it was ready:\n${printed.slice(0, 2000)}`;
    if (!/Address already in use/.test(printed) || attempt === 3) throw new Error(why);
  }
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), "qrpool-console-"));
  mkdirSync(shots, { recursive: true });
  const env = {
    ...process.env,
    QRPOOL_EMBEDDED__DATA_DIR: join(work, "data"),
    QRPOOL_REDIRECT__ALLOWED_HOSTS__SHOP: '["shop.example.com"]',
    QRPOOL_REDIRECT__ALLOWED_HOSTS__OTHER: '["other.example.com"]',
    QRPOOL_ANALYTICS__GEOIP_DB: geoip,
    QRPOOL_SERVER__TRUSTED_PROXIES: '["127.0.0.1"]',
    QRPOOL_ANALYTICS__FLUSH_SECS: "1",
    QRPOOL_PREGEN__TARGET_DEPTH: "1200",
    QRPOOL_PREGEN__LOW_WATER: "600",
    QRPOOL_TELEMETRY__FILTER: "warn",
    QRPOOL_LANDING__SHOP__TITLE: "Spring open house",
    QRPOOL_LANDING__SHOP__ACCENT: "#aa3300",
  };
  keys.admin = makeKey(env, "shop", "bind,read,admin");
  keys.read = makeKey(env, "shop", "read");
  keys.other = makeKey(env, "other", "bind,read,admin");
  ({ child: server, base } = await startQrpool(env));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--no-first-run", "--disable-sync", "--disable-quic"],
  });
  // A page on another origin, for the cross-site form post.
  hostile = createServer((request, response) => {
    response.setHeader("content-type", "text/html");
    response.end(`<!doctype html><form id="f" method="post" action="${base}${request.url}">
      <input name="csrf" value="guessed"></form><script>document.getElementById("f").submit()</script>`);
  });
  await new Promise((resolve) => hostile.listen(0, "127.0.0.1", resolve));
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  hostile?.close();
  if (work) rmSync(work, { recursive: true, force: true });
});

async function api(method, path, key, body) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return response;
}

async function signIn(context, key) {
  const page = await context.newPage();
  await page.goto(`${base}/console/sign-in`);
  await page.fill("#key", key);
  await Promise.all([page.waitForURL(/\/console\/overview/), page.click("button[type=submit]")]);
  return page;
}

/// axe-core on the page as it is: no serious or critical violation.
async function accessible(page, view) {
  // Through the debugger, not a script tag: the console's policy forbids inline script.
  await page.evaluate(axeSource);
  const results = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ["violations"] }));
  const bad = results.violations.filter((violation) => ["serious", "critical"].includes(violation.impact));
  assert.deepEqual(
    bad.map((violation) => `${violation.id}: ${violation.help} (${violation.nodes.map((node) => node.target.join(" ")).slice(0, 3).join(", ")})`),
    [],
    `axe on ${view}`,
  );
}

/// The view at desktop and phone width, saved for a person to look at.
async function screenshots(page, view) {
  for (const [width, height, name] of [[1366, 900, "desktop"], [390, 844, "phone"]]) {
    await page.setViewportSize({ width, height });
    await page.screenshot({ path: join(shots, `${view}-${name}.png`), fullPage: true });
  }
  await page.setViewportSize({ width: 1366, height: 900 });
}

async function look(page, view) {
  await accessible(page, view);
  await screenshots(page, view);
}

function scan(path, scanner, extra = {}) {
  return fetch(`${base}${path}`, {
    redirect: "manual",
    headers: { "user-agent": scanner.ua, "x-forwarded-for": scanner.ip, ...extra },
  });
}

test("a marketer signs in, makes an A/B link, watches scans arrive, edits, rolls back and prints", async () => {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });

  // A wrong key is told so, on the sign-in page.
  const first = await context.newPage();
  await first.goto(`${base}/console/overview`);
  assert.match(first.url(), /\/console\/sign-in$/);
  await look(first, "sign-in");
  await first.fill("#key", "qrp_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB");
  await first.click("button[type=submit]");
  await first.waitForSelector(".notice.error");
  await first.close();

  const page = await signIn(context, keys.admin);

  // A link with a 50/50 split and conversion tracking, made in the form.
  await page.click("text=Links");
  await page.click("text=New link");
  await look(page, "link-new");
  await page.fill("#destination", "https://shop.example.com/spring");
  await page.fill("#tags", "spring, print");
  await page.click("summary:text-is('A/B split and conversion tracking')");
  await page.fill("#variant_name_0", "A");
  await page.fill("#variant_weight_0", "50");
  await page.fill("#variant_destination_0", "https://shop.example.com/spring?v=a");
  await page.fill("#variant_name_1", "B");
  await page.fill("#variant_weight_1", "50");
  await page.fill("#variant_destination_1", "https://shop.example.com/spring?v=b");
  await page.check("input[name=track_conversions]");
  await Promise.all([page.waitForURL(/\/console\/links\/[0-9A-Za-z]{10}\?created=1/), page.click("text=Create link")]);
  const key = page.url().match(/links\/([0-9A-Za-z]{10})/)[1];
  await page.waitForSelector("text=Link created");

  // A destination that is not allowed is refused with the API's words, the form kept.
  await page.goto(`${base}/console/links/new`);
  await page.fill("#destination", "https://evil.example.net/");
  await page.click("text=Create link");
  await page.waitForSelector(".notice.error");
  assert.equal(await page.inputValue("#destination"), "https://evil.example.net/");

  // Scans from three countries and three kinds of phone; each redirect carries a click id.
  const clicks = { A: [], B: [] };
  for (let round = 0; round < 20; round++) {
    for (const scanner of SCANNERS) {
      const answer = await scan(`/r/${key}?utm_source=flyer&utm_campaign=spring`, scanner, { cookie: "" });
      assert.equal(answer.status, 302);
      const location = new URL(answer.headers.get("location"));
      const variant = location.searchParams.get("v") === "a" ? "A" : "B";
      clicks[variant].push(location.searchParams.get("qrclid"));
    }
  }
  assert.ok(clicks.A.length > 5 && clicks.B.length > 5, `both variants served: ${clicks.A.length}/${clicks.B.length}`);
  // Half of B's clicks convert, a fifth of A's.
  let conversion = 0;
  for (const [variant, share] of [["A", 5], ["B", 2]]) {
    for (const [index, click] of clicks[variant].entries()) {
      if (index % share !== 0) continue;
      const answer = await api("POST", "/v1/conversions", keys.admin,
        { conversion_id: `order-${conversion++}`, click_id: click, name: "purchase", value: 20 });
      assert.ok(answer.ok, `conversion: ${answer.status} ${await answer.text()}`);
    }
  }

  // The overview shows them (the ingest runs every second), the chart is drawn.
  await waitFor(async () => {
    await page.goto(`${base}/console/overview?range=24h&tz=UTC`);
    const scans = await page.textContent(".card .value");
    return Number(scans.replace(/,/g, "")) >= 60;
  }, "60 scans on the overview");
  assert.ok(await page.locator("svg.chart path.scans").count() === 1);
  assert.ok(await page.locator(`a[href="/console/links/${key}"]`).count() >= 1, "the link among the top keys");
  await page.check("input[name=compare]");
  await page.click("text=Apply");
  await page.waitForSelector("svg.chart path.previous", { state: "attached" });
  await look(page, "overview");

  // The map shades the three countries; the tables name devices and campaigns.
  await page.click("text=Where & who");
  await page.selectOption("#range", "24h");
  await page.click("text=Apply");
  for (const name of ["United Kingdom", "United States of America", "Sweden"]) {
    const shade = await page.locator("svg.map path", { has: page.locator(`title:text-matches("^${name}: ")`) }).getAttribute("class");
    assert.match(shade, /^q[1-5]$/, `${name} shaded`);
  }
  assert.ok(await page.locator("text=flyer").count() >= 1, "utm_source in the tables");
  assert.ok(await page.locator("td:text-is('ios')").count() >= 1, "devices in the tables");
  await look(page, "audience");

  // The A/B readout, with conversions per variant.
  await page.goto(`${base}/console/links/${key}`);
  const readout = page.locator("section[aria-labelledby=ab-title]");
  await readout.waitFor();
  assert.ok(await readout.locator("td:text-is('B')").count() === 1);
  const bConverted = await readout.locator("tr", { has: page.locator("td:text-is('B')") }).locator("td").nth(3).textContent();
  assert.ok(Number(bConverted) >= 3, `B converted: ${bConverted}`);
  const experimentCsv = await (await page.request.get(`${base}/console/export/links/${key}/experiment.csv`)).text();
  assert.match(experimentCsv, /^variant,scans,visitors,converted,conversion_rate,lift,lift_low,lift_high,p_value\r\nA,/);
  // The QR code preview is an image the API drew, and decodes to the link's printed URL.
  const preview = await page.request.get(`${base}/console/links/${key}/qr?format=png&scale=6`);
  assert.equal(preview.headers()["content-type"], "image/png");
  assert.equal(decode(await preview.body()), `${base}/r/${key}`);
  await look(page, "link");

  // Edit the destination: a new version, and scans go there.
  await page.click("text=Edit (saved as a new version)");
  await page.fill("section[aria-labelledby=edit-title] #destination", "https://shop.example.com/summer");
  for (const row of [0, 1]) {
    await page.fill(`section[aria-labelledby=edit-title] #variant_name_${row}`, "");
    await page.fill(`section[aria-labelledby=edit-title] #variant_weight_${row}`, "");
    await page.fill(`section[aria-labelledby=edit-title] #variant_destination_${row}`, "");
  }
  await page.fill("section[aria-labelledby=edit-title] #note", "summer campaign");
  await Promise.all([page.waitForURL(/done=edit/), page.click("text=Save new version")]);
  let answer = await scan(`/r/${key}`, SCANNERS[0]);
  assert.equal(new URL(answer.headers.get("location")).pathname, "/summer");

  // Roll back to version 1: scans are split again; the audit log says so.
  await Promise.all([
    page.waitForURL(/done=rollback/),
    page.locator("li", { has: page.locator("strong:text-is('Version 1')") }).locator("text=Roll back to this").click(),
  ]);
  answer = await scan(`/r/${key}`, SCANNERS[1]);
  assert.equal(new URL(answer.headers.get("location")).pathname, "/spring");
  const audit = await page.locator("section[aria-labelledby=audit-title] tbody").textContent();
  assert.match(audit, /rollback/);
  assert.match(audit, /update/);
  const auditCsv = await page.request.get(`${base}/console/export/links/${key}/audit.csv`);
  assert.match(await auditCsv.text(), /^at,actor,action,version,detail\r\n/);

  // A long history: the page lists the latest 50 versions, newest first, and says how many
  // there are (the API pages through the rest).
  for (let edit = 1; edit <= 55; edit++) {
    const changed = await api("PATCH", `/v1/links/${key}`, keys.admin,
      { target: { destination: `https://shop.example.com/rotation-${edit}` } });
    assert.equal(changed.status, 200, await changed.text());
  }
  await page.reload();
  const listed = await page.locator("section[aria-labelledby=versions-title] li strong").allTextContents();
  assert.equal(listed.length, 50);
  assert.equal(listed[0], "Version 58");
  assert.equal(listed[49], "Version 9");
  assert.match(await page.locator("section[aria-labelledby=versions-title]").textContent(), /The latest 50 of 58/);
  // Its audit log too: the latest 50 lines, newest first (the CSV export holds them all).
  const auditSection = page.locator("section[aria-labelledby=audit-title]");
  assert.equal(await auditSection.locator("tbody tr").count(), 50);
  assert.match(await auditSection.locator("tbody tr").first().textContent(), /update/);
  assert.match(await auditSection.textContent(), /The latest 50 of 58; the CSV holds them all/);
  await look(page, "link-long-history");

  // A print run of 500 rows: bound, drawn, zipped; every PNG decodes to its code's URL.
  await page.click("text=Print runs");
  await look(page, "print");
  const rows = ["listing,agent"];
  for (let row = 1; row <= 500; row++) rows.push(`L-${1000 + row},Agent ${row % 7}`);
  const csvPath = join(work, "listings.csv");
  writeFileSync(csvPath, rows.join("\n") + "\n");
  await page.setInputFiles("#file", csvPath);
  await page.fill("#name_column", "listing");
  await Promise.all([page.waitForURL(/\/console\/print\/[0-9A-Za-z]{16}$/), page.click("text=Bind and prepare")]);
  await waitFor(async () => {
    await page.reload();
    return (await page.locator("text=Download 500 codes").count()) === 1;
  }, "the print run to finish", 120);
  await look(page, "print-run");
  const run = page.url();
  const ids = (await (await page.request.get(`${run}/codes.csv`)).text()).trim().split("\r\n").slice(1)
    .map((line) => line.split(","));
  assert.equal(ids.length, 500);
  const urlOf = new Map(ids.map(([, name, , url]) => [name, url]));
  const zip = await JSZip.loadAsync(await (await page.request.get(`${run}/codes.zip`)).body());
  const names = Object.keys(zip.files);
  assert.equal(names.length, 500);
  for (const name of names) {
    const listing = name.replace(/\.png$/, "");
    assert.equal(decode(await zip.files[name].async("nodebuffer")), urlOf.get(listing), name);
  }

  // A code looked up by its id: binding, versions, scans; the operator's pool page.
  const [, , id] = ids[0];
  await page.goto(`${base}/console/codes?id=${id}`);
  await page.waitForSelector("text=Binding");
  await look(page, "codes");
  await page.goto(`${base}/console/pool`);
  await page.waitForSelector("td:text-is('local')");
  await look(page, "pool");
  await page.goto(`${base}/console/links`);
  assert.ok(await page.locator(`a:text-is("${key}")`).count() === 1);
  await look(page, "links");

  // Exports are CSV.
  const scansCsv = await page.request.get(`${base}/console/export/scans.csv?range=24h&group_by=country`);
  assert.match(await scansCsv.text(), /^country,scans,visitors\r\n/);

  // Signing out ends the session: the old cookie opens nothing.
  const cookie = (await context.cookies()).find((cookie) => cookie.name === "qrpool_console");
  await page.click("text=Sign out");
  await page.waitForURL(/sign-in\?signed_out=1/);
  const replay = await fetch(`${base}/console/overview`, { redirect: "manual", headers: { cookie: `qrpool_console=${cookie.value}` } });
  assert.equal(replay.status, 303);
  assert.equal(replay.headers.get("location"), "/console/sign-in");
  await context.close();
});

test("a read key sees no edit control and cannot edit; another tenant's link is a 404; a cross-site post is refused", async () => {
  const made = await (await api("POST", "/v1/links", keys.admin, { target: { destination: "https://shop.example.com/x" } })).json();
  const context = await browser.newContext();
  const page = await signIn(context, keys.read);
  await page.goto(`${base}/console/links/${made.key}`);
  assert.equal(await page.locator("text=Edit (saved as a new version)").count(), 0);
  assert.equal(await page.locator("button:text-is('Delete')").count(), 0);
  assert.equal(await page.locator("text=New link").count(), 0);
  // The server refuses anyway, with the session's own CSRF token.
  const csrf = await page.inputValue("input[name=csrf]");
  const refused = await page.request.post(`${base}/console/links/${made.key}/delete`, { form: { csrf }, maxRedirects: 0 });
  assert.equal(refused.status(), 403);
  assert.equal((await (await api("GET", `/v1/links/${made.key}`, keys.admin)).json()).deleted_at, undefined);
  await context.close();

  const other = await browser.newContext();
  const otherPage = await signIn(other, keys.other);
  const foreign = await otherPage.goto(`${base}/console/links/${made.key}`);
  assert.equal(foreign.status(), 404);
  await other.close();

  // Signed in as the admin, a page on another site posts a delete form to the console.
  const victim = await browser.newContext();
  await signIn(victim, keys.admin);
  const attack = await victim.newPage();
  const hostileBase = `http://127.0.0.1:${hostile.address().port}`;
  await attack.goto(`${hostileBase}/console/links/${made.key}/delete`);
  await attack.waitForLoadState("load");
  await attack.waitForTimeout(500);
  assert.ok(!attack.url().includes("done=delete"), `not deleted: ${attack.url()}`);
  const still = await (await api("GET", `/v1/links/${made.key}`, keys.admin)).json();
  assert.equal(still.deleted_at, undefined, "the link was not deleted");
  await victim.close();
});

test("a scanned code's page and the message pages show as designed under their content security policy", async () => {
  const code = await (await api("POST", "/v1/codes", keys.admin, { params: { listing: "L-9" } })).json();
  // A phone's width: these pages are what people see after scanning.
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const page = await context.newPage();
  const violations = [];
  page.on("console", (message) => {
    if (/Content Security Policy/i.test(message.text())) violations.push(message.text());
  });
  const landing = await page.goto(`${base}/m/${code.request_id}`);
  assert.match(landing.headers()["content-security-policy"], /default-src 'none'/);
  assert.equal(await page.textContent("h1"), "Spring open house");
  // The accent block and the base style both apply: the policy allows them by hash.
  assert.equal(await page.$eval("h1", (h1) => getComputedStyle(h1).color), "rgb(170, 51, 0)");
  assert.equal(await page.$eval("main", (main) => getComputedStyle(main).borderTopLeftRadius), "12px");
  await page.screenshot({ path: join(shots, "landing-phone.png"), fullPage: true });
  const unknown = await page.goto(`${base}/m/0000000000000000000000`);
  assert.equal(unknown.status(), 404);
  assert.equal(await page.$eval("main", (main) => getComputedStyle(main).borderTopLeftRadius), "12px");
  assert.deepEqual(violations, []);
  await context.close();
});

function decode(png) {
  const image = PNG.sync.read(png);
  const code = jsQR(new Uint8ClampedArray(image.data), image.width, image.height);
  return code?.data;
}
