// The report checks itself: every chart has a text alternative, the findings listed match the
// analysis, and the figures counted match those drawn. The result is written into the page
// (body data-consistent="yes", or the reason) for a person and for the browser test.
(function () {
  var problems = [];
  var data;
  try {
    data = JSON.parse(document.getElementById("report-data").textContent);
  } catch (e) {
    problems.push("report data unreadable: " + e);
  }
  var figures = document.querySelectorAll("figure[data-figure]");
  if (data && figures.length !== data.figures) {
    problems.push(figures.length + " figures drawn, " + data.figures + " expected");
  }
  figures.forEach(function (f) {
    var svg = f.querySelector("svg");
    if (!svg || !svg.querySelector("title") || !svg.querySelector("title").textContent) {
      problems.push("figure " + f.dataset.figure + " has no text alternative");
    }
    if (svg && svg.getBoundingClientRect().width < 100) {
      problems.push("figure " + f.dataset.figure + " is not laid out");
    }
  });
  var listed = document.querySelectorAll("table.findings tbody tr").length;
  if (data && listed !== data.findings_listed) {
    problems.push(listed + " findings listed, " + data.findings_listed + " expected");
  }
  var section = document.getElementById("findings");
  if (data && section && Number(section.dataset.findings) !== data.findings) {
    problems.push("findings count differs");
  }
  var edges = document.querySelectorAll("tr[data-edge]");
  if (data) {
    var taken = 0;
    edges.forEach(function (r) { taken += Number(r.dataset.count); });
    var expected = 0;
    data.edges.forEach(function (e) { expected += e.count; });
    if (taken !== expected) {
      problems.push("edge table counts " + taken + " transitions, data " + expected);
    }
  }
  var verdict = problems.length ? "no: " + problems.join("; ") : "yes";
  document.body.dataset.consistent = verdict;
  // One console line, the only one a browser test should see.
  console.log("tracer-report-check: " + verdict);
  var check = document.getElementById("check");
  if (check) {
    check.textContent = problems.length
      ? "Consistency check FAILED: " + problems.join("; ")
      : "Consistency check passed: " + figures.length + " figures, each with a text alternative; " + listed + " findings listed.";
  }
})();
