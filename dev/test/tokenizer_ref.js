// Reference GPT-2 tokenizer for dev/test/test_tokenizer.py, using the npm package
// js-tiktoken (a JavaScript port of tiktoken) and its "gpt2" ranks.
//
// Usage: node dev/test/tokenizer_ref.js NPM_PREFIX < input.json > output.json
//   NPM_PREFIX: the folder given to `npm install --prefix` (e.g. build/npm)
//   input:  a JSON array of strings
//   output: {"version": ..., "tiktoken": [[ids]...], "js_stock": [[ids]...]}
//
// "tiktoken": js-tiktoken's BPE with the gpt2 pattern, where \s / \S are
//   replaced by \p{White_Space} / \P{White_Space}. tiktoken itself (Rust regex
//   crate) and OpenAI's original encoder.py (Python `regex`) use the Unicode
//   White_Space property for \s; JavaScript's \s instead includes U+FEFF and
//   leaves out U+0085, which occurs in 1,358 IMDB reviews.
// "js_stock": js-tiktoken exactly as shipped (JavaScript \s), for information.
//
// Both encode like tiktoken's encode_ordinary: "<|endoftext|>" is plain text.
"use strict";
const path = require("path");
const fs = require("fs");

const prefix = path.resolve(process.argv[2] || "build/npm");
let lite, gpt2, version;
try {
  const opts = { paths: [prefix] };
  lite = require(require.resolve("js-tiktoken/lite", opts));
  gpt2 = require(require.resolve("js-tiktoken/ranks/gpt2", opts));
  const pkgDir = path.join(prefix, "node_modules", "js-tiktoken");
  version = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8")).version;
} catch (e) {
  process.stderr.write(`tokenizer_ref.js: js-tiktoken not found under ${prefix} ` +
    `(run: npm install --prefix ${process.argv[2] || "build/npm"} js-tiktoken): ${e.message}\n`);
  process.exit(2);
}
const ranks = gpt2.default || gpt2;

const stockPattern = ranks.pat_str;
const fixedPattern = stockPattern.replace(/\\s/g, "\\p{White_Space}").replace(/\\S/g, "\\P{White_Space}");
if (fixedPattern === stockPattern) {
  process.stderr.write("tokenizer_ref.js: unexpected gpt2 pattern: " + stockPattern + "\n");
  process.exit(2);
}
const fixed = new lite.Tiktoken({ ...ranks, pat_str: fixedPattern });
const stock = new lite.Tiktoken(ranks);

const texts = JSON.parse(fs.readFileSync(0, "utf8"));
// allowedSpecial = [] and disallowedSpecial = []: special tokens are plain text.
const out = {
  version,
  pattern: fixedPattern,
  tiktoken: texts.map((t) => fixed.encode(t, [], [])),
  js_stock: texts.map((t) => stock.encode(t, [], [])),
};
process.stdout.write(JSON.stringify(out));
