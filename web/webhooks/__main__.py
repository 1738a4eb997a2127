"""The webhook deliverer in one command:

    python -m web.webhooks [--metrics-port 11570]

It needs DATABASE_URL and the WEBHOOK_* settings (docs/webhooks.md); it talks to no broker
and no Redis. Run one or several: they share the queue. SIGTERM lets attempts in flight
finish (each within its timeouts), then it exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType

from config.logging import configure_logging
from config.settings import get_settings
from db.session import Database
from web.webhooks.deliverer import Deliverer
from workers import metrics

log = logging.getLogger("web.webhooks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m web.webhooks")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, settings.log_levels)
    database = Database.from_settings(settings, pool_size=settings.webhook_concurrency + 2)
    deliverer = Deliverer(settings, database)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        deliverer.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.metrics_port:
        metrics.serve(args.metrics_port, settings.worker_metrics_host)
    log.info("webhook deliverer ready.")
    deliverer.run()
    database.dispose()
    log.info("webhook deliverer stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
