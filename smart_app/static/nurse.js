// Progressive enhancement of the triage form: every action also works without this file
// (a server round trip). No inline scripts: the CSP allows scripts from 'self' only.
"use strict";
(function () {
  const form = document.querySelector("[data-triage-form]");
  if (!form) {
    // The saved page: its result takes the focus, so that a screen reader says it (a
    // live region already there at load is not announced, nor a page loaded in a frame).
    const result = document.querySelector("[data-focus-on-load]");
    if (result) result.focus();
    return;
  }
  const rows = form.querySelector("[data-children]");
  const template = document.getElementById("child-row-template");
  const announcer = form.querySelector("[data-row-announcer]");
  const addButton = form.querySelector("[data-add-child]");
  const limitNote = form.querySelector("[data-children-limit]");
  const maxChildren = Number(rows.getAttribute("data-max-children"));

  function announce(text) { announcer.textContent = text; }

  function rowCount() { return rows.querySelectorAll("[data-child-row]").length; }

  // The server refuses a save with more new rows than the page takes (the record's
  // children do not count): at the limit "+ kind" gives way to a note saying so, as on
  // the server-rendered page.
  function syncLimit() {
    const added = rows.querySelectorAll("[data-child-row]:not([data-in-record])").length;
    const full = added >= maxChildren;
    addButton.hidden = full;
    limitNote.hidden = !full;
    return full;
  }

  function renumber() {
    rows.querySelectorAll("[data-child-row]").forEach(function (row, index) {
      row.querySelectorAll("[data-child-number]").forEach(function (span) {
        span.textContent = String(index + 1);
      });
    });
  }

  function nextIndex() {
    let max = -1;
    rows.querySelectorAll("[data-child-ref]").forEach(function (input) {
      const match = /^child-(\d+)-ref$/.exec(input.name);
      if (match) max = Math.max(max, Number(match[1]));
    });
    return max + 1;
  }

  function addRow() {
    const index = String(nextIndex());
    const html = template.innerHTML.split("__I__").join(index);
    const holder = document.createElement("div");
    holder.innerHTML = html;
    const row = holder.firstElementChild;
    const ref = row.querySelector("[data-child-ref]");
    // A ref fixed in the browser keeps a double submit idempotent; the server makes one otherwise.
    if (window.crypto && crypto.randomUUID) ref.value = "urn:uuid:" + crypto.randomUUID();
    rows.appendChild(row);
    renumber();
    const full = syncLimit();
    row.querySelector("input[type=text]").focus();
    const legend = row.querySelector("legend").textContent.trim();
    announce(full ? legend + ". " + limitNote.textContent.trim() : legend);
  }

  form.addEventListener("click", function (event) {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.hasAttribute("data-add-child")) {
      event.preventDefault();
      addRow();
    } else if (button.hasAttribute("data-remove-child")) {
      const row = button.closest("[data-child-row]");
      if (rowCount() === 1) return; // server keeps one row
      event.preventDefault();
      const legend = row.querySelector("legend").textContent.trim();
      row.remove();
      renumber();
      syncLimit();
      addButton.focus();
      announce(legend + " " + announcer.getAttribute("data-removed"));
    }
  });

  // Step 3 applies with "no concern" only; the expected-child details only when ticked.
  const step3 = form.querySelector("[data-step3]");
  const expecting = document.getElementById("expecting");
  const expectingDetails = form.querySelector("[data-expecting-details]");
  function sync() {
    const chosen = form.querySelector("[data-assessment]:checked");
    step3.hidden = !chosen || chosen.value !== "no-concern";
    expectingDetails.hidden = !expecting.checked;
  }
  form.addEventListener("change", sync);
  sync();

  const summary = document.querySelector("[data-error-summary]");
  const focusId = form.getAttribute("data-focus");
  if (summary) summary.focus();
  else if (focusId && document.getElementById(focusId)) document.getElementById(focusId).focus();
})();
