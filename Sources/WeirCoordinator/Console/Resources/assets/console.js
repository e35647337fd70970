// Weir console: live parts of server-rendered pages. The server renders (and escapes) every fragment; this
// only puts them in place. Served from the coordinator itself (the Content-Security-Policy allows nothing else).
"use strict";

// A table with data-live="URL" follows that server-sent event stream: "rows" replaces its body, "summary"
// and "pager" the elements named like the table plus "-summary" and "-pager".
function follow(table) {
  const source = new EventSource(table.dataset.live);
  const part = (suffix) => document.getElementById(table.id + suffix);
  source.addEventListener("rows", (event) => { table.tBodies[0].innerHTML = event.data; });
  source.addEventListener("summary", (event) => { const element = part("-summary"); if (element) element.textContent = event.data; });
  source.addEventListener("pager", (event) => { const element = part("-pager"); if (element) element.innerHTML = event.data; });
  // Signed out or expired: the stream ends with "signed_out"; go to the sign-in page rather than show stale data.
  source.addEventListener("signed_out", () => { source.close(); window.location.assign("/login"); });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table[data-live]").forEach(follow);
});

// The document editor: the server validates as you type (the agent's own validator), and each message
// names its line and column; clicking one puts the cursor there.
function editor(form) {
  const text = form.querySelector("textarea");
  const list = document.getElementById("diagnostics");
  const validity = document.getElementById("validity");
  const token = document.querySelector('meta[name="csrf-token"]').content;
  let timer = null, sent = 0;
  const show = (messages, valid) => {
    list.replaceChildren(...messages.map((message) => {
      const item = document.createElement("li");
      item.dataset.line = message.line;
      item.textContent = `line ${message.line}, column ${message.column}: ${message.text}`;
      return item;
    }));
    validity.textContent = valid ? "Valid." : `${messages.length} problem${messages.length === 1 ? "" : "s"}.`;
  };
  const validate = async () => {
    const mine = ++sent;
    const response = await fetch(form.dataset.validate, {
      method: "POST", headers: { "Content-Type": "text/plain; charset=utf-8", "X-CSRF-Token": token }, body: text.value,
      credentials: "same-origin",
    });
    if (!response.ok || mine !== sent) return;
    const result = await response.json();
    show(result.messages, result.valid);
  };
  text.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(validate, 400); });
  list.addEventListener("click", (event) => {
    const line = Number(event.target.dataset.line || 0);
    if (!line) return;
    const lines = text.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((sum, part) => sum + part.length + 1, 0);
    text.focus();
    text.setSelectionRange(start, start + (lines[line - 1] || "").length);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("editor");
  if (form && form.dataset.validate) editor(form);
});
