// The case pages' small script; every page works without it.
"use strict";
// The referral summary's print button: prints this frame's page (not the EHR around it).
// Without JavaScript the button stays hidden; the browser's own print still works.
document.querySelectorAll("button[data-print]").forEach((button) => {
  button.hidden = false;
  button.addEventListener("click", () => window.print());
});
// A refused save: the focus goes to the form's error summary, which links to each field.
// A save done: to its result, so that a screen reader says it (a live region that is
// already there when the page loads is not announced, nor is a page loaded in a frame).
{
  const target =
    document.querySelector("[data-error-summary]") ||
    document.querySelector("[data-focus-on-load]");
  if (target) target.focus();
}
