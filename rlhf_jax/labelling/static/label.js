// Keyboard shortcuts for the labelling page: 1 / 2 choose a response (two-response tasks),
// t tie, s skip, Enter save. Keys typed into a text field, a select or on a focused button are
// left alone (Enter on a button presses that button).
document.addEventListener("keydown", function (event) {
  var form = document.getElementById("label-form");
  if (!form || event.ctrlKey || event.metaKey || event.altKey) return;
  var tag = (event.target.tagName || "").toLowerCase();
  if (tag === "textarea" || tag === "input" && event.target.type !== "radio" || tag === "select" || tag === "button") return;
  var n = parseInt(form.dataset.responses, 10);
  var pick = function (value) {
    var box = form.querySelector('input[name="choice"][value="' + value + '"]');
    if (box) { box.checked = true; event.preventDefault(); }
  };
  if (n === 2 && event.key >= "1" && event.key <= "2") pick(String(parseInt(event.key, 10) - 1));
  else if (n === 2 && event.key === "t") pick("tie");
  else if (event.key === "s") { event.preventDefault(); document.getElementById("skip").click(); }
  else if (event.key === "Enter") { event.preventDefault(); form.requestSubmit(document.getElementById("submit")); }
});
