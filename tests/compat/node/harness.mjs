// The compatibility suite's harness: a recording mock OpenAI upstream and the real promptgate
// binary (PROMPTGATE_BIN) in front of it, both on 127.0.0.1, both stopped by `stop()`.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const MODEL = 'gpt-4o-2024-08-06';

// The prompt every test calls: one variable, a tone that shows in the upstream request.
export const SUPPORT = 'You are the support agent of {{ company }}. Be brief.';
export const rendered = (company) => `You are the support agent of ${company}. Be brief.`;

/** A recording mock upstream: answers chat completions (plain, streamed, tool calls,
 * structured output) and Responses (plain and streamed) the way OpenAI shapes them. */
export async function startUpstream() {
  const received = [];
  let n = 0;
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      let body = null;
      try { body = JSON.parse(text); } catch { /* recorded as text */ }
      received.push({ method: req.method, url: req.url, headers: req.headers, body, text });
      n += 1;
      const requestId = `req_mock${n}`;
      if (req.url.endsWith('/chat/completions')) return chat(res, body, requestId);
      if (req.url.endsWith('/responses')) return responses(res, body, requestId);
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: `mock: no ${req.url}`, type: 'invalid_request_error' } }));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}/v1`;
  return { url, received, close: () => new Promise((r) => server.close(r)) };
}

const usage = { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 };

function chat(res, body, requestId) {
  const base = { id: 'chatcmpl-mock', created: 1700000000, model: MODEL, system_fingerprint: 'fp_mock' };
  const wantsTool = Array.isArray(body?.tools) && body.tools.length > 0
    && !body.messages.some((m) => m.role === 'tool');
  const structured = body?.response_format?.type === 'json_schema';
  const content = structured ? '{"answer":"ok"}' : 'Hello';
  if (body?.stream) {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'x-request-id': requestId });
    const send = (chunk) => res.write(`data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', ...chunk })}\n\n`);
    send({ choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] });
    for (const piece of [content.slice(0, 3), content.slice(3)]) {
      send({ choices: [{ index: 0, delta: { content: piece }, finish_reason: null }] });
    }
    send({ choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] });
    if (body.stream_options?.include_usage) send({ choices: [], usage });
    res.end('data: [DONE]\n\n');
    return;
  }
  const message = wantsTool
    ? {
      role: 'assistant', content: null, refusal: null,
      tool_calls: [{ id: 'call_1', type: 'function', function: { name: body.tools[0].function.name, arguments: '{"city":"Paris"}' } }],
    }
    : { role: 'assistant', content, refusal: null };
  res.writeHead(200, { 'content-type': 'application/json', 'x-request-id': requestId });
  res.end(JSON.stringify({
    ...base, object: 'chat.completion',
    choices: [{ index: 0, message, logprobs: null, finish_reason: wantsTool ? 'tool_calls' : 'stop' }],
    usage,
  }));
}

function responses(res, body, requestId) {
  const structured = body?.text?.format?.type === 'json_schema';
  const text = structured ? '{"answer":"ok"}' : 'Hello';
  const item = {
    type: 'message', id: 'msg_mock', status: 'completed', role: 'assistant',
    content: [{ type: 'output_text', text, annotations: [], logprobs: [] }],
  };
  const rusage = {
    input_tokens: 12, input_tokens_details: { cached_tokens: 0 },
    output_tokens: 3, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 15,
  };
  const response = (status, output, withUsage) => ({
    id: 'resp_mock', object: 'response', created_at: 1700000000, status, model: MODEL,
    output, usage: withUsage ? rusage : null, error: null, incomplete_details: null,
    instructions: body?.instructions ?? null, metadata: {}, parallel_tool_calls: true,
    temperature: 1, top_p: 1, tool_choice: 'auto', tools: [], text: { format: { type: 'text' } },
  });
  if (body?.stream) {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'x-request-id': requestId });
    let seq = 0;
    const send = (type, data) => res.write(`event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: seq++, ...data })}\n\n`);
    send('response.created', { response: response('in_progress', [], false) });
    send('response.output_item.added', { output_index: 0, item: { ...item, status: 'in_progress', content: [] } });
    send('response.content_part.added', { item_id: 'msg_mock', output_index: 0, content_index: 0, part: { type: 'output_text', text: '', annotations: [] } });
    for (const delta of [text.slice(0, 3), text.slice(3)]) {
      send('response.output_text.delta', { item_id: 'msg_mock', output_index: 0, content_index: 0, delta, logprobs: [] });
    }
    send('response.output_text.done', { item_id: 'msg_mock', output_index: 0, content_index: 0, text, logprobs: [] });
    send('response.output_item.done', { output_index: 0, item });
    send('response.completed', { response: response('completed', [item], true) });
    res.end();
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json', 'x-request-id': requestId });
  res.end(JSON.stringify(response('completed', [item], true)));
}

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/** promptgate serving a `support` prompt in front of `upstreamUrl`. */
export async function startPromptgate(upstreamUrl) {
  const bin = process.env.PROMPTGATE_BIN;
  if (!bin) throw new Error('PROMPTGATE_BIN is not set: run this through scripts/compat-node.sh BINARY');
  const dir = mkdtempSync(path.join(tmpdir(), 'promptgate-compat-'));
  mkdirSync(path.join(dir, 'prompts', 'support'), { recursive: true });
  writeFileSync(path.join(dir, 'prompts', 'support', 'v1.prompt'), `---\nvariables: [company]\n---\n${SUPPORT}\n`);
  const log = path.join(dir, 'promptgate.log');
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PROMPTGATE_') && k !== 'OPENAI_API_KEY'));
  env.NO_COLOR = '1';
  const port = await freePort();
  const { openSync } = await import('node:fs');
  const out = openSync(log, 'a');
  const proc = spawn(bin, [
    'serve', '--listen', `127.0.0.1:${port}`, '--prompts', path.join(dir, 'prompts'),
    '--state-dir', path.join(dir, 'state'), '--upstream', upstreamUrl,
  ], { env, stdio: ['ignore', out, out] });
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`promptgate exited: ${readFileSync(log, 'utf8')}`);
    try {
      if ((await fetch(`${base}/healthz`)).ok) break;
    } catch { /* not up yet */ }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`promptgate did not answer /healthz within 10 s: ${readFileSync(log, 'utf8')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    base,
    log: () => readFileSync(log, 'utf8'),
    async stop() {
      if (proc.exitCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** JSON with every non-ASCII character escaped (`\u00e9`), for header values: Node's fetch
 * refuses characters beyond ISO-8859-1 in headers. */
export function asciiJson(value) {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
