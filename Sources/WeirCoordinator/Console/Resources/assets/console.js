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
