"""The worker tier: one gunicorn server per pool, one GPT-2 per worker process."""
