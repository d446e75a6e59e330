"""Open data for citizens: a read-only public API over InfluxDB and a mobile-first page (`citywatch serve`).

See `citywatch.public.app` for the endpoints and `citywatch.public.advisories` for what counts as a
public advisory.
"""
