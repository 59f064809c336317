#!/usr/bin/env bash
# Builds the page's WebAssembly module (SIMD128 kernels on) into examples/web/pkg/.
#   examples/web/build.sh && node examples/web/serve.mjs   # then open http://localhost:8000
set -euo pipefail
cd "$(dirname "$0")/../.."
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
CARGO_TARGET_DIR=target/wasm-simd128 \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+simd128" \
  cargo build -p densenet-web-example --target wasm32-unknown-unknown --release
mkdir -p examples/web/pkg
cp target/wasm-simd128/wasm32-unknown-unknown/release/densenet_web_example.wasm \
  examples/web/pkg/densenet_web.wasm
ls -l examples/web/pkg/densenet_web.wasm
