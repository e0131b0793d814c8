"""The one HTML page (``page.html``): the server's form at ``/``, or a static report of explained predictions.

Its script builds every element with ``textContent``, so no text it shows is read as markup; the data it
is given sits in a JSON block whose ``<``, ``>`` and ``&`` are escaped, so no text can close the block; and
a Content-Security-Policy admits only that script, by its hash.
"""

import base64
import hashlib
import json
import re
from pathlib import Path

TEMPLATE = Path(__file__).with_name("page.html")
SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)  # the page's one inline script


def render(auth: bool = False, records: list[dict] | None = None) -> tuple[str, str]:
    """The page (``records`` None; ``auth``: it asks for an API key) or a report of ``records``, and its
    script's CSP hash. A record is an input row's ``id`` and ``error``, its decision (``Task.decision``:
    ``probs`` by class and the chosen ``label`` or ``labels``; ``Task.no_decision`` for a row without text)
    and, where explained, ``target`` (a class name), ``words`` [{"token", "score"}], ``logit``,
    ``baseline_logit`` and ``delta`` (``explain.explain_ids``)."""
    config = {"mode": "page" if records is None else "report", "auth": auth, "records": records or []}
    block = json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    html = TEMPLATE.read_text(encoding="utf-8").replace("{{CONFIG}}", block)
    digest = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.search(html).group(1).encode()).digest()).decode()
    return html.replace("{{SCRIPT_HASH}}", digest), digest


def headers(script_hash: str) -> dict[str, str]:
    """The page's response headers: only its own script runs, it calls only its own server, no framing."""
    return {
        "Content-Security-Policy": f"default-src 'none'; script-src '{script_hash}'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def report(records: list[dict]) -> str:
    """A self-contained HTML file of explained predictions (``predict`` with ``prediction_writer.explain``)."""
    return render(records=records)[0]
