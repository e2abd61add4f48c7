// The referral summary's print button: prints this frame's page (not the EHR around it).
// Without JavaScript the button stays hidden; the browser's own print still works.
"use strict";
document.querySelectorAll("button[data-print]").forEach((button) => {
  button.hidden = false;
  button.addEventListener("click", () => window.print());
});
