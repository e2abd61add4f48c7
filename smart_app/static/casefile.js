// The case pages' small script; every page works without it.
"use strict";
// The referral summary's print button: prints this frame's page (not the EHR around it).
// Without JavaScript the button stays hidden; the browser's own print still works.
document.querySelectorAll("button[data-print]").forEach((button) => {
  button.hidden = false;
  button.addEventListener("click", () => window.print());
});
// A refused save: the focus goes to the form's error summary, which links to each field.
{
  const summary = document.querySelector("[data-error-summary]");
  if (summary) summary.focus();
}
