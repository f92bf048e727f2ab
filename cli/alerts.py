"""``streamrec alerts tail``: the latest drift and fine-tune alerts, and new ones as they come."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from cli.output import settings_from_env

app = typer.Typer(no_args_is_help=True, help="Drift and fine-tune alerts.")


@app.command("tail")
def alerts_tail(
    count: Annotated[int, typer.Option("--count", "-n", help="Past alerts to show.")] = 20,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new ones.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per alert.")] = False,
) -> None:
    """Show the latest alerts (from the Redis alerts stream), newest last."""
    from online_models.alerts.tail import follow_alerts, latest_alerts, print_alert
    from streamrec.redis_connection import connect_redis
    from streamrec.redis_keys import RedisKeys

    settings = settings_from_env()
    client = connect_redis(settings.redis.redis_url.get_secret_value())
    key = RedisKeys(settings.redis.key_prefix).alerts
    shown = latest_alerts(client, key, count)
    for _, alert in shown:
        print_alert(alert, as_json)
    if not follow:
        return
    cursor = shown[-1][0] if shown else "$"
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for alert in follow_alerts(client, key, cursor, stop):
        print_alert(alert, as_json)
