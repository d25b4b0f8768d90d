// The official OpenAI client (npm "openai") against moe-broker serve, for
// tests/integration/serve: node openai_client.js BASE_URL API_KEY MESSAGE
// MAX_TOKENS. Prints one JSON object: the chat reply non-streamed and
// streamed (pieces joined, with the usage chunk), a completion both ways,
// the model list, and the status of a request with a wrong key.
const OpenAI = require('openai');

async function collect(stream) {
    let text = '', usage = null, finish = null, chunks = 0;
    for await (const chunk of stream) {
        chunks++;
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices) {
            text += c.delta ? (c.delta.content || '') : (c.text || '');
            if (c.finish_reason) finish = c.finish_reason;
        }
    }
    return { text, usage, finish, chunks };
}

async function main() {
    const [baseURL, apiKey, message, maxTokens] = process.argv.slice(2);
    const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
    const max_tokens = Number(maxTokens);
    const messages = [{ role: 'user', content: message }];
    const out = {};
    const chat = await client.chat.completions.create({ model: 'any', messages, max_tokens, temperature: 0 });
    out.chat = { text: chat.choices[0].message.content, usage: chat.usage, finish: chat.choices[0].finish_reason };
    out.chat_stream = await collect(await client.chat.completions.create({
        model: 'any', messages, max_tokens, temperature: 0, stream: true, stream_options: { include_usage: true } }));
    const cmpl = await client.completions.create({ model: 'any', prompt: message, max_tokens, temperature: 0 });
    out.completion = { text: cmpl.choices[0].text, usage: cmpl.usage, finish: cmpl.choices[0].finish_reason };
    out.completion_stream = await collect(await client.completions.create({
        model: 'any', prompt: message, max_tokens, temperature: 0, stream: true }));
    out.models = (await client.models.list()).data.map((m) => m.id);
    try {
        await new OpenAI({ baseURL, apiKey: apiKey + 'x', maxRetries: 0 }).models.list();
        out.wrong_key_status = 200;
    } catch (e) {
        out.wrong_key_status = e.status;
    }
    process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
    process.stderr.write(`openai_client: ${e.stack || e}\n`);
    process.exit(1);
});
