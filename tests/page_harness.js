// Runs the script of bertkit serve's web page against a live server in node, with a minimal DOM: fills in the
// page's example inputs, presses each visible button and prints, as JSON, what every section then shows.
// Usage: node page_harness.js http://127.0.0.1:PORT page_script.js
const [base, scriptPath] = process.argv.slice(2);
const fs = require("fs");
const elements = {};
global.document = {
  getElementById(id) {
    if (!elements[id]) elements[id] = {id, innerHTML: "", textContent: "", value: "", style: {}, onclick: null};
    return elements[id];
  },
};
const realFetch = fetch;
global.fetch = (path, opts) => realFetch(base + path, opts);
const source = fs.readFileSync(scriptPath, "utf8");
(async () => {
  eval(source);
  for (let waited = 0; !elements.info || !elements.info.textContent; waited += 50) {  // until /api/info is shown
    if (waited > 60000) throw new Error("the page never showed the model's description");
    await new Promise((r) => setTimeout(r, 50));
  }
  // inputs the page creates with innerHTML: give them the example values the markup holds
  for (const m of (elements["predict-fields"] || {innerHTML: ""}).innerHTML.matchAll(/id="f-(\w+)"(?: value="([^"]*)")?>([^<]*)/g)) {
    document.getElementById("f-" + m[1]).value = m[2] !== undefined ? m[2] : m[3];
  }
  document.getElementById("mask-text").value = "今天天气很[MASK]，我们不得不取消户外运动。";
  document.getElementById("embed-a").value = "这家酒店的服务很好。";
  document.getElementById("embed-b").value = "酒店服务员非常热情。";
  const out = {info: elements.info.textContent, shown: {}};
  for (const [section, button, result] of [["predict", "predict-go", "predict-out"], ["fill-mask", "mask-go", "mask-out"], ["embed", "embed-go", "embed-out"]]) {
    out.shown[section] = document.getElementById(section).style.display === "block";
    if (out.shown[section]) { await elements[button].onclick(); out[section] = elements[result].innerHTML; }
  }
  console.log(JSON.stringify(out));
})();
