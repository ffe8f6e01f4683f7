"""The WSGI entry point gunicorn loads (``api.wsgi:app``): the app built from the ``K2_*`` settings."""

from api.app import create_app

app = create_app()
