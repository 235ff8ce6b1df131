// Paddle.js overlay checkout for the pricing and billing pages. The page embeds its settings
// as JSON (#paddle-checkout-config); buttons carry a plan code in data-checkout-plan. The
// server creates the transaction (for the account's own Paddle customer) and answers its id;
// the browser never chooses the account, the customer or the price.
(function () {
  "use strict";
  var element = document.getElementById("paddle-checkout-config");
  if (!element || !window.Paddle) {
    return;
  }
  var config = JSON.parse(element.textContent);
  if (config.environment !== "production") {
    window.Paddle.Environment.set("sandbox");
  }
  window.Paddle.Initialize({ token: config.token });

  function showError(button, message) {
    var note = button.parentNode.querySelector("[data-checkout-error]");
    if (note) {
      note.textContent = message;
      note.hidden = false;
    }
  }

  document.querySelectorAll("[data-checkout-plan]").forEach(function (button) {
    button.addEventListener("click", function () {
      button.disabled = true;
      var body = new URLSearchParams({ plan: button.getAttribute("data-checkout-plan") });
      fetch(config.checkoutUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": config.csrfToken },
        body: body,
      })
        .then(function (response) {
          return response.json();
        })
        .then(function (answer) {
          if (!answer.transaction_id) {
            showError(button, answer.error || "Checkout could not be started. Please try again.");
            return;
          }
          window.Paddle.Checkout.open({
            transactionId: answer.transaction_id,
            settings: { displayMode: "overlay", successUrl: config.successUrl },
          });
        })
        .catch(function () {
          showError(button, "Checkout could not be started. Please try again.");
        })
        .finally(function () {
          button.disabled = false;
        });
    });
  });
})();
