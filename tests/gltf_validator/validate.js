// Validate one glTF/GLB file with the Khronos validator and print its report as JSON on stdout.
// Usage: node validate.js FILE.glb
const fs = require("fs");
const path = require("path");
const validator = require("gltf-validator");

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate.js FILE.glb");
  process.exit(2);
}
const data = new Uint8Array(fs.readFileSync(file));
validator
  .validateBytes(data, {
    uri: path.basename(file),
    maxIssues: 1000,
    // A GLB is self-contained: any external resource it asks for is itself a problem worth reporting.
    externalResourceFunction: (uri) => Promise.reject(new Error(`external resource requested: ${uri}`)),
  })
  .then((report) => {
    process.stdout.write(JSON.stringify(report));
  })
  .catch((error) => {
    console.error(String(error));
    process.exit(1);
  });
