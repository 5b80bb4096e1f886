// Cases on the examiner page: list a case's searches (from the audit log, GET /api/v1/cases/CASE/searches),
// reopen one with its answer (rebuilt from its record) and download the case's bundle. Uses app.js's
// api(), status(), shown() and showAnswer().
"use strict";

// A case id may hold "/" (2026/017): each part is escaped, the slashes kept, as the route takes it whole.
function caseUrl(caseId, tail) {
  return `/api/v1/cases/${caseId.split("/").map(encodeURIComponent).join("/")}/${tail}`;
}

function caseSearchItem(caseId, s) {
  const li = document.createElement("li");
  const queries = s.queries.map((q) => {
    const lr = q.top.log10_lr === null || q.top.log10_lr === undefined ? "" : `, log10 LR ${q.top.log10_lr.toFixed(2)}`;
    return `${shown(q.exhibit)} \u2192 ${shown(q.top.identity)} (score ${Number(q.top.score).toFixed(4)}${lr})`;
  });
  const text = document.createElement("span");
  text.textContent = `record ${s.record} \u00b7 ${s.time.slice(0, 19).replace("T", " ")} UTC \u00b7 ` +
    `${shown(s.examiner || "?")}: ${queries.join("; ")}`;
  const reopen = document.createElement("button");
  reopen.type = "button";
  reopen.className = "reopen";
  reopen.textContent = "Reopen";
  reopen.addEventListener("click", async () => {
    try {
      const found = await (await api(caseUrl(caseId, `searches/${s.record}`))).json();
      showAnswer(found);
      status("search-status", `reopened record ${s.record} of case ${shown(caseId)}: ${shown(found.queries[0].name)} ` +
        `(SHA-256 ${found.queries[0].sha256.slice(0, 16)}...), as recorded at ${s.time}`);
      $("search-section").scrollIntoView();
    } catch (err) {
      status("case-status", err.message, true);
    }
  });
  li.append(reopen, " ", text);
  return li;
}

$("case-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const caseId = $("case-lookup").value.trim();
  if (!caseId) { status("case-status", "enter a case id", true); return; }
  try {
    const found = await (await api(caseUrl(caseId, "searches"))).json();
    $("case-searches").replaceChildren(...found.searches.map((s) => caseSearchItem(caseId, s)));
    $("case-export").hidden = !found.searches.length;
    status("case-status", `case ${shown(caseId)}: ${found.searches.length} search(es) (${found.scope}); ` +
      `audit head ${found.head ? found.head.slice(0, 24) : "none"}...`);
  } catch (err) {
    $("case-searches").replaceChildren();
    status("case-status", err.message, true);
  }
});

$("case-export").addEventListener("click", async () => {
  const caseId = $("case-lookup").value.trim();
  status("case-status", "exporting...");
  try {
    const response = await api(caseUrl(caseId, "export"));
    const name = (response.headers.get("content-disposition") || "").match(/filename="([^"]+)"/);
    const save = document.createElement("a");
    save.href = URL.createObjectURL(await response.blob());
    save.download = name ? name[1] : "handclip-case.zip";
    save.click();
    status("case-status", `exported case ${shown(caseId)} as ${save.download} (check it with sha256sum -c SHA256SUMS)`);
  } catch (err) {
    status("case-status", err.message, true);
  }
});
