// Reference chat template renderer for moe-broker's chat template test:
// Hugging Face's own Jinja implementation (@huggingface/jinja) renders a
// checkpoint's chat_template for each conversation of a case file.
// Usage: node render.js CASES_JSON
// CASES_JSON: {"template": "...", "bos_token": "<s>", "eos_token": "</s>",
//              "cases": [{"messages": [{"role", "content"}...],
//                         "add_generation_prompt": true}...]}
// Prints one JSON line per case: {"text": "..."} or {"error": "..."} when the
// template raises (roles out of order, for example).
'use strict';
const fs = require('fs');
const { Template } = require('@huggingface/jinja');

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const template = new Template(spec.template);
const out = [];
for (const c of spec.cases) {
  try {
    out.push(JSON.stringify({
      text: template.render({
        messages: c.messages,
        add_generation_prompt: c.add_generation_prompt,
        bos_token: spec.bos_token,
        eos_token: spec.eos_token,
      }),
    }));
  } catch (e) {
    out.push(JSON.stringify({ error: String(e.message || e) }));
  }
}
process.stdout.write(out.join('\n') + '\n');
