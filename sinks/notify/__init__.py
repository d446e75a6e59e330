"""Notifications to duty officers: templates, channels (MQTT, webhook, email) and the dispatcher."""
