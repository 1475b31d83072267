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
    // One request per file, so the page can say how far a batch has got; batch normalisation
    // standardises over the batch itself, so its files go together in one request.
    const files = Array.from(input.files);
    const together = form.elements["normalize"].value === "batch";
    const groups = together ? [files] : files.map((file) => [file]);
    run.disabled = true;
    results.replaceChildren();
    let refused = 0;
    try {
      for (const [index, group] of groups.entries()) {
        busy.textContent = together
          ? `Qualifying ${files.length} micrograph(s) as one batch (batch normalisation judges them together)…`
          : `Judging ${index + 1} of ${files.length}: ${group[0].name}…`;
        const body = new FormData();
        for (const file of group) body.append("files", file, file.name);
        const response = await fetch(`/qualify?${query}`, { method: "POST", body, credentials: "same-origin" });
        merge(await response.text());
        if (!response.ok) refused += group.length;
      }
      busy.textContent = refused
        ? `Done: ${files.length - refused} of ${files.length} judged; see below for the rest.`
        : `Done: ${files.length} judged.`;
    } catch (error) {
      busy.textContent = `The server could not be reached (${error}).`;
    } finally {
      run.disabled = input.files.length === 0;
    }
  });

  // Add one answer's results fragment to the page: its rows, rationales and failures join the
  // ones already shown, under one heading.
  function merge(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    const incoming = template.content.querySelector("#run-results");
    const shown = results.querySelector("#run-results");
    if (!incoming) return;
    if (!shown) { results.append(incoming); return; }
    const shownTable = shown.querySelector("table.results tbody");
    const incomingTable = incoming.querySelector("table.results tbody");
    if (!shownTable && incomingTable) {  // the first answers judged nothing: keep their errors
      for (const old of problems(shown)) appendFailure(incoming, old);
      shown.replaceWith(incoming);
      return;
    }
    if (incomingTable) {
      shownTable.append(...incomingTable.children);
      const why = shown.querySelectorAll("details.why");
      const anchor = why[why.length - 1];
      for (const details of incoming.querySelectorAll("details.why")) {
        details.open = false;
        anchor.after(details);
      }
    }
    for (const item of problems(incoming)) appendFailure(shown, item);
  }

  // What an answer could not judge: its list of files, else its one error line.
  function problems(section) {
    const listed = Array.from(section.querySelectorAll("ul.failures li"));
    return listed.length ? listed : Array.from(section.querySelectorAll(".web-error"));
  }

  function appendFailure(section, item) {
    let list = section.querySelector("ul.failures");
    if (!list) {
      const heading = document.createElement("h3");
      heading.textContent = "Files not judged";
      list = document.createElement("ul");
      list.className = "failures";
      section.append(heading, list);
    }
    if (item.tagName === "LI") { list.append(item); return; }
    const entry = document.createElement("li");
    entry.textContent = item.textContent;
    list.append(entry);
  }
  showChosen();
})();
