// Reference timing for bench/bench_tokenizer.c: Hugging Face's tokenizers
// (Rust, through N-API) encoding one text file. Prints one JSON line:
// {"load_ms", "encode_ms" (median), "encode_best_ms", "n_tokens"}.
// Usage: node bench.js TOKENIZER_JSON TEXT_FILE REPS
'use strict';
const fs = require('fs');
const { Tokenizer } = require('tokenizers');

async function main() {
  const [tokPath, textPath, repsArg] = process.argv.slice(2);
  const reps = Math.max(1, parseInt(repsArg || '20', 10));
  const text = fs.readFileSync(textPath).toString('utf8');
  let t0 = process.hrtime.bigint();
  const tok = Tokenizer.fromFile(tokPath);
  const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;
  let n = 0;
  for (let i = 0; i < 2; i++) n = (await tok.encode(text, null, { addSpecialTokens: false })).getLength();
  const times = [];
  for (let i = 0; i < reps; i++) {
    t0 = process.hrtime.bigint();
    await tok.encode(text, null, { addSpecialTokens: false });
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  times.sort((a, b) => a - b);
  process.stdout.write(JSON.stringify({
    load_ms: loadMs, encode_ms: times[Math.floor(times.length / 2)], encode_best_ms: times[0], n_tokens: n,
  }) + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
