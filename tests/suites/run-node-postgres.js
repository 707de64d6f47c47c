// Runs node-postgres's integration tests through whatever PGHOST/PGPORT/
// PGUSER/PGPASSWORD/PGDATABASE name: each
// node-postgres/packages/pg/test/integration/**/*-tests.js in a node process
// of its own, as pg's Makefile does, leaving out the tests named in the
// deselect lists. Ours, not node-postgres's.
//
//   node run-node-postgres.js [--timeout SECS] [--deselect-list FILE]... [FILE-FILTER]
//
// A list entry is `FILE :: TEST NAME` (one test) or `FILE` (the whole file),
// FILE relative to test/integration, under a `# reason: TEXT` line. Exits 1
// if a file fails or times out, or if an entry names no test; prints the
// failed files' output and the counts by reason.
'use strict'
const fs = require('fs')
const os = require('os')
const path = require('path')
const { spawn } = require('child_process')

const root = path.join(__dirname, 'node-postgres/packages/pg')
const integration = path.join(root, 'test/integration')

function parseArgs(argv) {
  const args = { timeout: 120, lists: [], filter: null }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--timeout') args.timeout = Number(argv[++i])
    else if (argv[i] === '--deselect-list') args.lists.push(argv[++i])
    else args.filter = argv[i]
  }
  return args
}

function parseList(file) {
  const entries = []
  let reason = null
  fs.readFileSync(file, 'utf8')
    .split('\n')
    .forEach((raw, i) => {
      const line = raw.trim()
      if (line.startsWith('# reason:')) reason = line.slice('# reason:'.length).trim()
      else if (line && !line.startsWith('#')) {
        if (!reason) throw new Error(`${file}:${i + 1}: a test before any '# reason:' line`)
        const [testFile, name] = line.split(' :: ')
        entries.push({ file: testFile.trim(), name: name && name.trim(), reason, source: path.basename(file), hits: 0 })
      }
    })
  return entries
}

function findTests(dir) {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((d) => {
      const p = path.join(dir, d.name)
      if (d.isDirectory()) return findTests(p)
      return d.name.endsWith('-tests.js') ? [p] : []
    })
    .sort()
}

function runFile(file, skip, timeoutSecs) {
  const results = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pg-suite-')), 'results')
  fs.writeFileSync(results, '')
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-r', path.join(__dirname, 'node-deselect.js'), file], {
      cwd: root,
      env: { ...process.env, PGSIDECAR_SKIP: JSON.stringify(skip), PGSIDECAR_RESULTS: results },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let output = ''
    child.stdout.on('data', (d) => (output += d))
    child.stderr.on('data', (d) => (output += d))
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, timeoutSecs * 1000)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      const events = fs
        .readFileSync(results, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l))
      fs.rmSync(path.dirname(results), { recursive: true })
      resolve({ code, signal, timedOut, output, events })
    })
  })
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const entries = args.lists.flatMap(parseList)
  const files = findTests(integration).filter((f) => !args.filter || f.includes(args.filter))
  const counts = { files: 0, tests: 0, passed: 0, failed: 0, failedFiles: [] }
  const byReason = new Map()
  const deselected = (e) => {
    e.hits++
    const key = `${e.source}: ${e.reason}`
    byReason.set(key, (byReason.get(key) || 0) + 1)
  }
  const started = Date.now()
  for (const file of files) {
    const rel = path.relative(integration, file)
    const mine = entries.filter((e) => e.file === rel)
    const whole = mine.find((e) => !e.name)
    if (whole) {
      deselected(whole)
      console.log(`- ${rel}: deselected (${whole.reason})`)
      continue
    }
    const skip = mine.map((e) => ({ name: e.name, reason: e.reason }))
    const t0 = Date.now()
    const r = await runFile(file, skip, args.timeout)
    counts.files++
    const declared = r.events.filter((e) => e.declared !== undefined)
    const passed = r.events.filter((e) => e.passed !== undefined).length
    for (const e of mine) {
      if (declared.some((d) => String(d.declared).trim() === e.name)) deselected(e)
    }
    // A file that declares no suite tests is one unit of its own.
    const units = declared.filter((d) => !d.deselected).length || 1
    const ok = r.code === 0 && !r.timedOut
    counts.tests += units
    // A failing file exits at its first failure, or fails after its tests
    // reported success (a late assertion, an unhandled 'error'): all of its
    // tests count as failed.
    if (ok) counts.passed += units
    else counts.failed += units
    const how = r.timedOut ? `TIMEOUT after ${args.timeout}s` : ok ? 'ok' : `FAILED (exit ${r.code ?? r.signal})`
    console.log(`${ok ? '✔' : '✘'} ${rel}: ${how}, ${declared.length ? passed + '/' + units + ' tests' : 'no suite tests'}, ${((Date.now() - t0) / 1000).toFixed(1)}s`)
    if (!ok) counts.failedFiles.push({ rel, output: r.output })
  }
  const stale = entries.filter(
    (e) => !e.hits && (!args.filter || e.file.includes(args.filter) || !fs.existsSync(path.join(integration, e.file)))
  )
  for (const f of counts.failedFiles) {
    console.log(`\n===== ${f.rel} =====\n${f.output}`)
  }
  console.log(
    `\n${counts.files} files run, ${counts.tests} tests selected, ${counts.passed} passed, ` +
      `${counts.failedFiles.length} files failed, in ${((Date.now() - started) / 1000).toFixed(1)}s`
  )
  for (const [reason, n] of byReason) console.log(`${String(n).padStart(5)} deselected  ${reason}`)
  for (const e of stale) console.log(`deselect list entry that matches no test: ${e.source}: ${e.file}${e.name ? ' :: ' + e.name : ''}`)
  process.exit(counts.failedFiles.length || stale.length ? 1 : 0)
}

main().catch((e) => {
  console.error(e)
  process.exit(2)
})
