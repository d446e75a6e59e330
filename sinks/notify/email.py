"""SMTP email channel: a multipart message (plain text + HTML) per notification, via smtplib.

The recipient's address is one address or several separated by commas. `security` is `starttls`
(upgrade a plain connection, the submission port 587), `tls` (implicit TLS, port 465) or `none` (a relay
on a trusted network). Credentials come only from the environment (`username_env`, `password_env`; or
`<NAME>_FILE` naming a file of mode 0600).
The Message-ID is derived from the notification id, so a duplicate that slips through (at-least-once
delivery) can be recognised by the mail system.

SMTP 4xx answers, refused or dropped connections and timeouts are retried by the dispatcher; 5xx
answers (unknown mailbox, authentication refused) go to the dead-letter log at once.

Options (a channel under `alerting.notify.channels`)::

    email-duty:
      type: email
      host: smtp.example.vn
      port: 587
      security: starttls         # starttls | tls | none
      tls_ca_file: null          # CA bundle to verify the server (default: the system's)
      sender: "citywatch <canhbao@example.vn>"
      username_env: CITYWATCH_SMTP_USERNAME
      password_env: CITYWATCH_SMTP_PASSWORD
      timeout: 15s
      html: true                 # add the HTML part
"""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from typing import Literal

import structlog

from citywatch.alerting.model import Notification
from citywatch.config import Duration
from citywatch.sinks.notify.base import ChannelOptions, DeliveryError, secret
from citywatch.sinks.notify.render import Renderer

SAMPLE_CONFIG = """
email-duty:
  type: email
  host: smtp.example.vn
  port: 587
  security: starttls
  sender: "citywatch <canhbao@example.vn>"
  username_env: CITYWATCH_SMTP_USERNAME
  password_env: CITYWATCH_SMTP_PASSWORD
"""


class EmailChannelConfig(ChannelOptions):
    type: Literal["email"] = "email"
    host: str = "127.0.0.1"
    port: int = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    tls_ca_file: str | None = None
    sender: str = "citywatch <citywatch@localhost>"
    username_env: str | None = None
    password_env: str | None = None
    timeout: Duration = 15.0
    html: bool = True


class EmailChannel:
    def __init__(self, name: str, cfg: EmailChannelConfig, renderer: Renderer,
                 env: Mapping[str, str] | None = None, logger=None) -> None:
        env = os.environ if env is None else env
        self.log = logger or structlog.get_logger("citywatch.notify.email")
        self.name = name
        self.cfg = cfg
        self.renderer = renderer
        self._username = secret(cfg.username_env, env)
        self._password = secret(cfg.password_env, env)
        if cfg.username_env and not self._username:
            raise ValueError(f"channel {name!r}: environment variable {cfg.username_env} is not set")
        if self._username and not self._password:
            raise ValueError(f"channel {name!r}: a username without a password ({cfg.password_env} is not set)")
        self._tls = ssl.create_default_context(cafile=cfg.tls_ca_file) if cfg.security != "none" else None

    def start(self) -> None:
        pass

    def message(self, notification: Notification) -> EmailMessage:
        rendered = self.renderer.email(notification, self.cfg.language)
        to = [addr for _, addr in getaddresses([notification.recipient.address]) if addr]
        if not to:
            raise DeliveryError(f"recipient {notification.recipient.name!r} has no e-mail address", retryable=False)
        msg = EmailMessage()
        msg["Subject"] = rendered.subject
        msg["From"] = self.cfg.sender
        msg["To"] = ", ".join(to)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = f"<{notification.id}@citywatch>"
        msg["X-Citywatch-Notification"] = notification.id
        msg.set_content(rendered.text)
        if self.cfg.html:
            msg.add_alternative(rendered.html, subtype="html")
        return msg

    def send(self, notification: Notification) -> None:
        msg = self.message(notification)
        try:
            with self._connect() as smtp:
                if self._username:
                    smtp.login(self._username, self._password or "")
                refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(f"all recipients refused: {exc.recipients}",
                                retryable=all(400 <= c < 500 for c in codes)) from exc
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", retryable=exc.smtp_code < 500) from exc
        except (smtplib.SMTPException, OSError, socket.timeout) as exc:
            raise DeliveryError(f"SMTP connection failed: {type(exc).__name__}: {exc}") from exc
        if refused:  # some accepted, some not: sending again would give the accepted ones a duplicate
            self.log.warning("email partly refused", channel=self.name, notification=notification.id,
                             refused={addr: code for addr, (code, _) in refused.items()})

    def _connect(self) -> smtplib.SMTP:
        cfg = self.cfg
        if cfg.security == "tls":
            return smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=self._tls)
        smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
        try:
            if cfg.security == "starttls":
                smtp.starttls(context=self._tls)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def close(self) -> None:
        pass
