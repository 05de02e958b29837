// Live updates by polling: every element with data-live="URL" has its content replaced by what URL answers,
// every data-poll-ms (the page works the same without JavaScript; reload to refresh). Same origin only.
(function () {
  "use strict";
  var period = parseInt(document.body.getAttribute("data-poll-ms"), 10) || 3000;
  function refresh(element) {
    var url = element.getAttribute("data-live");
    if (!url || document.hidden) { return; }
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null || element.contains(document.activeElement) && document.activeElement !== document.body) { return; }
        var holder = document.createElement(element.tagName === "TBODY" ? "table" : "div");
        holder.innerHTML = element.tagName === "TBODY" ? "<tbody>" + html + "</tbody>" : html;
        var fresh = element.tagName === "TBODY" ? holder.querySelector("tbody") : holder;
        element.replaceChildren.apply(element, Array.prototype.slice.call(fresh.childNodes));
        if (element.querySelector("[data-ended]")) { element.removeAttribute("data-live"); }  // the run ended
      })
      .catch(function () { /* the server may be restarting: try again next time */ });
  }
  function tick() {
    document.querySelectorAll("[data-live]").forEach(refresh);
  }
  window.setInterval(tick, period);
}());
