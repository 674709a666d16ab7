// PouchDB contender of the side-by-side benchmark (../side_by_side.rs).
//
//   node replicate.js SOURCE_URL EXPECTED_DOCS
//
// One-shot replication from SOURCE_URL (a CouchDB database over HTTP) into a fresh in-memory
// PouchDB (pouchdb-adapter-memory), with PouchDB's default replication settings. Prints one JSON
// line: the seconds and CPU seconds spent in the replication alone (not starting node, not
// loading modules), the documents written and the target's doc_count. The bench reads the whole
// process's CPU time and peak RSS itself (wait4).
"use strict";

const PouchDB = require("pouchdb");
PouchDB.plugin(require("pouchdb-adapter-memory"));

// Never hang the bench: give up after two minutes.
setTimeout(() => {
  console.error("replicate.js: no result within 120 s");
  process.exit(1);
}, 120_000).unref();

async function main() {
  const [source, expected] = [process.argv[2], Number(process.argv[3])];
  if (!source || !expected) {
    throw new Error("usage: node replicate.js SOURCE_URL EXPECTED_DOCS");
  }
  const remote = new PouchDB(source, { skip_setup: true });
  const local = new PouchDB("side-by-side-copy", { adapter: "memory" });
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const result = await PouchDB.replicate(remote, local);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const info = await local.info();
  process.stdout.write(
    JSON.stringify({
      secs,
      docs_written: result.docs_written,
      doc_count: info.doc_count,
      repl_cpu_s: (cpu.user + cpu.system) / 1e6,
      adapter: info.adapter,
      pouchdb: PouchDB.version,
    }) + "\n",
  );
  if (result.status !== "complete" || info.doc_count !== expected) {
    throw new Error(
      `replicated ${info.doc_count} docs (status ${result.status}), expected ${expected}`,
    );
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
