"""The console's one stylesheet (served as /static/console.css; no inline style, which the
Content-Security-Policy refuses).

Below 40rem (a phone), tables marked ``cards`` become one card per row: each cell on its own
line after its column's name (``data-label``), so nothing is wider than the screen and every
action stays in reach.
"""

from __future__ import annotations

__all__ = ["CSS"]

CSS = """
*,*::before,*::after{box-sizing:border-box}
body{font:16px/1.5 system-ui,sans-serif;margin:0;color:#111;background:#fafafa}
a{color:#0645ad}
header{background:#123;color:#fff;padding:.5rem 1rem;display:flex;flex-wrap:wrap;
gap:.25rem 1rem;align-items:center}
header a{color:#fff}.brand{font-weight:bold;text-decoration:none}
nav ul{display:flex;flex-wrap:wrap;gap:.25rem .75rem;align-items:center;list-style:none;
margin:0;padding:0}
nav a[aria-current=page]{font-weight:bold;text-decoration-thickness:3px}
nav button{background:none;border:1px solid #fff;color:#fff;border-radius:.25rem;margin:0}
main{max-width:60rem;margin:0 auto;padding:1rem}
h1{font-size:1.6rem;overflow-wrap:anywhere}h2{font-size:1.25rem;margin-top:1.75rem}
label{display:block;margin-top:.5rem}
input,select,textarea{font:inherit;max-width:100%;padding:.25rem;border:1px solid #666;
border-radius:.25rem}
button,.button{font:inherit;margin:.5rem .5rem .5rem 0;padding:.3rem .8rem;border:1px solid #345;
border-radius:.25rem;background:#fff;color:#123;cursor:pointer;display:inline-block;
text-decoration:none}
button.danger,.button.danger{background:#a4161a;border-color:#a4161a;color:#fff}
form.inline{display:inline}
fieldset{border:1px solid #ccc;border-radius:.25rem;margin:1rem 0}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ccc;padding:.35rem .5rem;text-align:left;vertical-align:top;
overflow-wrap:break-word}
td button,td .button{margin:0}
.notice{background:#e6f4ea;border-left:4px solid #1e7b34;padding:.5rem .75rem}
.error{background:#fde7e9;border-left:4px solid #a4161a;padding:.5rem .75rem}
.confirm{background:#fff4e5;border:1px solid #b45309;border-radius:.25rem;padding:.5rem 1rem}
dl.summary{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}
dd{margin:0;overflow-wrap:anywhere}
.meter{margin:.5rem 0 1rem}.meter svg{display:block;width:100%;max-width:30rem;height:1.25rem}
.meter .track{fill:#dfe3e8}.meter .used{fill:#1e6fb8}.meter .full{fill:#a4161a}
.meter .done{fill:#1e7b34}
.hint{color:#444;font-size:.9rem}
@media (max-width:40rem){
main{padding:.75rem}
table.cards thead{position:absolute;width:1px;height:1px;overflow:hidden;
clip-path:inset(50%);white-space:nowrap}
table.cards,table.cards tbody,table.cards tr{display:block;width:100%}
table.cards tr{background:#fff;border:1px solid #ccc;border-radius:.25rem;margin:.5rem 0;
padding:.25rem .5rem}
table.cards td{display:grid;grid-template-columns:6.5rem minmax(0,1fr);gap:.5rem;border:0;
padding:.2rem 0;overflow-wrap:anywhere}
table.cards td::before{content:attr(data-label);font-weight:bold}
dl.summary{grid-template-columns:1fr}dl.summary dd{margin-bottom:.5rem}
}
"""
