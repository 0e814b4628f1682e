// Grid videos play while the pointer is over them, so a page of clips can be skimmed.
document.addEventListener("DOMContentLoaded", () => {
  for (const v of document.querySelectorAll(".card video")) {
    v.addEventListener("mouseenter", () => v.play().catch(() => {}));
    v.addEventListener("mouseleave", () => v.pause());
  }
});
