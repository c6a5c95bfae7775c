// The AI cost gateway dashboard: refreshes a page's headline figures in place.
// Written for this project (Apache-2.0, like the gateway); no library, no other host.
(function () {
  "use strict";
  var section = document.querySelector("[data-live]");
  if (!section) { return; }
  var url = section.getAttribute("data-live");
  var every = parseInt(section.getAttribute("data-refresh-ms"), 10) || 2000;
  var status = document.querySelector("[data-live-status]");
  var busy = false;

  function show(text) { if (status) { status.textContent = text; } }

  function apply(figures) {
    Object.keys(figures).forEach(function (name) {
      var node = section.querySelector('[data-metric="' + name + '"]');
      if (!node) { return; }
      var figure = figures[name];
      if (node.getAttribute("data-value") !== figure.value) {
        node.setAttribute("data-value", figure.value);
        node.textContent = figure.text;
        node.classList.add("changed");
        setTimeout(function () { node.classList.remove("changed"); }, 800);
      }
    });
  }

  function poll() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        if (!response.ok || type.indexOf("application/json") !== 0) {
          throw new Error("signed out");
        }
        return response.json();
      })
      .then(function (body) {
        apply(body.figures);
        show("live, updated " + new Date().toLocaleTimeString());
      })
      .catch(function () { show("paused: reload the page"); })
      .then(function () { busy = false; });
  }

  setInterval(poll, every);
})();
