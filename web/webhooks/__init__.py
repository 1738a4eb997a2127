"""Completion webhooks: URL checks (guard), signatures (signing), the POST (sender), the
deliverer process (deliverer, `python -m web.webhooks`) and the REST views (views)."""
