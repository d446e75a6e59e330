"""The alert lifecycle for duty officers: one open alert per key, pending -> firing -> resolved, flap
damping, repeats, acknowledgements, silences, grouping and inhibition, routing to a duty rota with
escalation and storm control, and state that survives a restart.

`model` holds the shared types; `lifecycle.AlertManager` is the engine of it.
"""

# The engine config (citywatch.config) includes the `alerting:` section defined in `lifecycle`, which
# itself builds on citywatch.config: loading the config first, whichever module is asked for first,
# keeps that mutual import in one order.
import citywatch.config  # noqa: F401  (isort: skip)

from citywatch.alerting.model import (
    Alert,
    AlertControl,
    AlertNotFound,
    AuditRecord,
    Notification,
    NotificationSink,
    Recipient,
    Silence,
    SilenceNotFound,
    alert_key,
    notification_id,
)

__all__ = [
    "Alert", "AlertControl", "AlertNotFound", "AuditRecord", "Notification", "NotificationSink", "Recipient",
    "Silence", "SilenceNotFound", "alert_key", "notification_id",
]
