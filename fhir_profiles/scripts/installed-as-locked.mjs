// Exits 0 when node_modules holds what package-lock.json asks for, 1 (saying what differs
// on stderr) otherwise. Read from the hidden lock file npm writes at install time
// (node_modules/.package-lock.json): every package of the lock there, at the same version
// and integrity, and nothing else; an optional package (another platform's) may be absent.
// build.sh asks it when node_modules is a link to another checkout's copy, which it must
// not reinstall; the lock file's date says nothing there (a new checkout's is new).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function packages(file) {
  try {
    return JSON.parse(fs.readFileSync(path.join(root, file), 'utf8')).packages ?? {};
  } catch (error) {
    console.error(`${file}: ${error.message}`);
    process.exit(1);
  }
}

const locked = packages('package-lock.json');
const installed = packages('node_modules/.package-lock.json');
const differ = [];
for (const [name, wanted] of Object.entries(locked)) {
  if (name === '') continue; // the project itself
  const have = installed[name];
  if (have === undefined) {
    if (!wanted.optional) differ.push(`${name}: missing (locked ${wanted.version})`);
  } else if (have.version !== wanted.version || have.integrity !== wanted.integrity) {
    differ.push(`${name}: ${have.version} installed, ${wanted.version} locked`);
  }
}
for (const name of Object.keys(installed)) {
  if (!(name in locked)) differ.push(`${name}: installed, not in the lock`);
}
if (differ.length > 0) {
  const shown = differ.slice(0, 10).join('\n  ');
  const more = differ.length > 10 ? `\n  … and ${differ.length - 10} more` : '';
  console.error(`node_modules is not what package-lock.json asks for:\n  ${shown}${more}`);
  process.exit(1);
}
