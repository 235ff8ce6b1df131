/*
 * ReqRun progressive enhancements. Every page works without this file.
 *
 *   <form data-confirm="Revoke this key?">   asks before submitting.
 *   <button type="button" data-copy-target="some-id" hidden>Copy</button>
 *                                            copies the text of #some-id; shown only
 *                                            when the Clipboard API is available.
 */
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    var message = form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });

  function enableCopyButtons() {
    if (!navigator.clipboard || !window.isSecureContext) return;
    var buttons = document.querySelectorAll("[data-copy-target]");
    Array.prototype.forEach.call(buttons, function (button) {
      var target = document.getElementById(button.getAttribute("data-copy-target"));
      if (!target) return;
      var label = button.textContent;
      button.hidden = false;
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(target.textContent.trim()).then(
          function () { button.textContent = "Copied"; },
          function () { button.textContent = "Copy failed"; }
        ).then(function () {
          window.setTimeout(function () { button.textContent = label; }, 2000);
        });
      });
    });
  }

  // Times are rendered relative ("3 minutes ago") with UTC on hover; with JavaScript the
  // hover shows the reader's own time zone instead.
  function localiseTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (element) {
      var when = new Date(element.getAttribute("datetime"));
      if (!isNaN(when)) {
        element.title = when.toLocaleString(undefined, { timeZoneName: "short" });
      }
    });
  }

  function ready() {
    enableCopyButtons();
    localiseTimes();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", ready);
  } else {
    ready();
  }
})();
