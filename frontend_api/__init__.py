"""The front tier: one gunicorn process that fans each request out to a worker tier."""
