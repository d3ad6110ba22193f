// The report page: filters, the 2x2 matrix, the score histogram, the per-class table and one card per sample.
// Every value from the data (model output, file names, people's names) goes into the page through textContent or
// setAttribute, never as HTML.
"use strict";
(function () {
  const DATA = window.LOCALJUDGE_REPORT;
  const PAGE_SIZE = 48;
  const QUADRANTS = ["CH", "CL", "WH", "WL"];
  const samples = DATA.rows.map(function (values) {
    const sample = {};
    DATA.fields.forEach(function (field, index) { sample[field] = values[index]; });
    return sample;
  });
  const EMPTY = { quadrant: "", klass: "", min: 0, max: 5, model: "", cam: "", judge: "", setting: "", sort: "", page: 0 };
  const state = Object.assign({}, EMPTY);
  const byId = function (id) { return document.getElementById(id); };

  function element(tag, attributes, text) {
    const node = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) { node.setAttribute(name, attributes[name]); });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attributes, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attributes || {}).forEach(function (name) { node.setAttribute(name, attributes[name]); });
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function fillSelect(id, values) {
    const select = byId(id);
    Array.from(new Set(values)).filter(function (v) { return v !== null && v !== ""; }).sort()
      .forEach(function (value) { select.appendChild(element("option", { value: value }, value)); });
  }

  // Every filter but the quadrant: the matrix shows how the rest of the selection splits into quadrants.
  function matchesOthers(s) {
    if (state.klass && s.predicted !== state.klass) return false;
    if (state.model && s.model !== state.model) return false;
    if (state.cam && s.cam !== state.cam) return false;
    if (state.judge && s.judge !== state.judge) return false;
    if (state.setting && s.setting !== state.setting) return false;
    if (s.status === "ok" && (s.score < state.min || s.score > state.max)) return false;
    if (s.status !== "ok" && (state.min > 0 || state.max < 5)) return false;
    return true;
  }

  function selected() {
    const chosen = samples.filter(function (s) {
      return matchesOthers(s) && (!state.quadrant || s.quadrant === state.quadrant);
    });
    if (state.sort) {
      const parts = state.sort.split("-");
      const key = parts[0], sign = parts[1] === "asc" ? 1 : -1;
      chosen.sort(function (a, b) {
        const x = a[key], y = b[key];
        if (x === null && y === null) return 0;
        if (x === null) return 1;
        if (y === null) return -1;
        return sign * (x - y);
      });
    }
    return chosen;
  }

  function renderMatrix(pool) {
    const table = byId("matrix");
    clear(table);
    const counts = { CH: 0, CL: 0, WH: 0, WL: 0 };
    pool.forEach(function (s) { if (s.quadrant in counts) counts[s.quadrant] += 1; });
    const placed = QUADRANTS.reduce(function (n, q) { return n + counts[q]; }, 0);
    const head = element("tr");
    head.appendChild(element("th"));
    head.appendChild(element("th", {}, "high"));
    head.appendChild(element("th", {}, "low"));
    table.appendChild(head);
    [["correct", "CH", "CL"], ["wrong", "WH", "WL"]].forEach(function (line) {
      const tr = element("tr");
      tr.appendChild(element("th", {}, line[0]));
      [line[1], line[2]].forEach(function (q) {
        const share = placed ? (100 * counts[q] / placed).toFixed(1) : "0.0";
        const cell = element("td", { "class": "cell " + q + (state.quadrant === q ? " active" : ""),
          "data-quadrant": q, title: "show " + q }, q + " " + counts[q] + " (" + share + " %)");
        cell.addEventListener("click", function () {
          state.quadrant = state.quadrant === q ? "" : q;
          byId("quadrant").value = state.quadrant;
          state.page = 0;
          render();
        });
        tr.appendChild(cell);
      });
      table.appendChild(tr);
    });
  }

  function renderHistogram(pool) {
    const chart = byId("histogram");
    clear(chart);
    const counts = [0, 0, 0, 0, 0, 0];
    pool.forEach(function (s) { if (s.status === "ok") counts[s.score] += 1; });
    const most = Math.max(1, Math.max.apply(null, counts));
    counts.forEach(function (count, score) {
      const height = Math.round(120 * count / most);
      const x = 20 + score * 50;
      const bar = svg("rect", { x: x, y: 140 - height, width: 36, height: height, "data-score": score });
      bar.appendChild(svg("title", {}, "score " + score + ": " + count));
      chart.appendChild(bar);
      chart.appendChild(svg("text", { x: x + 18, y: 156, "text-anchor": "middle" }, score));
      chart.appendChild(svg("text", { x: x + 18, y: 136 - height, "text-anchor": "middle" }, count));
    });
  }

  function renderClasses(pool) {
    const table = byId("classes");
    clear(table);
    const head = element("tr");
    ["class", "n", "accuracy %", "mean score", "CH", "CL", "WH", "WL"].forEach(function (name) {
      head.appendChild(element("th", {}, name));
    });
    table.appendChild(head);
    const groups = new Map();
    pool.forEach(function (s) {
      if (!groups.has(s.predicted)) groups.set(s.predicted, []);
      groups.get(s.predicted).push(s);
    });
    Array.from(groups.entries()).sort(function (a, b) { return b[1].length - a[1].length || (a[0] < b[0] ? -1 : 1); })
      .forEach(function (entry) {
        const members = entry[1];
        const labelled = members.filter(function (s) { return s.correct !== null; });
        const judged = members.filter(function (s) { return s.status === "ok"; });
        const row = element("tr");
        row.appendChild(element("td", {}, entry[0]));
        row.appendChild(element("td", {}, members.length));
        row.appendChild(element("td", {}, labelled.length ?
          (100 * labelled.filter(function (s) { return s.correct; }).length / labelled.length).toFixed(1) : "–"));
        row.appendChild(element("td", {}, judged.length ?
          (judged.reduce(function (n, s) { return n + s.score; }, 0) / judged.length).toFixed(2) : "–"));
        QUADRANTS.forEach(function (q) {
          row.appendChild(element("td", {}, members.filter(function (s) { return s.quadrant === q; }).length));
        });
        table.appendChild(row);
      });
  }

  function card(s) {
    const article = element("article", { "class": "card", "data-id": s.id, "data-quadrant": s.quadrant });
    const head = element("div", { "class": "head" });
    head.appendChild(element("span", { "class": "badge " + s.quadrant }, s.quadrant));
    head.appendChild(element("strong", { "class": "score" },
      s.status === "ok" ? "score " + s.score + " / 5" : "no score"));
    head.appendChild(element("span", { "class": "prediction" }, "predicted: " + s.predicted +
      (s.confidence === null ? "" : " (" + (100 * s.confidence).toFixed(1) + " %)")));
    head.appendChild(element("span", { "class": "label" }, "label: " + (s.label || "none")));
    article.appendChild(head);
    article.appendChild(element("div", { "class": "path" }, s.path));
    const pictures = element("div", { "class": "pictures" });
    [["original", "model's view"], ["heatmap", "where it looked"], ["masked", "what the judge saw (masked)"]]
      .forEach(function (kind) {
        const figure = element("figure");
        if (s[kind[0]]) {
          figure.appendChild(element("img", { src: s[kind[0]], alt: kind[1], loading: "lazy", width: 160, height: 160 }));
        }
        figure.appendChild(element("figcaption", {}, kind[1]));
        pictures.appendChild(figure);
      });
    article.appendChild(pictures);
    if (s.image_error) article.appendChild(element("p", { "class": "error" }, "image unavailable: " + s.image_error));
    article.appendChild(element("div", { "class": "settings" }, s.model + " · " + s.cam + " · judged by " + s.judge +
      " (" + s.setting + "; high ≥ " + s.threshold + ")"));
    const text = element("div", { "class": "text" });
    if (s.status === "ok") {
      text.appendChild(element("p", { "class": "evaluation" }, s.evaluation));
      text.appendChild(element("p", { "class": "justification" }, s.justification));
    } else {
      text.appendChild(element("p", { "class": "error" }, "judge failed: " + s.error));
    }
    if (s.ratings) {
      text.appendChild(element("p", { "class": "human" }, "people: mean " + s.human_mean.toFixed(2) + " from " +
        s.ratings + " rating" + (s.ratings === 1 ? "" : "s")));
    }
    article.appendChild(text);
    return article;
  }

  function render() {
    const pool = samples.filter(matchesOthers);
    renderMatrix(pool);
    renderHistogram(pool.filter(function (s) { return !state.quadrant || s.quadrant === state.quadrant; }));
    renderClasses(pool.filter(function (s) { return !state.quadrant || s.quadrant === state.quadrant; }));
    const chosen = selected();
    const pages = Math.max(1, Math.ceil(chosen.length / PAGE_SIZE));
    state.page = Math.min(state.page, pages - 1);
    const cards = byId("cards");
    clear(cards);
    chosen.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE).forEach(function (s) {
      cards.appendChild(card(s));
    });
    const info = chosen.length + " of " + samples.length + " samples · page " + (state.page + 1) + " of " + pages;
    document.querySelectorAll(".page-info").forEach(function (node) { node.textContent = info; });
    document.querySelectorAll(".pager .prev").forEach(function (b) { b.disabled = state.page === 0; });
    document.querySelectorAll(".pager .next").forEach(function (b) { b.disabled = state.page >= pages - 1; });
    document.body.setAttribute("data-selected", String(chosen.length));
    document.body.setAttribute("data-page", String(state.page));
    document.body.setAttribute("data-pages", String(pages));
  }

  function bind(id, key, parse) {
    byId(id).addEventListener("change", function (event) {
      state[key] = parse ? parse(event.target.value) : event.target.value;
      state.page = 0;
      render();
    });
  }

  // A table of rows of text (never HTML); `flagged[i]` marks row i.
  function fillTable(table, headers, rows, flagged) {
    const head = element("tr");
    headers.forEach(function (name) { head.appendChild(element("th", {}, name)); });
    table.appendChild(head);
    rows.forEach(function (cells, index) {
      const row = element("tr", flagged && flagged[index] ? { "class": "flagged" } : {});
      cells.forEach(function (text) { row.appendChild(element("td", {}, text)); });
      table.appendChild(row);
    });
  }
  function fixed(digits) {
    return function (value) { return value === null || value === undefined ? "n/a" : value.toFixed(digits); };
  }

  // Findings: the five-minute section. Each part names the command whose --json output holds the same figures.
  function interval(value, low, high, digits) {
    if (value === null || value === undefined) return "n/a";
    const text = value.toFixed(digits);
    return low === null || low === undefined ? text : text + " [" + low.toFixed(digits) + ", " + high.toFixed(digits) + "]";
  }
  function withRange(value, range) {
    return interval(value === null ? undefined : value, range ? range[0] : null, range ? range[1] : null, 2);
  }
  function meanText(found, digits) { return found ? interval(found.mean, found.ci_low, found.ci_high, digits || 2) : "n/a"; }
  function shareText(found) { return found ? interval(found.share, found.ci_low, found.ci_high, 2) : "n/a"; }
  function signed(found) {
    if (!found || found.difference === null || found.difference === undefined) return "n/a";
    const plus = function (v) { return (v >= 0 ? "+" : "") + v.toFixed(2); };
    return plus(found.difference) + (found.ci_low === null ? "" : " [" + plus(found.ci_low) + ", " + plus(found.ci_high) + "]");
  }

  // `items`: the part's results, each with the exact command of its own figures (one model, artifact, seed...).
  function finding(name, title, part, items) {
    const article = element("article", { "class": "finding", "data-finding": name });
    article.appendChild(element("h3", {}, title));
    const body = element("div");
    article.appendChild(body);
    const commands = part.ran && items && items.length ? Array.from(new Set(items.map(function (i) { return i.command; })))
      : [part.command];
    commands.forEach(function (text) {
      const command = element("p", { "class": "command" }, "From: ");
      command.appendChild(element("code", {}, text));
      article.appendChild(command);
    });
    if (part.whole_store) {
      body.appendChild(element("p", { "class": "whole-store" }, "Of the whole store: --run and --source do not narrow " +
        "this check (an eval command's result over the store, not over this report's images)."));
    }
    if (!part.ran) {
      body.appendChild(element("p", { "class": "not-run" }, "Not run on this store: run the command below to check."));
      article.setAttribute("data-ran", "0");
    } else {
      article.setAttribute("data-ran", "1");
    }
    byId("findings-body").appendChild(article);
    return body;
  }

  function renderFindings(found) {
    if (!found) { byId("findings").hidden = true; return; }
    const classes = finding("classes", "Classes to inspect", found.classes);
    found.classes.settings.forEach(function (setting) {
      classes.appendChild(element("p", {}, setting.setting + ": " + setting.classes + " classes; the dataset's " +
        "CL+WH share (judge and correctness disagree) is " + shareText(setting.baseline) + ". Ranked by " + setting.rule + "."));
      const table = element("table", { "class": "findings-table" });
      fillTable(table, ["class", "n", "accuracy", "CL+WH share [95% CI]", ""], setting.inspect.map(function (row) {
        return [row["class"], row.n, fixed(2)(row.accuracy), shareText(row.disagreement),
                row.above_baseline ? "above the dataset's" : ""];
      }), setting.inspect.map(function (row) { return row.above_baseline; }));
      classes.appendChild(table);
    });

    const clusters = finding("clusters", "Shortcut-candidate clusters", found.clusters,
      (found.clusters.commands || []).map(function (c) { return { command: c }; }));
    if (found.clusters.ran) {
      clusters.appendChild(element("p", {}, found.clusters.candidates.length ?
        found.clusters.candidates.length + found.clusters.more + " clusters of maps look elsewhere than their class's main " +
        "cluster (" + found.clusters.clustered_classes + " classes clustered); the largest first, with exemplars " +
        "(the model's view, the heatmap, what the judge saw):" :
        "No cluster looks elsewhere than its class's main cluster (" + found.clusters.clustered_classes +
        " classes clustered)."));
    }
    found.clusters.candidates.forEach(function (c) {
      const block = element("div", { "class": "cluster" });
      const figures = c.figures || {};
      block.appendChild(element("p", {}, c["class"] + " (" + c.model + ", " + c.cam + "): cluster #" + c.cluster +
        ", " + c.size + " of " + c.class_maps + " maps; " + c.reasons.join("; ") + ". Mean score " +
        withRange(figures.score, figures.score_interval) + ", accuracy " +
        withRange(figures.accuracy, figures.accuracy_interval) + ", border share " + fixed(2)(figures.border_share) +
        "."));
      const row = element("div", { "class": "exemplars" });
      c.exemplars.forEach(function (e) {
        const figure = element("figure", { "class": "exemplar" });
        ["original", "heatmap", "masked"].forEach(function (kind) {
          if (e[kind]) figure.appendChild(element("img", { src: e[kind], alt: kind + " " + e.path, width: 96, height: 96 }));
        });
        figure.appendChild(element("figcaption", {}, e.error || e.path));
        row.appendChild(figure);
      });
      block.appendChild(row);
      clusters.appendChild(block);
    });

    const artifacts = finding("artifacts", "Map mass on artifact regions", found.artifacts, found.artifacts.regions);
    if (found.artifacts.regions.length) {
      artifacts.appendChild(element("p", {}, "The share of each map's mass inside a named region, beside the " +
        "region's area (the share a flat map would put there); a share well above the area means the model looks there."));
      const table = element("table", { "class": "findings-table" });
      fillTable(table, ["region", "model", "maps", "mass share", "area", "share - area", "classes putting most there"],
        found.artifacts.regions.map(function (r) {
          return [r.region, r.model + " " + r.cam + (r.target_layer ? " at " + r.target_layer : ""), r.maps, meanText(r.mass_share, 3), meanText(r.area_fraction, 3), meanText(r.excess, 3),
                  r.top_classes.map(function (c) { return c["class"] + " " + c.mass_share.toFixed(2); }).join(", ")];
        }), found.artifacts.regions.map(function (r) { return r.excess.ci_low !== null && r.excess.ci_low > 0; }));
      artifacts.appendChild(table);
    }

    const background = finding("background", "Background reliance", found.background, found.background.tables);
    if (found.background.tables.length) {
      background.appendChild(element("p", {}, "Accuracy on variants of each image made with its ground-truth " +
        "region (ImageNet-9's test): BG-gap is the accuracy with a background of the same class minus with one of " +
        "another class; near 0, the background does not drive the decision."));
      const table = element("table", { "class": "findings-table" });
      const variants = ["original", "only_object", "no_object", "mixed_same", "mixed_rand"];
      fillTable(table, ["model", "images", "always the commonest class", "original", "only object", "no object",
                        "mixed same", "mixed rand", "BG-gap"],
        found.background.tables.map(function (t) {
          return [t.model, t.images, fixed(2)(t.majority_baseline)].concat(variants.map(function (v) {
            return t[v] ? interval(t[v].accuracy, t[v].ci_low, t[v].ci_high, 2) : "n/a";
          })).concat([signed(t.bg_gap)]);
        }), found.background.tables.map(function (t) { return t.bg_gap && t.bg_gap.ci_low !== null && t.bg_gap.ci_low > 0; }));
      background.appendChild(table);
    }

    const canary = finding("canary", "Planted-shortcut canary", found.canary, found.canary.results);
    found.canary.results.forEach(function (r) {
      const c = r.summary;
      if (!c) return;
      canary.appendChild(element("p", { "class": c.flagged ? "flagged" : "" }, r.model + ", " + r.artifact + " of " +
        r.size + " of the view on " + c.images + " images: " + (c.flagged ? "FLAGGED as a shortcut" : "not flagged") +
        ". The artifact pulls toward " + (c.pull["class"] || "n/a") + " by " + meanText(c.pull) +
        "; the predicted class's probability changes by " + meanText(c.probability_change) + "; the map puts " +
        meanText(c.mass_on_artifact) + " of its mass on the artifact (" + meanText(c.mass_there_before) +
        " on those pixels before; a flat map " + meanText(c.area) + ")."));
      const q = r.quadrants;
      if (q) {
        const moves = Object.keys(q.transitions).map(function (k) { return k + " " + q.transitions[k]; }).join(", ");
        canary.appendChild(element("p", { "class": "quadrants" }, "With the judge (" + q.images + " labelled images " +
          "judged before and after, a score of " + q.threshold + " or more is high): " + meanText(q.changed) +
          " of them change quadrant" + (moves ? " (" + moves + ")" : "") + "."));
      }
    });
  }
  renderFindings(DATA.findings);

  const localised = DATA.localisation || [];
  if (localised.length) {
    localised.forEach(function (found) {
      const table = element("table");
      table.appendChild(element("caption", {}, found.setting + " (" + found.images + " images)"));
      fillTable(table, ["metric"].concat(found.columns), found.metrics.map(function (metric) {
        return [metric[0]].concat(metric.slice(1).map(fixed(3)));
      }));
      byId("localisation").appendChild(table);
    });
    byId("localisation-figure").hidden = false;
  }

  const checks = DATA.sanity || [];
  if (checks.length) {
    fillTable(byId("sanity"), ["model", "target", "CAM", "images", "random class |rho|", "model randomised |rho|",
                               "verdict"], checks.map(function (c) {
      return [c.model, c.target_layer, c.method, c.images, fixed(2)(c.random_logit_rank), fixed(2)(c.randomised_rank),
              c.flagged ? "flagged: its maps do not depend on the model" : "ok"];
    }), checks.map(function (c) { return c.flagged; }));
    byId("sanity-figure").hidden = false;
  }

  const failures = DATA.map_failures || [];
  if (failures.length) {
    fillTable(byId("map-failures"), ["file", "CAM", "target", "why"], failures.map(function (f) {
      return [f.path, f.cam, f.target_layer, f.reason];
    }));
    byId("map-failures-figure").hidden = false;
  }

  // Each judge's reliability card (eval judge-check): the matrices are only as good as it.
  const judges = DATA.judges || [];
  byId("judges").textContent = judges.length ? "Judge reliability (eval judge-check): " + judges.map(function (j) {
    return j.judge_model + ": " + j.verdict + (j.reasons.length ? " (" + j.reasons.join("; ") + ")" : "");
  }).join("; ") + "." : "";
  if (judges.some(function (j) { return j.verdict !== "usable"; })) byId("judges").setAttribute("class", "flagged");

  const meta = DATA.meta;
  // A model run on random weights (--random-weights) describes nothing: said above everything else.
  if ((meta.random_weights || []).length) {
    byId("weights").textContent = "Random weights: " + meta.random_weights.join(", ") + " ran on a seeded random " +
      "network (--random-weights); its predictions, maps and judgments describe nothing.";
    byId("weights").setAttribute("class", "flagged");
  }
  byId("meta").textContent = meta.samples + " judgments of " + meta.images + " images from " + meta.database +
    ", built " + meta.generated_at + "; a score at or above " + meta.threshold + " is high" +
    (meta.calibrated ? " (calibrated thresholds where people rated)" : "") + ". The matrix, the histogram and " +
    "the class table count the current selection: choose a model, CAM, judge and setting to keep settings apart.";
  fillSelect("class", samples.map(function (s) { return s.predicted; }));
  fillSelect("model", samples.map(function (s) { return s.model; }));
  fillSelect("cam", samples.map(function (s) { return s.cam; }));
  fillSelect("judge", samples.map(function (s) { return s.judge; }));
  fillSelect("setting", samples.map(function (s) { return s.setting; }));
  bind("quadrant", "quadrant");
  bind("class", "klass");
  bind("model", "model");
  bind("cam", "cam");
  bind("judge", "judge");
  bind("setting", "setting");
  bind("sort", "sort");
  bind("score-min", "min", function (v) { return v === "" ? 0 : Number(v); });
  bind("score-max", "max", function (v) { return v === "" ? 5 : Number(v); });
  byId("reset").addEventListener("click", function () {
    Object.assign(state, EMPTY);
    ["quadrant", "class", "model", "cam", "judge", "setting", "sort"].forEach(function (id) { byId(id).value = ""; });
    byId("score-min").value = "0";
    byId("score-max").value = "5";
    render();
  });
  document.querySelectorAll(".pager .prev").forEach(function (b) {
    b.addEventListener("click", function () { state.page -= 1; render(); window.scrollTo(0, 0); });
  });
  document.querySelectorAll(".pager .next").forEach(function (b) {
    b.addEventListener("click", function () { state.page += 1; render(); window.scrollTo(0, 0); });
  });
  render();
  window.LOCALJUDGE_FIRST_RENDER_MS = performance.now();
  document.body.setAttribute("data-ready", "1");
})();
