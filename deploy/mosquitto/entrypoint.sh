#!/bin/sh
# Builds the hashed password file from the environment (engine, simulator) and the optional
# device list, then starts Mosquitto. Passwords never land in the image or the repository.
set -eu
: "${CITYWATCH_MQTT_PASSWORD:?set CITYWATCH_MQTT_PASSWORD in .env}"
: "${SIMULATOR_MQTT_PASSWORD:?set SIMULATOR_MQTT_PASSWORD in .env}"
umask 077
plain=/mosquitto/data/passwd
: > "$plain"
if [ -f /mosquitto/config/devices.txt ]; then
  grep -v '^[[:space:]]*#' /mosquitto/config/devices.txt | grep ':' >> "$plain" || true
fi
printf 'citywatch:%s\nsimulator:%s\n' "$CITYWATCH_MQTT_PASSWORD" "$SIMULATOR_MQTT_PASSWORD" >> "$plain"
mosquitto_passwd -U "$plain"
chown mosquitto:mosquitto "$plain" 2>/dev/null || true
exec mosquitto -c /mosquitto/config/mosquitto.conf
