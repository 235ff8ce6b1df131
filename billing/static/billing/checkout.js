// Paddle.js overlay checkout for the pricing and billing pages. The page embeds its settings
// as JSON (#paddle-checkout-config); buttons carry the Paddle price id in data-paddle-price.
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

  document.querySelectorAll("[data-paddle-price]").forEach(function (button) {
    button.addEventListener("click", function () {
      window.Paddle.Checkout.open({
        items: [{ priceId: button.getAttribute("data-paddle-price"), quantity: 1 }],
        customData: { account_id: config.accountId },
        customer: { email: config.email },
        settings: { displayMode: "overlay", successUrl: config.successUrl },
      });
    });
  });
})();
