// Reference encoder for moe-broker's tokenizer parity test: Hugging Face's
// tokenizers (Rust, through N-API) encodes and decodes each corpus case and
// prints one JSON line per case: {"ids", "ids_special", "text", "text_skip"}.
// Usage: node encode.js TOKENIZER_JSON CORPUS_FILE
// Cases: every line of the corpus that is neither empty nor starts with '#',
// with the escapes \\ \n \r \t \xNN turned into bytes, then the whole file's
// raw bytes as the last case. Bytes reach the tokenizer as Node decodes them
// from UTF-8 (each maximal invalid subsequence becomes U+FFFD).
'use strict';
const fs = require('fs');
const { Tokenizer } = require('tokenizers');

function unescape(line) {
  const out = [];
  for (let i = 0; i < line.length; i++) {
    if (line[i] !== 0x5c || i + 1 >= line.length) { out.push(line[i]); continue; }
    const c = String.fromCharCode(line[++i]);
    if (c === 'n') out.push(0x0a);
    else if (c === 'r') out.push(0x0d);
    else if (c === 't') out.push(0x09);
    else if (c === '\\') out.push(0x5c);
    else if (c === 'x' && i + 2 < line.length &&
             /^[0-9a-fA-F]{2}$/.test(String.fromCharCode(line[i + 1], line[i + 2]))) {
      out.push(parseInt(String.fromCharCode(line[i + 1], line[i + 2]), 16));
      i += 2;
    } else { out.push(0x5c, line[i]); }
  }
  return Buffer.from(out);
}

function cases(raw) {
  const list = [];
  let start = 0;
  for (let i = 0; i <= raw.length; i++) {
    if (i < raw.length && raw[i] !== 0x0a) continue;
    const line = raw.subarray(start, i);
    start = i + 1;
    if (line.length === 0 || line[0] === 0x23) continue;
    list.push(unescape(line));
  }
  list.push(raw);
  return list;
}

async function main() {
  const [tokPath, corpusPath] = process.argv.slice(2);
  const tok = Tokenizer.fromFile(tokPath);
  const out = [];
  for (const bytes of cases(fs.readFileSync(corpusPath))) {
    const text = bytes.toString('utf8');
    const plain = await tok.encode(text, null, { addSpecialTokens: false });
    const special = await tok.encode(text, null, { addSpecialTokens: true });
    const ids = plain.getIds();
    const idsSpecial = special.getIds();
    out.push(JSON.stringify({
      ids, ids_special: idsSpecial,
      text: await tok.decode(ids, false),
      text_skip: await tok.decode(idsSpecial, true),
    }));
  }
  process.stdout.write(out.join('\n') + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
