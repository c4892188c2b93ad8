// The official openai Node SDK against the real promptgate binary: chat, stream, Responses,
// tools, structured output, a conversation with the client's own system message, and
// non-ASCII variables by body and by header.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import OpenAI from 'openai';

import { MODEL, asciiJson, rendered, startPromptgate, startUpstream } from './harness.mjs';

let upstream;
let gate;
let client;

before(async () => {
  upstream = await startUpstream();
  gate = await startPromptgate(upstream.url);
  client = new OpenAI({ baseURL: `${gate.base}/v1`, apiKey: 'sk-compat', maxRetries: 0, timeout: 10_000 });
});

after(async () => {
  await gate?.stop();
  await upstream?.close();
});

const last = () => upstream.received.at(-1);
const prompt = (company) => ({ id: 'support', variables: { company } });

test('chat: the prompt is injected, stripped, and the request id is the upstream\'s', async () => {
  const { data, response, request_id: requestId } = await client.chat.completions
    .create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Hi' }], prompt: prompt('Acme') })
    .withResponse();
  assert.equal(data.choices[0].message.content, 'Hello');
  assert.match(requestId, /^req_mock\d+$/);
  assert.equal(response.headers.get('x-prompt-name'), 'support');
  assert.ok(response.headers.get('x-promptgate-request-id'));
  const sent = last().body;
  assert.deepEqual(sent.messages, [
    { role: 'system', content: rendered('Acme') },
    { role: 'user', content: 'Hi' },
  ]);
  assert.equal(sent.prompt, undefined);
  // Feedback takes the id the SDK shows.
  const fb = await fetch(`${gate.base}/v1/feedback`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ request_id: requestId, metrics: { quality_score: 0.9 } }),
  });
  assert.equal(fb.status, 200, await fb.text());
});

test('stream: chunks in order, no usage chunk the client did not ask for', async () => {
  const stream = await client.chat.completions.create({
    model: 'gpt-4o', stream: true, messages: [{ role: 'user', content: 'Hi' }], prompt: prompt('Acme'),
  });
  let text = '';
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    assert.ok(chunk.choices.length > 0, 'a usage-only chunk reached the client');
    text += chunk.choices[0].delta.content ?? '';
  }
  assert.equal(text, 'Hello');
  assert.equal(chunks, 4);
  assert.equal(last().body.stream_options.include_usage, true);
});

test('stream with include_usage: the client gets its usage chunk', async () => {
  const stream = await client.chat.completions.create({
    model: 'gpt-4o', stream: true, stream_options: { include_usage: true },
    messages: [{ role: 'user', content: 'Hi' }], prompt: prompt('Acme'),
  });
  let usage = null;
  for await (const chunk of stream) usage = chunk.usage ?? usage;
  assert.equal(usage.total_tokens, 15);
});

test('responses: the prompt becomes instructions, merged with the client\'s', async () => {
  const response = await client.responses.create({
    model: 'gpt-4o', input: 'Hi', instructions: 'Answer in French.', prompt: prompt('Acme'),
  });
  assert.equal(response.output_text, 'Hello');
  assert.equal(last().body.instructions, `${rendered('Acme')}\n\nAnswer in French.`);
  assert.equal(last().body.prompt, undefined);
});

test('tools pass through and the tool call comes back', async () => {
  const tools = [{
    type: 'function',
    function: {
      name: 'get_weather', description: 'Weather in a city',
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    },
  }];
  const completion = await client.chat.completions.create({
    model: 'gpt-4o', messages: [{ role: 'user', content: 'Weather in Paris?' }], tools, prompt: prompt('Acme'),
  });
  assert.equal(completion.choices[0].message.tool_calls[0].function.name, 'get_weather');
  assert.deepEqual(last().body.tools, tools);
});

test('structured output: response_format reaches the upstream exactly', async () => {
  const responseFormat = {
    type: 'json_schema',
    json_schema: {
      name: 'answer', strict: true,
      schema: { type: 'object', properties: { answer: { type: 'string' } }, required: ['answer'], additionalProperties: false },
    },
  };
  const completion = await client.chat.completions.create({
    model: 'gpt-4o', messages: [{ role: 'user', content: 'Hi' }], response_format: responseFormat, prompt: prompt('Acme'),
  });
  assert.deepEqual(JSON.parse(completion.choices[0].message.content), { answer: 'ok' });
  assert.deepEqual(last().body.response_format, responseFormat);
});

test('a conversation with the client\'s own system message gets one system message', async () => {
  await client.chat.completions.create({
    model: 'gpt-4o',
    messages: [
      { role: 'system', content: 'Answer in French.' },
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Salut' },
      { role: 'user', content: 'Bye' },
    ],
    prompt: prompt('Acme'),
  });
  const { messages } = last().body;
  assert.equal(messages.filter((m) => m.role === 'system').length, 1);
  assert.equal(messages[0].content, `${rendered('Acme')}\n\nAnswer in French.`);
  assert.deepEqual(messages.slice(1).map((m) => m.role), ['user', 'assistant', 'user']);
});

test('non-ASCII variables by body and by header', async () => {
  await client.chat.completions.create({
    model: 'gpt-4o', messages: [{ role: 'user', content: 'Hi' }], prompt: prompt('Café Zoë ☕'),
  });
  assert.equal(last().body.messages[0].content, rendered('Café Zoë ☕'));
  // Headers: ISO-8859-1 as fetch sends it, and JSON escapes for the rest.
  for (const value of [JSON.stringify({ company: 'Café Zoë' }), asciiJson({ company: 'Café Zoë ☕' })]) {
    await client.chat.completions.create(
      { model: 'gpt-4o', messages: [{ role: 'user', content: 'Hi' }] },
      { headers: { 'X-Prompt-Name': 'support', 'X-Prompt-Variables': value } },
    );
    assert.equal(last().body.messages[0].content, rendered(JSON.parse(value).company));
  }
  assert.equal(last().headers['x-prompt-variables'], undefined, 'promptgate\'s headers stay with promptgate');
});

test('the model the version names wins, and the SDK reports the upstream model', async () => {
  const completion = await client.chat.completions.create({
    model: 'gpt-4o', messages: [{ role: 'user', content: 'Hi' }], prompt: prompt('Acme'),
  });
  assert.equal(completion.model, MODEL);
});
