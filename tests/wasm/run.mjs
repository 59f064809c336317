// Loads the wasm32 build of tests/wasm (a plain module: no imports, `extern "C"`
// exports) and checks every fixture's logits against its framework's, as the host
// tests do (`parity` <= 1e-4); prints the time of a forward pass of each.
//
//   node tests/wasm/run.mjs target/wasm32-unknown-unknown/release/densenet_wasm_test.wasm [--simd]
import { readFileSync } from "node:fs";

const names = ["torchvision_small", "cifar_bc", "keras_small"];
const path = process.argv[2];
if (!path) {
  console.error("usage: node run.mjs MODULE.wasm");
  process.exit(2);
}
const { instance } = await WebAssembly.instantiate(readFileSync(path), {});
const { fixtures, parity, forward, kernels, kernel_check } = instance.exports;
let failed = 0;
// SIMD128 builds (RUSTFLAGS="-C target-feature=+simd128") have the direct convolution;
// others fall back to im2col + GEMM. `--simd` requires the kernels.
const wantSimd = process.argv.includes("--simd");
if (kernels()) {
  const worst = kernel_check();
  const ok = worst >= 0 && worst <= 1e-5;
  console.log(`direct convolution (SIMD128) vs its oracle: worst ${worst.toExponential(2)} ${ok ? "ok" : "FAILED"}`);
  if (!ok) failed++;
} else {
  console.log("no SIMD128 kernels in this build: im2col + GEMM");
  if (wantSimd) failed++;
}
for (let i = 0; i < fixtures(); i++) {
  const d = parity(i);
  const ok = d >= 0 && d <= 1e-4;
  forward(i, 1); // warm-up
  const runs = 5;
  const start = performance.now();
  const logit = forward(i, runs);
  const ms = (performance.now() - start) / runs;
  console.log(
    `${names[i] ?? i}: max |wasm - framework| / scale = ${d.toExponential(2)} ` +
      `${ok ? "ok" : "FAILED"}; forward ${ms.toFixed(1)} ms (batch of 2), logit ${logit}`,
  );
  if (!ok || !Number.isFinite(logit)) failed++;
}
process.exit(failed ? 1 : 0);
