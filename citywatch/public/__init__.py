"""Open data for citizens: a read-only public API over InfluxDB and a mobile-first page (`citywatch serve`).

* `app`: the FastAPI app and its endpoints (OpenAPI at /openapi.json), CSV/JSON rendering, ETags;
* `data`: the InfluxQL reads (current conditions, per ward, hourly history, public advisories);
* `influx`: the read-only query client (the engine's connection settings) and safe quoting;
* `cache`, `hot`: the TTL cache with single flight, and its fast path before routing;
* `ratelimit`: per-client token buckets (429 with Retry-After);
* `advice`: index scales with health advice (Decision 1459/QĐ-TCMT) for the page;
* `settings`, `cli`: the options of `citywatch serve`, including the public-advisory allow-list;
* `static/`: the page (plain HTML/CSS/JS, no build step).
"""
