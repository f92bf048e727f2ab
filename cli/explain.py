"""``streamrec explain SESSION``: why the service answers a session the way it does.

It asks the running service (``GET /recommend?explain=true``, with the bearer token from
settings) rather than scoring from Redis and the registry itself: the answer is then the
one a shopper gets, from the version and experiment arm that serve the session now,
computed by the one explanation code (``serving.explanation``). Like any answer, it is
logged as an impression.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from cli.output import print_report, refuse, settings_from_env
from streamrec.settings import ServingSettings

app = typer.Typer()


@app.command()
def explain(
    session_id: Annotated[str, typer.Argument(help="The session to explain.")],
    k: Annotated[int | None, typer.Option(help="Items to explain (default: serving's).")] = None,
    url: Annotated[
        str | None, typer.Option(help="Serving base URL (default: from STREAMREC_SERVING_*).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The response as one JSON line.")] = False,
) -> None:
    """Each item the service would recommend now: version, arm, score parts, the session's
    clicks (event ids and times) and the click that contributed most."""
    serving = settings_from_env().serving
    params: dict[str, str | int] = {"session_id": session_id, "explain": "true"}
    if k is not None:
        params["k"] = k
    base = url or serving_url(serving)
    token = serving.auth_token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(
        f"{base}/recommend?{urllib.parse.urlencode(params)}", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - configured
            body = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        refuse(f"serving answered {exc.code}: {exc.read()[:300].decode(errors='replace')}")
    except OSError as exc:
        refuse(f"serving at {base} did not answer: {exc}")
    print_report(body, explanation_tables, as_json)


def serving_url(serving: ServingSettings) -> str:
    """The service's base URL from its settings (a wildcard bind address means this host)."""
    host = "127.0.0.1" if serving.host in ("0.0.0.0", "::", "") else serving.host
    return f"http://{host}:{serving.port}"


def explanation_tables(body: dict[str, Any]) -> list[Table]:
    """The session's clicks and the explained items of a ``/recommend?explain=true`` body."""
    explanation = body["explanation"]
    title = (
        f"session {body['session_id']}: version {explanation['model_version']}, "
        f"arm {explanation['arm']}"
    )
    if explanation["fallback_reason"]:
        title += f", popular items ({explanation['fallback_reason']})"
    events = Table("event_id", "time (UTC)", "item", "known", title=f"{title}: clicks")
    for event in explanation["events"]:
        ts = event["ts"]
        when = datetime.fromtimestamp(ts / 1000, UTC).isoformat() if ts is not None else "?"
        events.add_row(str(event["event_id"]), when, event["item_id"], str(event["known"]))
    items = Table(
        "#", "item", "score", "source", "match", "bias", "repeat", "co-visit",
        "top event (drop)",
        title=f"{title}: items ({explanation['attribution']})",
    )  # fmt: skip
    for rank, item in enumerate(explanation["items"], 1):
        top = item["top_event_id"]
        drop = max(item["event_drops"], default=0.0)
        items.add_row(
            str(rank), item["item_id"], f"{item['score']:.4f}", item["source"],
            _number(item["session_match"]), _number(item["item_bias"]),
            _number(item["session_repeat"]), _number(item["co_visitation"]),
            f"{top} ({drop:.4f})" if top is not None else "-",
        )  # fmt: skip
    return [events, items]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
