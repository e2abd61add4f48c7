// Writes fsh-generated/build-stamp.json: SHA-256 digests of the FSH sources (with the
// SUSHI configuration and the npm lock file) and of the built resources. A test recomputes
// both, so a source changed without rebuilding, or a hand-edited built file, is caught fast.
// Digest: for each file, sorted by its path relative to fhir_profiles/ (POSIX separators):
//   update(path + "\0" + bytes + "\0")
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function walk(dir, accept) {
  const out = [];
  for (const entry of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
    const rel = `${dir}/${entry.name}`;
    if (entry.isDirectory()) out.push(...walk(rel, accept));
    else if (accept(rel)) out.push(rel);
  }
  return out;
}

function digest(files) {
  const hash = crypto.createHash('sha256');
  for (const rel of [...files].sort()) {
    hash.update(rel + '\0');
    hash.update(fs.readFileSync(path.join(root, rel)));
    hash.update('\0');
  }
  return hash.digest('hex');
}

const sources = ['sushi-config.yaml', 'package-lock.json', ...walk('input', (f) => f.endsWith('.fsh'))];
const outputs = walk('fsh-generated/resources', (f) => f.endsWith('.json'));
const stamp = { sources: digest(sources), outputs: digest(outputs) };
fs.writeFileSync(path.join(root, 'fsh-generated', 'build-stamp.json'), JSON.stringify(stamp, null, 2) + '\n');
console.log(`build stamp: sources ${stamp.sources.slice(0, 12)}, outputs ${stamp.outputs.slice(0, 12)}`);
