// The Vercel AI SDK (`ai` with `@ai-sdk/openai` and `@ai-sdk/openai-compatible`) against the
// real promptgate binary. `@ai-sdk/openai` drops unknown body fields, so its route is the
// `X-Prompt-*` headers; `@ai-sdk/openai-compatible` passes `providerOptions` into the body.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { generateObject, generateText, jsonSchema, streamText, tool } from 'ai';

import { asciiJson, rendered, startPromptgate, startUpstream } from './harness.mjs';

let upstream;
let gate;
let openai;
let compatible;

// The header route: name and variables of the prompt, for every call of this provider.
const promptHeaders = (company) => ({ 'X-Prompt-Name': 'support', 'X-Prompt-Variables': asciiJson({ company }) });

before(async () => {
  upstream = await startUpstream();
  gate = await startPromptgate(upstream.url);
  openai = createOpenAI({ baseURL: `${gate.base}/v1`, apiKey: 'sk-compat' });
  compatible = createOpenAICompatible({ name: 'promptgate', baseURL: `${gate.base}/v1`, apiKey: 'sk-compat' });
});

after(async () => {
  await gate?.stop();
  await upstream?.close();
});

const last = () => upstream.received.at(-1);

test('chat with the SDK\'s own system: one merged system message', async () => {
  const { text } = await generateText({
    model: openai.chat('gpt-4o'), system: 'Answer in French.', prompt: 'Hi',
    headers: promptHeaders('Acme'), maxRetries: 0,
  });
  assert.equal(text, 'Hello');
  const { messages } = last().body;
  assert.equal(messages[0].role, 'system');
  assert.equal(messages[0].content, `${rendered('Acme')}\n\nAnswer in French.`);
  assert.equal(messages.filter((m) => m.role === 'system').length, 1);
});

test('stream: the text arrives whole', async () => {
  const result = streamText({
    model: openai.chat('gpt-4o'), prompt: 'Hi', headers: promptHeaders('Café Zoë ☕'), maxRetries: 0,
  });
  let text = '';
  for await (const piece of result.textStream) text += piece;
  assert.equal(text, 'Hello');
  assert.equal(last().body.messages[0].content, rendered('Café Zoë ☕'));
  assert.equal((await result.usage).inputTokens, 12);
});

test('responses: the prompt becomes instructions', async () => {
  const { text } = await generateText({
    model: openai.responses('gpt-4o'), prompt: 'Hi', headers: promptHeaders('Acme'), maxRetries: 0,
  });
  assert.equal(text, 'Hello');
  assert.equal(last().body.instructions, rendered('Acme'));
  assert.ok(last().url.endsWith('/responses'));
});

test('tools: the tool call comes back', async () => {
  const result = await generateText({
    model: openai.chat('gpt-4o'), prompt: 'Weather in Paris?', headers: promptHeaders('Acme'), maxRetries: 0,
    tools: {
      get_weather: tool({
        description: 'Weather in a city',
        inputSchema: jsonSchema({ type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }),
      }),
    },
  });
  assert.equal(result.toolCalls[0].toolName, 'get_weather');
  assert.deepEqual(result.toolCalls[0].input, { city: 'Paris' });
  assert.equal(last().body.tools[0].function.name, 'get_weather');
  assert.equal(last().body.messages[0].content, rendered('Acme'));
});

test('structured output: the schema reaches the upstream', async () => {
  const { object } = await generateObject({
    model: openai.chat('gpt-4o'), prompt: 'Hi', headers: promptHeaders('Acme'), maxRetries: 0,
    schema: jsonSchema({
      type: 'object', properties: { answer: { type: 'string' } }, required: ['answer'], additionalProperties: false,
    }),
  });
  assert.deepEqual(object, { answer: 'ok' });
  assert.equal(last().body.response_format.type, 'json_schema');
  assert.deepEqual(last().body.response_format.json_schema.schema.required, ['answer']);
});

test('openai-compatible: the prompt by providerOptions, in the body', async () => {
  const { text } = await generateText({
    model: compatible.chatModel('gpt-4o'),
    messages: [
      { role: 'system', content: 'Answer in French.' },
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Salut' },
      { role: 'user', content: 'Bye' },
    ],
    providerOptions: { promptgate: { prompt: { id: 'support', variables: { company: 'Café Zoë ☕' } } } },
    maxRetries: 0,
  });
  assert.equal(text, 'Hello');
  const sent = last().body;
  assert.equal(sent.prompt, undefined, 'the prompt field is removed before the upstream');
  assert.equal(sent.messages[0].content, `${rendered('Café Zoë ☕')}\n\nAnswer in French.`);
  assert.deepEqual(sent.messages.slice(1).map((m) => m.role), ['user', 'assistant', 'user']);
});
