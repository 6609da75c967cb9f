// Draws every chart of a console page: each `.console-chart` element carries its Plotly figure as JSON in
// `data-figure` (built on the server with plotly.graph_objects); plotly.js is the plotly package's own bundle,
// served by the console. When every chart is drawn, <body data-charts-rendered> holds the time it took (ms since
// navigation start), which the browser test and the benchmark read.
(function () {
  "use strict";

  function draw() {
    var charts = Array.prototype.slice.call(document.querySelectorAll(".console-chart"));
    var drawn = charts.map(function (el) {
      var figure = JSON.parse(el.getAttribute("data-figure"));
      return Plotly.newPlot(el, figure.data, figure.layout || {}, {responsive: true, displaylogo: false});
    });
    Promise.all(drawn).then(function () {
      document.body.setAttribute("data-charts-rendered", String(performance.now()));
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
