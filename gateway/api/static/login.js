// The login page's script (a file, not inline: the pages' Content-Security-Policy allows only 'self').
(() => {
  const G = window.GIA;
  G.header("login");
  const next = G.boot.next || "/";
  for (const el of document.querySelectorAll('input[name="next"]')) el.value = next;
  if (G.boot.error) { const e = document.getElementById("login-error"); e.textContent = G.boot.error; e.hidden = false; }
  document.querySelector('input[name="user"]').focus();
})();
