// qrpool console: the few things a server-rendered page cannot do alone. Every page works
// without this file; it adds the live counter, the QR preview, confirmations and the
// browser's time zone as the default for charts.
"use strict";

(function () {
  // The browser's time zone, for pages that were not given one (read by the server).
  try {
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone && !document.cookie.split("; ").includes("qrpool_tz=" + encodeURIComponent(zone))) {
      document.cookie = "qrpool_tz=" + encodeURIComponent(zone) + "; Path=/console; SameSite=Strict; Max-Age=31536000";
    }
  } catch (_) { /* no Intl: UTC it is */ }

  // Scans in the last minutes, polled every few seconds.
  for (const live of document.querySelectorAll("[data-live]")) {
    const every = Number(live.dataset.every || 5000);
    const refresh = async () => {
      try {
        const answer = await fetch(live.dataset.live, { headers: { accept: "application/json" }, cache: "no-store" });
        if (answer.ok) {
          const figures = await answer.json();
          live.querySelector("[data-scans]").textContent = figures.scans.toLocaleString();
          const stamp = live.querySelector("[data-at]");
          if (stamp) stamp.textContent = new Date().toLocaleTimeString();
        }
      } catch (_) { /* offline for a moment: try again at the next tick */ }
    };
    setInterval(refresh, every);
  }

  // A live preview of a QR code as its options change, and the download links with them.
  for (const form of document.querySelectorAll("form[data-qr-preview]")) {
    const image = document.getElementById(form.dataset.qrPreview);
    const update = () => {
      const query = new URLSearchParams(new FormData(form));
      for (const [name, value] of [...query]) if (value === "") query.delete(name);
      const suffix = query.toString() ? "?" + query : "";
      image.src = form.dataset.png + suffix;
      for (const link of form.querySelectorAll("a[data-format]")) {
        link.href = (link.dataset.format === "svg" ? form.dataset.svg : form.dataset.png) + suffix;
      }
    };
    form.addEventListener("input", update);
    form.addEventListener("change", update);
  }

  // Destructive buttons ask first.
  for (const button of document.querySelectorAll("button[data-confirm]")) {
    button.addEventListener("click", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  }
})();
