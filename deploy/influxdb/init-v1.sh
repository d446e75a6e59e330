#!/bin/bash
# Runs once, after the influxdb:2 image's first-start setup (DOCKER_INFLUXDB_INIT_*): the
# v1-compatible API for citywatch and Grafana, i.e. a DBRP mapping (database "citywatch" ->
# the bucket) and two v1 authorizations: citywatch (read/write) and grafana (read only).
set -euo pipefail
bucket_id=$(influx bucket list --name "${DOCKER_INFLUXDB_INIT_BUCKET}" --hide-headers | cut -f1)
influx v1 dbrp create --db "${CITYWATCH_INFLUX_DB}" --rp autogen --bucket-id "${bucket_id}" --default
influx v1 auth create --username "${CITYWATCH_INFLUX_USERNAME}" --password "${CITYWATCH_INFLUX_PASSWORD}" \
  --read-bucket "${bucket_id}" --write-bucket "${bucket_id}"
influx v1 auth create --username "${GRAFANA_INFLUX_USERNAME}" --password "${GRAFANA_INFLUX_PASSWORD}" \
  --read-bucket "${bucket_id}"
