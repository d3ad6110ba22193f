// The rating page: one view at a time, a score 0-5 by button or key, stored at once; the rater's name is kept in
// this browser so a rater who comes back goes on where they stopped. Text from the server goes in by textContent.
"use strict";
(function () {
  const byId = function (id) { return document.getElementById(id); };
  let rater = "";
  let current = null;
  let busy = false;  // a request is on its way: keys pressed meanwhile must not rate the view just rated
  const history = [];  // views rated in this visit, for going back

  function say(text) { byId("message").textContent = text || ""; }

  // the server's token, from the address it printed: every request of the page carries it
  const token = new URLSearchParams(location.search).get("token") || "";

  function request(path, body) {
    const headers = { "X-Localjudge-Token": token };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const options = body === undefined ? { headers: headers } :
      { method: "POST", headers: headers, body: JSON.stringify(body) };
    return fetch(path, options).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) throw new Error(data.error || ("HTTP " + response.status));
        return data;
      });
    });
  }

  function show(state) {
    byId("progress").textContent = state.rater + ": " + state.rated + " of " + state.total + " rated";
    current = state.view;
    document.body.setAttribute("data-view", current ? current.view_id : "");
    if (!current) {
      byId("rating").hidden = true;
      say("Every view is rated. Thank you. Go back with ← to change a score.");
      return;
    }
    say("");
    byId("rating").hidden = false;
    byId("picture").setAttribute("src", current.image + "?token=" + encodeURIComponent(token));
    byId("label").textContent = current.label;
    // a heatmap view holds no alpha or beta (it reads neither)
    byId("mode").textContent = current.image_mode + " view" +
      (current.alpha === null ? "" : " (α " + current.alpha + ", β " + current.beta + ")") + ", #" + current.position;
    byId("rubric").textContent = current.rubric;
    byId("previous").textContent = current.score === null ? "" : "You gave this view " + current.score + ".";
    document.querySelectorAll("#scores button").forEach(function (button) {
      button.classList.toggle("chosen", Number(button.getAttribute("data-score")) === current.score);
    });
  }

  function load(path) {
    busy = true;
    return request(path).then(show).catch(function (error) { say(error.message); })
      .finally(function () { busy = false; });
  }

  function start() {
    const name = byId("rater").value.trim();
    if (!name) { say("Enter your name first."); byId("rater").focus(); return; }
    rater = name;
    localStorage.setItem("localjudge-rater", rater);
    history.length = 0;
    byId("rater").blur();  // the keys 0-5 rate from now on, instead of typing into the name
    load("/api/next?rater=" + encodeURIComponent(rater));
  }

  function rate(score) {
    if (!current || !rater || busy) return;
    const rated = current.view_id;
    busy = true;
    request("/api/rate", { view_id: rated, rater: rater, score: score }).then(function (state) {
      history.push(rated);
      show(state);
    }).catch(function (error) { say(error.message); }).finally(function () { busy = false; });
  }

  function back() {
    if (!history.length || busy) return;
    load("/api/view?rater=" + encodeURIComponent(rater) + "&id=" + encodeURIComponent(history.pop()));
  }

  function skip() {
    if (!current || busy) return;
    load("/api/next?rater=" + encodeURIComponent(rater) + "&after=" + encodeURIComponent(current.view_id));
  }

  byId("start").addEventListener("click", start);
  byId("rater").addEventListener("keydown", function (event) { if (event.key === "Enter") start(); });
  byId("picture").addEventListener("error", function () { say("This image cannot be shown (its file changed or is gone); skip it with →."); });
  document.querySelectorAll("#scores button").forEach(function (button) {
    button.addEventListener("click", function () { rate(Number(button.getAttribute("data-score"))); });
  });
  document.addEventListener("keydown", function (event) {
    if (event.target === byId("rater") || event.ctrlKey || event.metaKey || event.altKey) return;
    if (/^[0-5]$/.test(event.key)) { rate(Number(event.key)); event.preventDefault(); }
    else if (event.key === "ArrowLeft" || event.key === "Backspace") { back(); event.preventDefault(); }
    else if (event.key === "ArrowRight") { skip(); event.preventDefault(); }
  });

  const fromAddress = new URLSearchParams(location.search).get("rater");
  request("/api/config").then(function (config) {
    const name = fromAddress || localStorage.getItem("localjudge-rater") || config.rater || "";
    byId("rater").value = name;
    if (name) start(); else { say("Enter your name to start (" + config.total + " views to rate)."); byId("rater").focus(); }
    document.body.setAttribute("data-ready", "1");
  }).catch(function (error) { say(error.message); });
})();
