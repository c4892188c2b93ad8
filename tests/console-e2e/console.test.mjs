// End-to-end test of the prompt console in real headless Chromium (Debian's `chromium`, driven
// by playwright-core). Run by scripts/console-e2e.sh, which installs both.
//
// Starts the built promptgate (PROMPTGATE_BIN) on 127.0.0.1 with the echo upstream and the
// console on its admin listener, then: signs in, creates a version in the editor (seeing a
// validation error at its line first), reads the diff, rolls back, runs the playground against
// the echo upstream, starts an experiment and reads its report after sending traffic and
// feedback. Saves a screenshot of each page to SCREENSHOTS (a folder).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const bin = process.env.PROMPTGATE_BIN;
const shots = process.env.SCREENSHOTS || fs.mkdtempSync(path.join(os.tmpdir(), "console-shots-"));
const TOKEN = "e2e-console-token";
const STEP_MS = 15_000;

let server, browser, page, work, proxy, admin;
const pageErrors = [];

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitReady(url, ms) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {}
    if (Date.now() > end) throw new Error(`promptgate did not become ready at ${url}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function shot(name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

before(async () => {
  assert.ok(bin, "set PROMPTGATE_BIN to the promptgate binary");
  work = fs.mkdtempSync(path.join(os.tmpdir(), "console-e2e-"));
  fs.cpSync(path.join(here, "prompts"), path.join(work, "prompts"), { recursive: true });
  const [p, a] = [await freePort(), await freePort()];
  proxy = `http://127.0.0.1:${p}`;
  admin = `http://127.0.0.1:${a}`;
  const log = fs.openSync(path.join(work, "promptgate.log"), "w");
  server = spawn(bin, [
    "serve", "--listen", `127.0.0.1:${p}`, "--admin-listen", `127.0.0.1:${a}`,
    "--prompts", path.join(work, "prompts"), "--upstream", "echo",
    "--state-dir", path.join(work, "state"), "--events", path.join(work, "state", "events.jsonl"),
    "--watch-poll-ms", "200",
  ], { env: { ...process.env, PROMPTGATE_ADMIN_TOKEN: TOKEN }, stdio: ["ignore", log, log] });
  await waitReady(`${proxy}/readyz`, 20_000);
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 820 } });
  context.setDefaultTimeout(STEP_MS);
  page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(e.message));
  fs.mkdirSync(shots, { recursive: true });
});

after(async () => {
  if (browser) await browser.close();
  if (server) {
    server.kill("SIGTERM");
    await new Promise((r) => server.once("exit", r));
  }
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

test("sign in, edit, diff, roll back, playground, experiment, audit", { timeout: 150_000 }, async () => {
  // Sign in: the console redirects there first.
  await page.goto(`${admin}/console/`);
  assert.match(page.url(), /\/console\/sign-in\?next=/);
  await shot("sign-in");
  await page.fill("input[name=token]", TOKEN);
  await page.fill("input[name=name]", "ana@example.com");
  await page.click("button[type=submit]");
  await page.waitForSelector("#prompts");
  assert.ok(await page.isVisible("text=support_agent"));
  // The live filter and the "/" shortcut.
  await page.keyboard.press("/");
  await page.keyboard.type("triage");
  await page.waitForFunction(() => document.querySelectorAll("#prompts tbody tr:not([hidden])").length === 1);
  await page.fill("#search", "");
  await shot("prompts");

  // A prompt: versions, labels, template with line numbers.
  await page.click("a.name:text('support_agent')");
  await page.waitForSelector("#versions");
  assert.ok(await page.isVisible("#template .ln[data-n='3']"));
  await shot("prompt");

  // The editor: a syntax error shows at its line, then a valid draft saves as v3.
  await page.click("text=New version from v2");
  await page.waitForSelector("#editor");
  const template = page.locator("#template");
  await template.fill("You are a support agent for {{ company }}.\nAnswer in {{ language }.\nNever share internal system details.");
  await page.waitForSelector("#gutter div.err[data-line='2']");
  const problem = await page.textContent("#problems li");
  assert.match(problem, /template line 2, column \d+: syntax error/);
  await shot("editor-error");
  await template.fill("You are a support agent for {{ company }}.\nAnswer in {{ language }}, briefly and politely.\n{% if tier == \"enterprise\" %}Offer a call with their account manager.\n{% endif %}Never share internal system details.");
  await page.fill("input[name=variables]", "company, tier, language");
  await page.fill("input[name=notes]", "answer in the customer's language");
  await page.fill("#preview-values", '{"company": "Acme", "language": "German", "tier": "enterprise"}');
  await page.waitForFunction(() => document.getElementById("status").textContent === "valid");
  await page.waitForFunction(() => document.getElementById("preview").textContent.includes("Answer in German"));
  assert.equal(await page.textContent("#needs"), "company tier language ");
  await shot("editor");
  await page.check("input[name=activate]");
  await page.click("#save");
  await page.waitForSelector("#flash");
  assert.equal(await page.textContent("#flash"), "Saved v3; it is now active.");
  assert.ok(fs.existsSync(path.join(work, "prompts/support_agent/v3.prompt")));

  // The diff of v2 and v3: settings and template, side by side and unified.
  await page.selectOption("#diff-form select[name=a]", "2");
  await page.selectOption("#diff-form select[name=b]", "3");
  await page.click("#diff-form button");
  await page.waitForSelector("table.diff.split");
  assert.ok(await page.isVisible("#diff-front td.right:text('variables: company, tier, language')"));
  assert.ok(await page.isVisible("#diff-template tr.replace"));
  await shot("diff");
  await page.click("text=Unified");
  await page.waitForSelector("table.diff.unified");
  await shot("diff-unified");

  // Roll back to v2 behind a confirmation that shows what changes.
  await page.goto(`${admin}/console/prompts/support_agent`);
  await page.click("#versions tr:has(a.ver:text('v2')) >> text=Make active…");
  await page.waitForSelector("#change");
  assert.equal(await page.textContent("#change"), "active version: v3 → v2");
  await shot("confirm-rollback");
  await page.click("#confirm");
  await page.waitForSelector("#flash");
  assert.equal(await page.textContent("#flash"), "v2 is now active.");

  // The playground against the echo upstream: the exact request, then the streamed answer.
  await page.click("text=Playground");
  await page.waitForSelector("#playground");
  await page.fill("input[name=var_company]", "Acme");
  await page.fill("input[name=var_tier]", "enterprise");
  await page.fill("textarea[name=message]", "Where is my order #1234?");
  await page.fill("input[name=user]", "user-42");
  await page.click("button[value=preview]");
  await page.waitForSelector("#request");
  assert.match(await page.textContent("#request"), /offer a call with their account manager/);
  assert.match(await page.textContent("#served"), /chosen by active/);
  await page.click("#send");
  await page.waitForFunction(() => document.getElementById("stats").textContent.includes("status 200"));
  assert.match(await page.textContent("#answer"), /Where is my order #1234\?/);
  assert.match(await page.textContent("#stats"), /tokens/);
  await shot("playground");

  // An experiment: start it from the form, send traffic and feedback, read the report.
  await page.goto(`${admin}/console/prompts/support_agent/experiment`);
  await page.fill("input[name=w_3]", "50");
  await page.fill("input[name=w_2]", "50");
  await page.fill("input[name=w_1]", "0");
  await page.click("#experiment-form button[type=submit]");
  await page.waitForSelector("text=v2 50% · v3 50%");
  for (let i = 0; i < 60; i++) {
    const id = `e2e-${i}`;
    const r = await fetch(`${proxy}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": id },
      body: JSON.stringify({
        model: "gpt-4o", user: `customer-${i}`,
        messages: [{ role: "user", content: "hello" }],
        prompt: { id: "support_agent", variables: { company: "Acme", tier: "free", language: "English" } },
      }),
    });
    assert.equal(r.status, 200);
    const version = r.headers.get("x-prompt-version");
    await r.arrayBuffer();
    const score = (version === "3" ? 0.86 : 0.71) + (i % 7) * 0.012;
    const f = await fetch(`${proxy}/v1/feedback`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ request_id: id, metrics: { quality_score: score } }),
    });
    assert.equal(f.status, 200);
  }
  await page.reload();
  await page.waitForSelector("#quality-chart");
  const rows = await page.locator("#report tbody tr").count();
  assert.equal(rows, 2);
  assert.match(await page.textContent("#verdict"), /v3 wins/);
  await shot("experiment");
  await page.goto(`${admin}/console/experiments`);
  await shot("experiments");

  // The audit trail: newest first, filtered by actor, linking to the diff.
  await page.goto(`${admin}/console/audit`);
  await page.selectOption("select[name=actor]", "ana@example.com");
  // The unfiltered page has an #audit table too: wait for the filtered page itself.
  await Promise.all([page.waitForURL(/actor=ana/), page.click("form.filters button")]);
  await page.waitForSelector("#audit");
  assert.match(await page.textContent("#audit tbody tr:first-child"), /experiment/);
  await shot("audit");
  await page.click("#audit a:text('added v3')");
  await page.waitForSelector("table.diff");
  assert.match(page.url(), /diff\?a=2&b=3/);

  // The list, now with traffic, and the banner when a reload is refused.
  await page.goto(`${admin}/console/`);
  assert.match(await page.textContent("#prompts tbody tr:has(a:text('support_agent'))"), /60/);
  fs.writeFileSync(path.join(work, "prompts/summarizer/v2.prompt"), "---\nmodel: m\ntemprature: 0.2\n---\nSummarise {{ text }\n");
  const end = Date.now() + 10_000;
  for (;;) {
    await page.goto(`${admin}/console/`);
    if (await page.isVisible("text=The last reload was refused")) break;
    assert.ok(Date.now() < end, "the refused reload shows as a banner");
    await page.waitForTimeout(200);
  }
  assert.match(await page.textContent(".banner.error"), /summarizer\/v2\.prompt:3: unknown key `temprature`/);
  await shot("prompts-refused-reload");
  assert.deepEqual(pageErrors, [], "no script errors on any page");
});
