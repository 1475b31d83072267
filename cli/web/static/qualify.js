// The qualify page of `kb serve`: pick or drop micrographs, send them with this run's options
// to POST /qualify and show the results fragment. Served by the app as /static/qualify.js, so
// the Content-Security-Policy needs no inline script.
(() => {
  "use strict";
  const form = document.getElementById("qualify-form");
  const input = document.getElementById("files");
  const zone = document.getElementById("drop-zone");
  const chosen = document.getElementById("chosen");
  const run = document.getElementById("run");
  const busy = document.getElementById("busy");
  const results = document.getElementById("results");
  const fusion = document.getElementById("fusion");
  const weights = document.getElementById("weights");

  function showChosen() {
    chosen.replaceChildren();
    for (const file of input.files) {
      const item = document.createElement("li");
      item.textContent = `${file.name} (${Math.max(1, Math.round(file.size / 1024))} kB)`;
      chosen.append(item);
    }
    run.disabled = input.files.length === 0;
  }

  zone.addEventListener("click", (event) => { if (event.target.tagName !== "LABEL") input.click(); });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const files = new DataTransfer();
    for (const file of event.dataTransfer.files) files.items.add(file);
    input.files = files.files;
    showChosen();
  });
  input.addEventListener("change", showChosen);
  fusion.addEventListener("change", () => { weights.hidden = fusion.value !== "weighted"; });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (input.files.length === 0) return;
    const query = new URLSearchParams();
    for (const name of ["normalize", "fusion", "threshold", "review_margin", "um_per_px", "operator"]) {
      const value = form.elements[name].value.trim();
      if (value) query.set(name, value);
    }
    if (fusion.value === "weighted") {
      for (const role of ["text", "image"]) {
        const value = form.elements[`weight_${role}`].value.trim();
        if (value) query.append("weight", `${role}=${value}`);
      }
    }
    const body = new FormData();
    for (const file of input.files) body.append("files", file, file.name);
    run.disabled = true;
    busy.textContent = `Qualifying ${input.files.length} micrograph(s)…`;
    try {
      const response = await fetch(`/qualify?${query}`, { method: "POST", body, credentials: "same-origin" });
      results.innerHTML = await response.text();
      busy.textContent = response.ok ? "Done." : `The server answered ${response.status}.`;
    } catch (error) {
      results.replaceChildren();
      busy.textContent = `The server could not be reached (${error}).`;
    } finally {
      run.disabled = input.files.length === 0;
    }
  });
  showChosen();
})();
