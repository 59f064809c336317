// Loads pkg/densenet_web.wasm (a plain module: no imports) and classifies the image the
// user drops or chooses. `?image=URL` classifies that image on load and writes the
// answer into #result (what test.mjs reads in headless Chromium).
const status = document.getElementById("status");
const table = document.getElementById("top");
const preview = document.getElementById("preview");
const resultEl = document.getElementById("result");

const { instance } = await WebAssembly.instantiateStreaming(fetch("pkg/densenet_web.wasm"), {});
const wasm = instance.exports;
status.textContent = "Ready: drop or choose an image.";

async function classify(bytes, name) {
  const ptr = wasm.alloc(bytes.length);
  new Uint8Array(wasm.memory.buffer, ptr, bytes.length).set(bytes);
  const start = performance.now();
  const len = wasm.classify(ptr, bytes.length);
  const ms = performance.now() - start;
  wasm.dealloc(ptr, bytes.length);
  const text = new TextDecoder().decode(new Uint8Array(wasm.memory.buffer, wasm.result(), len));
  const answer = JSON.parse(text);
  resultEl.textContent = text;
  table.replaceChildren();
  if (answer.error) {
    status.textContent = `${name}: ${answer.error}`;
    return;
  }
  status.textContent = `${name}: ${answer.top[0].label} (${ms.toFixed(1)} ms)`;
  for (const { label, probability } of answer.top.slice(0, 5)) {
    const row = table.insertRow();
    row.insertCell().textContent = label;
    const p = row.insertCell();
    p.className = "p";
    p.textContent = `${(100 * probability).toFixed(2)}%`;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, 200 * probability)}px`;
    row.insertCell().append(bar);
  }
}

async function classifyBlob(blob, name) {
  preview.src = URL.createObjectURL(blob);
  await classify(new Uint8Array(await blob.arrayBuffer()), name);
}

document.getElementById("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) classifyBlob(file, file.name);
});
const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const file = e.dataTransfer.files[0];
  if (file) classifyBlob(file, file.name);
});

const url = new URLSearchParams(location.search).get("image");
if (url) {
  const response = await fetch(url);
  await classifyBlob(await response.blob(), url);
  resultEl.hidden = false;
}
